"""A tiny run of the benchmark load generator against both servers it measures (the bare
`websockets` baseline and chatcast): correctness only — every tab assembled exactly the
expected reply, matching `done.sha256`, with no duplicate. No timing is asserted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import cluster, loadgen, procs, wholejob
from tests.helpers.redis_cluster import RedisCluster


@pytest.fixture
def baseline(tmp_path: Path) -> Iterator[procs.Server]:
    server = procs.start_baseline(200, None, tmp_path / "baseline.log")
    yield server
    server.stop()


@pytest.fixture
def chatcast(tmp_path: Path) -> Iterator[procs.Server]:
    server = procs.start_chatcast("smoke", tmp_path / "data", rate=200, redis_url=None,
                                  cpu=None, log=tmp_path / "chatcast.log")
    yield server
    server.stop()


async def _run(server: procs.Server) -> loadgen.RunResult:
    return await loadgen.fanout_run(loadgen.Target(server.kind, server.ports), server.cpu,
                                    gens=4, tabs=3, rate=200, warmup_s=0.2, window_s=0.5,
                                    stagger_s=0.2, drain_timeout_s=10)


async def test_baseline_tabs_assemble_exact_text(baseline: procs.Server) -> None:
    result = await _run(baseline)
    assert result.correct, result.problems
    assert result.completed == 12
    assert result.frames > 0


async def test_chatcast_tabs_assemble_exact_text(chatcast: procs.Server) -> None:
    result = await _run(chatcast)
    assert result.correct, result.problems
    assert result.completed == 12
    assert result.frames > 0
    assert result.latency_ms["n"] > 0  # deltas carried `ts` (CHATCAST_DEMO_TIMESTAMPS)


TINY_JOB = wholejob.Load(poisson_per_s=6, span_s=0.5, burst=4, burst_at_s=0.1,
                         max_answer_s=0.5)


@pytest.mark.parametrize("system", ["baseline", "chatcast"])
async def test_whole_job_tabs_assemble_exact_text(system: str, request: pytest.FixtureRequest
                                                  ) -> None:
    """The whole-job scenario in miniature: arrivals that create their chat, open 1-3 tabs
    and send; every tab of every arrival assembles exactly its answer."""
    server: procs.Server = request.getfixturevalue(system)
    result = await wholejob.run(loadgen.Target(server.kind, server.ports), server, TINY_JOB,
                                drain_timeout_s=30)
    assert result["correct"], result["problems"]
    assert result["completed"] == result["tabs"] == sum(a.tabs for a in TINY_JOB.schedule())
    assert result["tokens"] == result["expected_tokens"]
    assert result["longest_stall_ms"] >= 0


async def test_cluster_bus_two_processes_tabs_assemble_exact_text(
        redis_cluster_session: RedisCluster, tmp_path: Path) -> None:
    """The cluster benchmark's system in miniature: two chatcast processes in cluster mode,
    seeded with different nodes (a master, a replica of another shard), tabs on both; every
    tab assembles exactly its reply, and the redis-server processes' CPU is read."""
    nodes = cluster.Cluster(redis_cluster_session)
    seeds = nodes.seeds(2)
    assert len(set(seeds)) == 2
    server = cluster.start_on_cluster("smoke", tmp_path / "data", nodes, processes=2,
                                      rate=200, cpu=None, log=tmp_path / "chatcast.log")
    try:
        result = await loadgen.fanout_run(
            loadgen.Target(server.kind, server.ports), server.cpu, gens=6, tabs=2, rate=200,
            warmup_s=0.2, window_s=0.5, stagger_s=0.2, drain_timeout_s=20,
            side_cpu={"redis": nodes.cpu})
    finally:
        server.stop()
    assert result.correct, result.problems
    assert result.completed == 12
    assert result.frames > 0
    assert set(result.extra["side_cpu"]["redis"]) == {"cpu_s", "util", "us_per_frame"}
