"""Where a stop, the time limit or shutdown lands inside a bus call (RELIABILITY.md, rows on
stop): the runner's seq, content and log stay what the bus accepted, `done` goes out once at
the position after every delta, and SQL equals what the tabs assembled.

The bus is wrapped so that one append completes on the real backend (Redis has stored and
published it) and then waits, under the test's control, before returning to the runner:
exactly the moment a stop used to cancel the pump, losing the `done` behind a repeat."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import pytest

from chatcast.core.protocol import Event
from chatcast.providers import ChatMessage, Chunk, Registry, StreamParams
from chatcast.server.bus.base import Bus, LogEntry
from chatcast.server.runner import Runner
from chatcast.server.settings import Settings
from chatcast.store.db import make_engine, session_factory
from chatcast.store.repo import Repo
from tests.bus.conftest import Backend, _new_bus
from tests.conftest import DatabaseFactory
from tests.helpers.assemble import digest

USER = "u-cancel"


class Endless:
    """A provider that yields a token every `every_s` until cancelled."""

    name = "endless"
    default_model = "endless"

    def __init__(self, every_s: float = 0.005) -> None:
        self.every_s = every_s
        self.cancelled = 0

    async def stream(self, messages: list[ChatMessage], *, model: str,
                     params: StreamParams) -> AsyncIterator[Chunk]:
        n = 0
        try:
            while True:
                await asyncio.sleep(self.every_s)
                n += 1
                yield Chunk(text=f"t{n} ")
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def aclose(self) -> None:
        return None


class GatedBus:
    """Delegates to a real bus; `hold(pred)` makes the next append matching `pred` complete
    on the backend, then wait for `release()` before returning to its caller."""

    def __init__(self, inner: Bus) -> None:
        self.inner = inner
        self.owner = inner.owner
        self._pred: Callable[[Event], bool] | None = None
        self.inside = asyncio.Event()
        self._release = asyncio.Event()
        self.held: Event | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def hold(self, pred: Callable[[Event], bool]) -> None:
        self._pred, self.held = pred, None
        self.inside.clear()
        self._release.clear()

    async def wait_inside(self, timeout: float = 10.0) -> None:
        """Until the held append has completed on the backend and is waiting."""
        await asyncio.wait_for(self.inside.wait(), timeout)

    def release(self) -> None:
        self._release.set()

    async def append(self, event: Event) -> bool:
        result = await self.inner.append(event)
        if self._pred is not None and self._pred(event):
            self._pred, self.held = None, event
            self.inside.set()
            await self._release.wait()
        return result

    async def restore_log(self, gen: str, entries: list[LogEntry], *, chat: str) -> None:
        await self.inner.restore_log(gen, entries, chat=chat)


class Harness:
    def __init__(self, runner: Runner, repo: Repo, bus: GatedBus, events: list[Event]) -> None:
        self.runner, self.repo, self.bus, self.events = runner, repo, bus, events
        self.arrived = asyncio.Event()

    def of(self, gen: str) -> list[Event]:
        return [e for e in self.events if e.gen == gen]

    async def wait_done(self, gen: str, timeout: float = 10.0) -> Event:
        async with asyncio.timeout(timeout):
            while True:
                found = [e for e in self.of(gen) if e.type == "done"]
                if found:
                    return found[0]
                self.arrived.clear()
                await self.arrived.wait()

    async def wait_seq(self, gen: str, seq: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not any(e.seq >= seq and e.type == "delta" for e in self.of(gen)):
                self.arrived.clear()
                await self.arrived.wait()

    async def check_exact(self, gen: str, status: str) -> str:
        """One done, after the last delta; text == done's digest == SQL; nothing after."""
        done = await self.wait_done(gen)
        await asyncio.sleep(0.1)  # anything wrongly published after done would show now
        events = self.of(gen)
        dones = [e for e in events if e.type == "done"]
        assert len(dones) == 1, f"{len(dones)} done events"
        assert events[-1].type == "done", "an event came after done"
        deltas = [e for e in events if e.type == "delta"]
        seqs = [e.seq for e in deltas]
        assert seqs == list(range(1, len(seqs) + 1)), f"delta positions {seqs}"
        assert done.seq == len(seqs) + 1
        text = "".join(str(e.data["text"]) for e in deltas)
        assert (done.data["length"], done.data["sha256"]) == digest(text)
        assert done.data["status"] == status
        row = await self.repo.generation(gen)
        assert row is not None and row.status == status
        msg = await self.repo.get_message(row.message_id)
        assert msg is not None and msg.content == text, "SQL differs from what tabs got"
        assert row.last_seq == len(seqs)
        return text

    async def check_exact_ending_in_held(self, gen: str, status: str) -> str:
        """`check_exact`, and the held delta is the text's last: the append the bus
        completed as the stop, the time limit or shutdown landed is kept, not lost or repeated."""
        text = await self.check_exact(gen, status)
        assert self.bus.held is not None and text.endswith(str(self.bus.held.data["text"]))
        return text


