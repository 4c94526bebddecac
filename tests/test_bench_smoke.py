"""A tiny run of the benchmark load generator against both servers it measures (the bare
`websockets` baseline and chatcast): correctness only — every tab assembled exactly the
expected reply, matching `done.sha256`, with no duplicate. No timing is asserted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import cluster, loadgen, procs, profile, report, wholejob
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


#: py-spy's raw output (`record --format raw --full-filenames --nolineno`) of a server:
#: one line per distinct stack, root first, then its sample count.
CANNED_PYSPY = """\
run (/srv/chatcast/server/cli.py);_run_once (/usr/lib/python3.11/asyncio/base_events.py);\
execute (/venv/lib/python3.11/site-packages/sqlalchemy/engine/base.py);\
_execute (/venv/lib/python3.11/site-packages/asyncpg/connection.py) 30
run (/srv/chatcast/server/cli.py);_run_once (/usr/lib/python3.11/asyncio/base_events.py);\
execute (/venv/lib/python3.11/site-packages/sqlalchemy/engine/base.py) 10
run (/srv/chatcast/server/cli.py);deliver (/srv/chatcast/core/hub.py) 40
run (/srv/chatcast/server/cli.py);deliver (/srv/chatcast/core/hub.py);\
send (/venv/lib/python3.11/site-packages/websockets/protocol.py) 15
run (/srv/chatcast/server/cli.py);append (/srv/chatcast/core/bus.py);\
execute (/venv/lib/python3.11/site-packages/redis/asyncio/client.py) 5
"""


def test_profile_summary_groups_own_and_cumulative_time(tmp_path: Path) -> None:
    s = profile.summarise(CANNED_PYSPY, repo="/srv")
    assert s.samples == 100
    assert s.own_groups == {"drivers (aiosqlite, sqlite3, asyncpg)": 30, "SQLAlchemy": 10,
                            "chatcast": 40, "uvicorn, websockets, starlette, httptools": 15,
                            "redis-py": 5}
    assert s.cum_groups["chatcast"] == 100
    assert s.cum_groups["SQLAlchemy"] == 40
    assert s.cum_groups["asyncio, threading (stdlib)"] == 40
    assert s.cum_funcs["deliver (chatcast/core/hub.py)"] == 55
    assert s.own_funcs.most_common(1) == [("deliver (chatcast/core/hub.py)", 40)]
    assert profile.headline(s) == "chatcast 40 %, drivers 30 %, uvicorn, websockets, " \
                                  "starlette, httptools 15 %"
    d = profile.write(tmp_path / "profiles", "wholejob-x", "wholejob: x", CANNED_PYSPY, "/srv")
    assert d["md"] == "profiles/wholejob-x.md"
    md = (tmp_path / "profiles" / "wholejob-x.md").read_text()
    assert "| SQLAlchemy | 10.0 | 40.0 |" in md
    stacks = (tmp_path / "profiles" / "wholejob-x.txt").read_text()
    assert "execute (sqlalchemy/engine/base.py);_execute (asyncpg/connection.py) 30" in stacks
    assert profile.summarise(stacks).samples == 100  # the shortened stacks read back


def test_targets_table_links_the_profile_of_an_unmet_target() -> None:
    prof = {"md": "profiles/saturation-memory-bus-1-process.md", "headline": "chatcast 50 %"}
    res = {"scenarios": {"saturation": {"systems": {report.MEM: {"max_frames_per_s": 1.0}},
                                        "profiles": {report.MEM: prof}}}}
    rows = report.targets(res)
    assert [(met, key) for *_, met, key in rows] == [(False, ("saturation", report.MEM))]
    cell = report.bounded_by(res, False, ("saturation", report.MEM), rows[0][0])
    assert cell == "[saturation: memory bus, 1 process]" \
                   "(profiles/saturation-memory-bus-1-process.md): chatcast 50 %"


@pytest.mark.skipif(profile.available() is None, reason="py-spy is not installed")
async def test_profile_records_a_running_server(chatcast: procs.Server) -> None:
    """py-spy attaches to a real chatcast process while a tiny run streams (it needs
    ptrace permission: root, or kernel.yama.ptrace_scope 0)."""
    async with profile.record(chatcast.pids, None) as stacks:
        result = await _run(chatcast)
    assert result.correct, result.problems
    s = profile.summarise("".join(stacks), str(procs.SERVER_SRC))
    assert s.samples > 0
    assert s.cum_groups["chatcast"] > 0


def test_profile_counts_the_event_loops_own_c_code_apart() -> None:
    s = profile.summarise("main (/srv/chatcast/server/cli.py);Runner.run "
                          "(/usr/lib/python3.11/asyncio/runners.py) 7\n", repo="/srv")
    assert s.own_groups == {profile.LOOP: 7}


@pytest.mark.parametrize(("knee", "refine", "tried"), [
    (250, False, [100, 200, 300]),       # climbs the steps, stops at the first past the knee
    (250, True, [100, 200, 300, 250]),   # and, refining, tries once between
    (60, False, [100, 50, 75]),          # past it at the first step: halves, then splits once
    (60, True, [100, 50, 75]),           # (the same with refine: it splits once either way)
    (20, False, [100, 50, 25, 12, 18]),  # halves until a load passes, splits once
])
async def test_sweep_finds_a_point_under_the_knee(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path, knee: int, refine: bool,
                                                  tried: list[int]) -> None:
    """The sweep's search, with a fake run that is late past `knee` generations."""
    import argparse

    from benchmarks import run

    seen: list[int] = []

    async def fake_run(target: loadgen.Target, cpu: object, *, gens: int, tabs: int,
                       rate: float, **kw: object) -> loadgen.RunResult:
        seen.append(gens)
        offered = gens * tabs * rate
        late = {"p50": 1.0, "p99": 500.0 if gens > knee else 5.0, "max": 600.0, "n": 10}
        return loadgen.RunResult(
            gens=gens, tabs=tabs, rate=rate, window_s=3.0, frames=int(offered * 3),
            tokens=int(offered * 3), frames_per_s=offered, tokens_per_s=offered,
            latency_ms=late, lateness_ms=late, server_cpu_s=1.0, server_cpu_util=0.5,
            cpu_us_per_frame=10.0, cpu_us_per_token=10.0, loadgen_cpu_util=0.5, correct=True,
            completed=gens * tabs, problems=[])

    monkeypatch.setattr(loadgen, "fanout_run", fake_run)
    bench = run.Bench(argparse.Namespace(server_cpu=None, quick=False), tmp_path)
    server = procs.Server("baseline", "x", ports=[1])
    points = await bench._sweep("saturation", server, [100, 200, 300, 400], rate=50.0,
                                tabs=3, limit_ms=100, drain_timeout_s=1, refine=refine)
    assert seen == tried
    assert [p["gens"] for p in points] == sorted(tried)
    assert any(p["lateness_ms"]["p99"] <= 100 for p in points)
