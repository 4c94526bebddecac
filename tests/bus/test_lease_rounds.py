"""Leases when one part of the bus cannot be reached (a Redis Cluster master that died, before
its replica takes over): the owner's refreshes of the other parts go on every round, and the
orphan sweep waits long enough (two lease ticks) for a living owner to re-create a lease
that lapsed meanwhile. Real SQLite, the memory bus made to look sharded (one shard per
chat), one shard's refresh hanging or raising something unexpected."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from pathlib import Path

import pytest

from chatcast.providers import Registry
from chatcast.server.bus.memory import MemoryBus
from chatcast.server.reaper import Reaper
from chatcast.server.runner import Runner
from chatcast.server.settings import Settings
from chatcast.store.db import make_engine, session_factory
from chatcast.store.repo import Repo
from tests.bus.test_runner_outages import Gated, Probe
from tests.conftest import DatabaseFactory

USER = "u-leases"


class ShardedMemoryBus(MemoryBus):
    """One shard per chat. The refresh of a chat in `hanging` never answers; of a chat in
    `broken`, raises a bug. Records the leases refreshed, per round of the maintenance."""

    def __init__(self) -> None:
        super().__init__(retention_s=60.0)
        self.hanging: set[str] = set()
        self.broken: set[str] = set()
        self.refreshed: dict[str, int] = {}  # gen → successful refreshes
        self.changed = asyncio.Event()

    def lease_shard(self, gen: str, *, chat: str) -> str:
        return chat

    async def refresh_lease(self, gen: str, ttl_s: float, *, chat: str) -> None:
        if chat in self.hanging:
            await asyncio.Event().wait()  # a node that takes the command and never answers
        if chat in self.broken:
            raise RuntimeError("unexpected reply from the bus")
        await super().refresh_lease(gen, ttl_s, chat=chat)
        self.refreshed[gen] = self.refreshed.get(gen, 0) + 1
        self.changed.set()


@dataclass
class World:
    runner: Runner
    repo: Repo
    bus: ShardedMemoryBus
    provider: Gated
    probe: Probe

    async def start(self) -> tuple[str, str]:
        """A generation of a new chat, streaming: (gen, chat)."""
        chat = await self.repo.create_chat(USER)
        await self.bus.watch(chat.id)
        started = await self.runner.send(USER, chat.id, "go", None)
        gen = started.generation.id
        await self.probe.wait(lambda: bool(self.probe.of(gen, "delta")))
        return gen, chat.id


@pytest.fixture
async def world(make_database: DatabaseFactory, tmp_path: Path) -> AsyncIterator[World]:
    settings = Settings(lease_ttl_s=1.2, checkpoint_interval_s=0.05, coalesce_max_ms=0,
                        generation_timeout_s=60.0)
    engine = make_engine(make_database("sqlite"))
    repo = Repo(session_factory(engine))
    bus = ShardedMemoryBus()
    provider = Gated()
    runner = Runner(settings, repo, bus, Registry({"gated": provider}, "gated"))
    probe = Probe()
    await bus.start(probe.on_event, runner.on_stop_requested)
    w = World(runner, repo, bus, provider, probe)
    try:
        yield w
    finally:
        bus.hanging.clear()
        provider.finish.set()
        await runner.close(2.0)
        await bus.close()
        await engine.dispose()


async def _three_chats(w: World) -> list[tuple[str, str]]:
    return [await w.start() for _ in range(3)]


async def _rounds(w: World, gens: Collection[str], rounds: int) -> None:
    """Run the maintenance until every one of `gens` was refreshed `rounds` more times (a
    maintenance stuck on another shard never gets there: the test fails on its timeout)."""
    before = {g: w.bus.refreshed.get(g, 0) for g in gens}
    task = asyncio.create_task(w.runner.maintain())
    try:
        async with asyncio.timeout(20):
            while any(w.bus.refreshed.get(g, 0) < before[g] + rounds for g in gens):
                w.bus.changed.clear()
                await w.bus.changed.wait()
        assert not task.done(), "the maintenance ended"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("failure", ["hanging", "broken"])
async def test_a_shard_that_hangs_or_breaks_costs_no_other_shard_its_refresh(
        world: World, failure: str) -> None:
    w = world
    (dead_gen, dead_chat), *live = await _three_chats(w)  # the first one refreshed first
    getattr(w.bus, failure).add(dead_chat)
    live_gens = [gen for gen, _chat in live]
    await _rounds(w, live_gens, rounds=6)  # two lease TTLs (L/2 = three rounds) and more
    for gen, chat in live:
        assert await w.bus.lease_owner(gen, chat=chat) == w.bus.owner
    assert w.bus.refreshed.get(dead_gen, 0) == 1  # only when it started
    # Another process's sweep: the living shards' generations are left alone.
    other = Reaper(w.repo, w.bus, w.bus, set(), grace_s=0.0)
    for _ in range(2):
        await other.sweep()
    active = {g.id for g in await w.repo.active_generations()}
    assert set(live_gens) <= active


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _sweeps(reaper: Reaper, clock: Clock, times: list[float]) -> list[int]:
    out = []
    for at in times:
        clock.now = at
        out.append(await reaper.sweep())
    return out


async def test_the_sweep_waits_its_grace_for_an_owner_that_lost_its_lease_for_a_while(
        world: World) -> None:
    """Sweeps one tick apart (grace two ticks): a lease missing on two sweeps in a row is
    not enough; one that is back before the grace is over is never reaped; one missing on
    every sweep for the grace is."""
    w = world
    gen, chat = (await _three_chats(w))[0]
    clock = Clock()
    sweeper = Reaper(w.repo, w.bus, w.bus, set(), grace_s=2.0, clock=clock)
    await w.bus.drop_lease(gen, chat=chat)  # lapsed during a failover
    assert await _sweeps(sweeper, clock, [101.0, 102.0]) == [0, 0]
    await w.bus.refresh_lease(gen, 60.0, chat=chat)  # the owner reaches its shard again
    assert await _sweeps(sweeper, clock, [103.0]) == [0]
    await w.bus.drop_lease(gen, chat=chat)  # it starts over from the next miss
    assert await _sweeps(sweeper, clock, [104.0, 105.0]) == [0, 0]
    assert gen in {g.id for g in await w.repo.active_generations()}
    assert await _sweeps(sweeper, clock, [106.0]) == [1]


async def test_marks_from_a_sweep_long_ago_count_for_nothing(world: World) -> None:
    """A process that led the cleanup, lost the lock and leads again sees stale marks."""
    w = world
    gen, chat = (await _three_chats(w))[0]
    clock = Clock()
    sweeper = Reaper(w.repo, w.bus, w.bus, set(), grace_s=2.0, clock=clock)
    await w.bus.drop_lease(gen, chat=chat)
    assert await _sweeps(sweeper, clock, [101.0, 102.0]) == [0, 0]
    assert await _sweeps(sweeper, clock, [110.0, 111.0]) == [0, 0]  # starts over
    assert await _sweeps(sweeper, clock, [112.0]) == [1]
