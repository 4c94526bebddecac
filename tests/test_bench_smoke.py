"""A tiny run of the benchmark load generator against both servers it measures (the bare
`websockets` baseline and chatcast): correctness only — every tab assembled exactly the
expected reply, matching `done.sha256`, with no duplicate. No timing is asserted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import loadgen, procs


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