@pytest.fixture
async def harness(backend: Backend, key_prefix: str, make_database: DatabaseFactory,
                  tmp_path: Path) -> AsyncIterator[Harness]:
    settings = Settings(checkpoint_interval_s=0.05, lease_ttl_s=6.0, coalesce_max_ms=0,
                        generation_timeout_s=60.0)
    engine = make_engine(make_database("sqlite"))
    repo = Repo(session_factory(engine))
    inner = _new_bus(backend, 60.0, key_prefix)
    bus = GatedBus(inner)
    registry = Registry({"endless": Endless()}, "endless")
    runner = Runner(settings, repo, cast(Bus, bus), registry)
    events: list[Event] = []
    h = Harness(runner, repo, bus, events)

    def on_event(event: Event) -> None:
        events.append(event)
        h.arrived.set()

    await inner.start(on_event, runner.on_stop_requested)
    try:
        yield h
    finally:
        await runner.close(1.0)
        await inner.close()
        await engine.dispose()


async def start(h: Harness, settings_timeout: float | None = None) -> str:
    chat = await h.repo.create_chat(USER)
    await h.bus.inner.watch(chat.id)
    if settings_timeout is not None:
        h.runner.settings.generation_timeout_s = settings_timeout
    started = await h.runner.send(USER, chat.id, "go", None)
    return started.generation.id


def delta_at(seq: int) -> Callable[[Event], bool]:
    return lambda e: e.type == "delta" and e.seq == seq


async def test_stop_inside_an_append_ends_with_one_done(harness: Harness) -> None:
    h = harness
    gen = await start(h)
    h.bus.hold(delta_at(4))
    await h.bus.wait_inside()
    # The bus has stored and published delta 4; the runner has not heard back yet.
    await h.runner.request_stop(USER, gen, None)
    await asyncio.sleep(0.05)  # the stop is in: a cancellation would land right now
    h.bus.release()
    await h.check_exact_ending_in_held(gen, "stopped")


async def test_stop_by_chat_inside_an_append(harness: Harness) -> None:
    h = harness
    gen = await start(h)
    h.bus.hold(delta_at(2))
    await h.bus.wait_inside()
    row = await h.repo.generation(gen)
    assert row is not None
    await h.runner.request_stop(USER, None, row.chat_id)
    h.bus.release()
    await h.check_exact(gen, "stopped")


async def test_stop_inside_the_start_append(harness: Harness) -> None:
    """A stop that lands while `start` itself is being appended: no delta follows."""
    h = harness
    h.bus.hold(lambda e: e.type == "start")
    chat = await h.repo.create_chat(USER)
    await h.bus.inner.watch(chat.id)
    sending = asyncio.create_task(h.runner.send(USER, chat.id, "go", None))
    await h.bus.wait_inside()
    assert h.bus.held is not None
    gen = str(h.bus.held.gen)
    await h.runner.request_stop(USER, gen, None)
    h.bus.release()
    await sending
    assert await h.check_exact(gen, "stopped") == ""


