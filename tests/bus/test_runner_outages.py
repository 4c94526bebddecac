"""The runner when its store or bus fails, on every bus backend (real SQLite, real Redis):
the final write outlives a database outage of any length (the tabs hear `saving`, then one
`done{completed}` with usage; the lease is kept, so another process's orphan sweep leaves
it alone), shutdown during the outage hands the answer over (Redis) or logs what is lost
(memory), an owner gone while saving (no hand-over) is saved from the end it recorded in
Redis, the maintenance loop survives any exception, outages are logged once at their
start and once at their end, and a start that fails never leaves a generation behind."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, cast

import pytest

from chatcast.core.errors import StorageUnavailable
from chatcast.core.protocol import Event
from chatcast.providers import ChatMessage, Chunk, Registry, StreamParams, Usage
from chatcast.server import metrics
from chatcast.server.bus.base import Bus, BusUnavailable
from chatcast.server.reaper import Reaper
from chatcast.server.runner import Runner
from chatcast.server.settings import Settings
from chatcast.store.db import make_engine, session_factory
from chatcast.store.repo import Repo
from tests.bus.conftest import Backend, _new_bus
from tests.conftest import DatabaseFactory
from tests.helpers.assemble import digest

USER = "u-outage"
USAGE = Usage(input_tokens=7, output_tokens=5)


class Gated:
    """A provider that yields `tokens` tokens, waits for `finish` to be set, then ends with
    its usage: the test decides when the answer ends."""

    name = "gated"
    default_model = "gated"

    def __init__(self, tokens: int = 5) -> None:
        self.tokens = tokens
        self.finish = asyncio.Event()

    async def stream(self, messages: list[ChatMessage], *, model: str,
                     params: StreamParams) -> AsyncIterator[Chunk]:
        for n in range(1, self.tokens + 1):
            yield Chunk(text=f"w{n} ")
        await self.finish.wait()
        yield Chunk(usage=USAGE)

    async def aclose(self) -> None:
        return None


class FlakyRepo:
    """A real Repo whose chosen methods (`failing`; None: all of them) fail like a database
    that is down while `down` is set."""

    def __init__(self, inner: Repo, *methods: str) -> None:
        self.inner = inner
        self.failing: set[str] | None = set(methods)
        self.down = False
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if self.failing is not None and name not in self.failing:
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.down:
                raise StorageUnavailable() from ConnectionRefusedError(111, "refused")
            return await target(*args, **kwargs)
        return call


class Probe:
    """Records every event the bus delivers for watched chats."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.arrived = asyncio.Event()

    def on_event(self, event: Event) -> None:
        self.events.append(event)
        self.arrived.set()

    def of(self, gen: str, kind: str | None = None) -> list[Event]:
        return [e for e in self.events if e.gen == gen and (kind is None or e.type == kind)]

    async def wait(self, pred: Callable[[], bool], timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while not pred():
                self.arrived.clear()
                await self.arrived.wait()


class World:
    def __init__(self, runner: Runner, repo: Repo, flaky: FlakyRepo, bus: Bus,
                 provider: Gated, probe: Probe) -> None:
        self.runner, self.repo, self.flaky, self.bus = runner, repo, flaky, bus
        self.provider, self.probe = provider, probe
        # As in a server: leases refreshed, orphans swept, every lease_ttl_s / 6.
        self.maintenance = asyncio.create_task(runner.maintain())

    def chat_of(self, gen: str) -> str:
        """The chat of a generation this world started (from its events)."""
        return next(e.chat for e in self.probe.events if e.gen == gen)

    async def start(self) -> str:
        chat = await self.repo.create_chat(USER)
        await self.bus.watch(chat.id)
        started = await self.runner.send(USER, chat.id, "go", None)
        gen = started.generation.id
        await self.probe.wait(lambda: len(self.probe.of(gen, "delta")) >= 1)
        return gen


@pytest.fixture
async def world(backend: Backend, key_prefix: str, make_database: DatabaseFactory,
                tmp_path: Path) -> AsyncIterator[World]:
    settings = Settings(checkpoint_interval_s=0.05, lease_ttl_s=1.2, coalesce_max_ms=0,
                        generation_timeout_s=60.0)
    engine = make_engine(make_database("sqlite"))
    repo = Repo(session_factory(engine))
    flaky = FlakyRepo(repo, "finish", "checkpoint_many")
    bus = _new_bus(backend, 60.0, key_prefix)
    provider = Gated()
    runner = Runner(settings, cast(Repo, flaky), bus, Registry({"gated": provider}, "gated"))
    probe = Probe()
    await bus.start(probe.on_event, runner.on_stop_requested)
    w = World(runner, repo, flaky, bus, provider, probe)
    try:
        yield w
    finally:
        flaky.down = False
        provider.finish.set()
        await runner.close(2.0)
        w.maintenance.cancel()
        await asyncio.gather(w.maintenance, return_exceptions=True)
        await bus.close()
        await engine.dispose()


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 - polls real components
            await asyncio.sleep(0.05)


async def test_final_write_outlives_an_outage_and_done_goes_out_once(world: World) -> None:
    w = world
    gen = await w.start()
    w.flaky.down = True
    w.provider.finish.set()  # the answer ends while the database is down
    await w.probe.wait(lambda: bool(w.probe.of(gen, "saving")))
    saving = w.probe.of(gen, "saving")[0].data
    text = "".join(str(e.data["text"]) for e in w.probe.of(gen, "delta"))
    assert saving["status"] == "completed" and saving["usage"] == USAGE.as_dict()
    assert (saving["length"], saving["sha256"]) == digest(text)
    assert saving["last_seq"] == len(w.probe.of(gen, "delta"))
    # Long past the old retry budget (8 tries, ~21 s at full backoff; here: many tries).
    await until(lambda: _at_least(w.flaky.calls.get("finish", 0), 6), timeout=30)
    assert not w.probe.of(gen, "done")
    assert gen in w.runner.running, "the owner keeps the generation while it waits"
    assert await w.bus.lease_owner(gen, chat=w.chat_of(gen)) == w.bus.owner
    # Another process's orphan sweep (no local generations) sees a living owner.
    other = Reaper(w.repo, w.bus, w.bus, set())
    for _ in range(3):
        assert await other.sweep() == 0
    w.flaky.down = False
    await w.probe.wait(lambda: bool(w.probe.of(gen, "done")))
    await asyncio.sleep(0.2)  # a second done would show now
    dones = w.probe.of(gen, "done")
    assert len(dones) == 1 and len(w.probe.of(gen, "saving")) == 1
    done = dones[0].data
    assert done["status"] == "completed" and done["usage"] == USAGE.as_dict()
    assert (done["length"], done["sha256"]) == digest(text)
    row = await w.repo.generation(gen)
    assert row is not None and row.status == "completed"
    msg = await w.repo.get_message(row.message_id)
    assert msg is not None and msg.content == text and msg.usage == USAGE.as_dict()
    assert gen not in w.runner.running


async def _at_least(value: int, n: int) -> bool:
    return value >= n


async def test_outage_is_logged_once_at_start_and_end(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    w = world
    before = _outages("store")
    gen = await w.start()
    caplog.set_level(logging.DEBUG)
    w.flaky.failing = None  # every store call fails, as with a database that is down
    w.flaky.down = True
    # Many checkpoint ticks (every 0.05 s) fail while the answer streams on.
    await until(lambda: _at_least(w.flaky.calls.get("checkpoint_many", 0), 10))
    w.provider.finish.set()
    await until(lambda: _at_least(w.flaky.calls.get("finish", 0), 3))
    w.flaky.down = False
    await w.probe.wait(lambda: bool(w.probe.of(gen, "done")))
    records = [r for r in caplog.records if r.name == "chatcast.outages"]
    started = [r for r in records if r.getMessage() == "database unavailable"]
    ended = [r for r in records if r.getMessage() == "database back"]
    assert len(started) == 1 and len(ended) == 1, [r.getMessage() for r in records]
    assert started[0].levelno == logging.ERROR and started[0].exc_info is None
    assert float(ended[0].__dict__["outage_s"]) > 0
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]
    assert _outages("store") == before + 1
    assert _gauge("store") == 1.0


def _outages(component: str) -> float:
    return metrics.REGISTRY.get_sample_value("chatcast_outages_total",
                                             {"component": component}) or 0.0


def _gauge(component: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("chatcast_component_up",
                                             {"component": component})


async def test_maintenance_survives_an_unexpected_error_in_the_lease_refresh(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lease refresh used to run outside the loop's `try`: one unexpected exception
    ended the task, and with it every lease refresh and orphan sweep of the process."""
    w = world
    gen = await w.start()
    real = w.bus.refresh_leases
    calls: list[str] = []

    async def refresh(leases: Mapping[str, str], ttl_s: float) -> None:
        calls.extend(leases)
        if len(calls) <= 2:
            raise RuntimeError("unexpected reply from the bus")
        await real(leases, ttl_s)

    monkeypatch.setattr(w.bus, "refresh_leases", refresh)
    sweeps: list[int] = []
    real_sweep = w.runner.reaper.sweep

    async def sweep() -> int:
        sweeps.append(1)
        return await real_sweep()

    monkeypatch.setattr(w.runner.reaper, "sweep", sweep)
    await until(lambda: _at_least(len(calls), 5))
    assert not w.maintenance.done(), "maintenance ended"
    assert len(sweeps) >= 3  # the sweep went on in the rounds that failed too
    assert await w.bus.lease_owner(gen, chat=w.chat_of(gen)) == w.bus.owner


async def test_shutdown_during_an_outage_hands_over_or_logs_the_loss(
        world: World, backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    w = world
    gen = await w.start()
    w.flaky.down = True
    w.provider.finish.set()
    await w.probe.wait(lambda: bool(w.probe.of(gen, "saving")))
    text = "".join(str(e.data["text"]) for e in w.probe.of(gen, "delta"))
    caplog.set_level(logging.INFO)
    await w.runner.close(0.2, finish_s=0.2)
    assert gen not in w.runner.running
    row = await w.repo.generation(gen)
    assert row is not None and row.status == "active"  # nothing could be written
    if backend.name == "memory":
        lost = [r for r in caplog.records if r.getMessage().startswith("answer lost")]
        assert len(lost) == 1
        fields = lost[0].__dict__
        assert fields["status"] == "completed" and fields["chars"] == len(text)
        assert 0 <= fields["lost_chars"] <= len(text) and fields["usage_lost"] is True
        return
    # Redis: the done is in the log; the next process's sweep saves it as it was.
    assert any(r.getMessage().startswith("answer handed over") for r in caplog.records)
    assert await w.bus.lease_owner(gen, chat=w.chat_of(gen)) is None
    next_process = Reaper(w.repo, w.bus, w.bus, set())
    await until(lambda: _swept(next_process))
    row = await w.repo.generation(gen)
    assert row is not None and row.status == "completed"
    msg = await w.repo.get_message(row.message_id)
    assert msg is not None and msg.content == text and msg.usage == USAGE.as_dict()
    assert msg.status == "complete"


async def _swept(reaper: Reaper) -> bool:
    return await reaper.sweep() > 0


@pytest.mark.parametrize("backend", ["redis"], indirect=True)  # one process: nobody to die
async def test_an_owner_gone_while_saving_is_saved_from_its_recorded_end(
        world: World, backend: Backend, key_prefix: str) -> None:
    """No shutdown, no hand-over: the owner's lease lapses while its answer waits for the
    database (as when it is killed). Before its tabs heard `saving` the owner recorded the
    answer's end in Redis; another process's sweep, which leaves the answer alone while the
    lease is held, then saves it from that record — completed, with usage — and publishes
    one `done`. When the owner's own write lands afterwards it finds its end in SQL and
    publishes no second `done`."""
    w = world
    gen = await w.start()
    w.flaky.down = True
    w.provider.finish.set()
    await w.probe.wait(lambda: bool(w.probe.of(gen, "saving")))
    text = "".join(str(e.data["text"]) for e in w.probe.of(gen, "delta"))
    recorded = await w.bus.recorded_end(gen, chat=w.chat_of(gen))
    assert recorded is not None and recorded.data["status"] == "completed"
    assert recorded.seq == len(w.probe.of(gen, "delta")) + 1
    ended: list[tuple[str, str]] = []  # (who, status): each process's end hook, for gen

    def hook(who: str) -> Callable[..., None]:
        return lambda g, status, *_: ended.append((who, status)) if g.id == gen else None

    w.runner.on_end = hook("owner")
    other_bus = _new_bus(backend, 60.0, key_prefix)
    await other_bus.start(lambda _e: None, lambda _g: None)
    try:
        other = Reaper(w.repo, other_bus, other_bus, set())
        other.on_end = hook("sweep")
        for _ in range(3):  # the owner lives: its lease is held
            assert await other.sweep() == 0
        w.maintenance.cancel()  # no more lease refreshes, as after a SIGKILL
        await asyncio.gather(w.maintenance, return_exceptions=True)
        await w.bus.drop_lease(gen, chat=w.chat_of(gen))
        await until(lambda: _swept(other))
    finally:
        await other_bus.close()
    await w.probe.wait(lambda: bool(w.probe.of(gen, "done")))
    done = w.probe.of(gen, "done")[0].data
    assert done["status"] == "completed" and done["usage"] == USAGE.as_dict()
    assert (done["length"], done["sha256"]) == digest(text)
    row = await w.repo.generation(gen)
    assert row is not None and row.status == "completed" and row.last_seq == recorded.seq - 1
    msg = await w.repo.get_message(row.message_id)
    assert msg is not None and msg.content == text and msg.usage == USAGE.as_dict()
    assert msg.status == "complete"
    # forgotten with the log's end
    assert await w.bus.recorded_end(gen, chat=w.chat_of(gen)) is None
    # The owner was alive after all: its write lands, finds its own end, adds no done.
    w.flaky.down = False
    await until(lambda: _ended(w.runner, gen))
    barrier_chat = await w.repo.create_chat(USER)
    await w.bus.watch(barrier_chat.id)
    second = await w.runner.send(USER, barrier_chat.id, "go", None)
    await w.probe.wait(lambda: bool(w.probe.of(second.generation.id, "delta")))
    assert len(w.probe.of(gen, "done")) == 1
    assert ended == [("sweep", "completed")]  # the host hears of the end once


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_an_end_not_recorded_at_once_is_recorded_with_a_later_try(
        world: World, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Redis unavailable too when saving begins: the end is recorded with a later failed
    write. A shutdown whose hand-over then cannot reach Redis says the answer is left to the
    record, and another process saves it from there (not `answer lost`)."""
    w = world
    real_record, real_append = w.bus.record_end, w.bus.append
    tries: list[int] = []

    async def record_end(done: Event) -> None:
        tries.append(1)
        if len(tries) == 1:
            raise BusUnavailable("Redis unavailable: refused")
        await real_record(done)

    monkeypatch.setattr(w.bus, "record_end", record_end)
    gen = await w.start()
    w.flaky.down = True
    w.provider.finish.set()
    await w.probe.wait(lambda: bool(w.probe.of(gen, "saving")))
    text = "".join(str(e.data["text"]) for e in w.probe.of(gen, "delta"))
    await until(lambda: _at_least(len(tries), 2))
    assert len(tries) == 2  # once recorded, not again
    await until(lambda: _at_least(w.flaky.calls.get("finish", 0), 4))
    assert len(tries) == 2

    async def append(event: Event) -> bool:
        raise BusUnavailable("Redis unavailable: refused")

    monkeypatch.setattr(w.bus, "append", append)
    caplog.set_level(logging.INFO)
    await w.runner.close(0.2, finish_s=0.2)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("answer left unsaved at shutdown") for m in messages), messages
    assert not any(m.startswith("answer lost") for m in messages)
    monkeypatch.setattr(w.bus, "append", real_append)
    next_process = Reaper(w.repo, w.bus, w.bus, set())
    await until(lambda: _swept(next_process))
    await w.probe.wait(lambda: bool(w.probe.of(gen, "done")))
    assert w.probe.of(gen, "done")[0].data["status"] == "completed"
    row = await w.repo.generation(gen)
    assert row is not None and row.status == "completed"
    msg = await w.repo.get_message(row.message_id)
    assert msg is not None and msg.content == text and msg.usage == USAGE.as_dict()


async def _ended(runner: Runner, gen: str) -> bool:
    """The generation's task is over (its `done`, if any, published before that)."""
    return all(t.get_name() != f"generation-{gen}" for t in runner._tasks)


async def test_a_start_whose_announcement_fails_still_ends(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The user message's announcement used to run before the generation's task: an
    unexpected error there left the SQL rows active with nothing running them."""
    w = world

    async def publish(event: Event) -> None:
        raise RuntimeError("unexpected reply from the bus")

    monkeypatch.setattr(w.bus, "publish", publish)
    gen = await w.start()
    w.provider.finish.set()
    await w.probe.wait(lambda: bool(w.probe.of(gen, "done")))
    row = await w.repo.generation(gen)
    assert row is not None and row.status == "completed"
    assert gen not in w.runner.running


async def test_a_start_that_fails_on_the_bus_ends_in_error(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    w = world
    real = w.bus.append

    async def append(event: Event) -> bool:
        if event.type == "start":
            raise RuntimeError("unexpected reply from the bus")
        return await real(event)

    monkeypatch.setattr(w.bus, "append", append)
    chat = await w.repo.create_chat(USER)
    await w.bus.watch(chat.id)
    started = await w.runner.send(USER, chat.id, "go", None)
    gen = started.generation.id
    await w.probe.wait(lambda: bool(w.probe.of(gen, "done")))
    row = await w.repo.generation(gen)
    assert row is not None and row.status == "error"
    msg = await w.repo.get_message(row.message_id)
    assert msg is not None and msg.status == "error"
    assert gen not in w.runner.running