async def test_time_limit_inside_an_append(harness: Harness) -> None:
    """The wall-clock limit expires while a delta is in flight: status error, text exact."""
    h = harness
    h.bus.hold(delta_at(3))
    gen = await start(h, settings_timeout=0.5)
    await h.bus.wait_inside()
    await asyncio.sleep(0.8)  # the limit passes while the append is held
    h.bus.release()
    await h.check_exact_ending_in_held(gen, "error")


async def test_shutdown_inside_an_append(harness: Harness) -> None:
    """Shutdown (after its grace period) while a delta is in flight: `interrupted`, exact."""
    h = harness
    gen = await start(h)
    h.bus.hold(delta_at(5))
    await h.bus.wait_inside()
    closing = asyncio.create_task(h.runner.close(0.05))
    await asyncio.sleep(0.2)
    h.bus.release()
    await closing
    await h.check_exact_ending_in_held(gen, "interrupted")


async def test_caller_cancelled_during_start_leaves_nothing_streaming(harness: Harness) -> None:
    """The request that started a generation is cancelled (its socket closed) while `start`
    is in flight: the generation still runs to a terminal state."""
    h = harness
    h.bus.hold(lambda e: e.type == "start")
    chat = await h.repo.create_chat(USER)
    await h.bus.inner.watch(chat.id)
    sending = asyncio.create_task(h.runner.send(USER, chat.id, "go", None))
    await h.bus.wait_inside()
    sending.cancel()
    h.bus.release()
    with contextlib.suppress(asyncio.CancelledError):
        await sending
    assert h.bus.held is not None
    gen = str(h.bus.held.gen)
    await h.wait_seq(gen, 3)
    await h.runner.request_stop(USER, gen, None)
    await h.check_exact(gen, "stopped")


def gate(obj: Any, name: str) -> tuple[asyncio.Event, asyncio.Event]:
    """Wrap `obj.name` so that its next call completes, then waits for `release` to be set."""
    inside, release = asyncio.Event(), asyncio.Event()
    real = getattr(obj, name)

    async def gated(*args: Any, **kwargs: Any) -> Any:
        result = await real(*args, **kwargs)
        setattr(obj, name, real)
        inside.set()
        await release.wait()
        return result

    setattr(obj, name, gated)
    return inside, release


async def test_caller_cancelled_after_the_rows_are_committed(harness: Harness) -> None:
    """The sender goes away right after SQL stored the user message and the generation:
    the generation is still started and ends; nothing is left `streaming`."""
    h = harness
    chat = await h.repo.create_chat(USER)
    await h.bus.inner.watch(chat.id)
    inside, release = gate(h.repo, "start_send")
    sending = asyncio.create_task(h.runner.send(USER, chat.id, "go", None))
    await asyncio.wait_for(inside.wait(), 10)
    sending.cancel()
    release.set()
    with contextlib.suppress(asyncio.CancelledError):
        await sending
    row = await h.repo.active_generation(chat.id)
    assert row is not None, "the committed generation was not started"
    await h.wait_seq(row.id, 2)
    await h.runner.request_stop(USER, row.id, None)
    await h.check_exact(row.id, "stopped")


async def test_stop_while_a_checkpoint_is_in_flight(harness: Harness) -> None:
    """The final write waits for a checkpoint under way and is never overwritten by it."""
    h = harness
    gen = await start(h)
    await h.wait_seq(gen, 3)
    inside, release = gate(h.repo, "checkpoint_many")
    await asyncio.wait_for(inside.wait(), 10)
    await h.runner.request_stop(USER, gen, None)
    await asyncio.sleep(0.1)
    release.set()
    await h.check_exact(gen, "stopped")
