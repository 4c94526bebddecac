"""The hub's subscriber outbox: merge while busy, bounded, overflow means close; live and
catch-up overlap de-duplicated; a gap triggers a resync."""

from __future__ import annotations

import asyncio

import pytest

from chatcast.core import protocol
from chatcast.core.codes import Close
from chatcast.core.protocol import Cursor, Event
from chatcast.core.retry import Backoff
from chatcast.server import hub as hub_module
from chatcast.server.bus.base import BusUnavailable
from chatcast.server.bus.memory import MemoryBus
from chatcast.server.hub import Hub, Subscriber


def delta(gen: str, seq: int, text: str = "x") -> Event:
    return protocol.delta("c", gen, seq, text)


def ready(sub: Subscriber, chat: str = "c") -> None:
    sub.open_chat(chat)
    sub.caught_up(chat, [])


def test_busy_subscriber_gets_merged_deltas_with_exact_text() -> None:
    sub = Subscriber("test", max_frames=64)
    ready(sub)
    for seq in range(1, 101):
        sub.deliver(delta("g", seq, f"{seq} "))
    batch = sub.drain()
    assert len(batch) == 1 and batch[0].seq == 100
    assert batch[0].data["text"] == "".join(f"{i} " for i in range(1, 101))


def test_interleaved_generations_merge_per_generation() -> None:
    sub = Subscriber("test", max_frames=16)
    ready(sub)
    for seq in range(1, 200):
        for gen in ("a", "b", "c"):
            sub.deliver(delta(gen, seq, gen))
    batch = sub.drain()
    assert [(e.gen, e.seq, e.data["text"]) for e in batch] == \
        [(g, 199, g * 199) for g in ("a", "b", "c")]


def test_merging_never_mixes_reasoning_and_text() -> None:
    sub = Subscriber("test", max_frames=64)
    ready(sub)
    for seq in range(1, 11):
        sub.deliver(protocol.reasoning_delta("c", "g", seq, f"r{seq} "))
    for seq in range(11, 21):
        sub.deliver(delta("g", seq, f"t{seq} "))
    sub.deliver(protocol.reasoning_delta("c", "g", 21, "late"))
    batch = sub.drain()
    assert [(e.seq, e.data["part"], e.data["text"], e.data.get("reasoning")) for e in batch] == [
        (10, "reasoning", "", "".join(f"r{i} " for i in range(1, 11))),
        (20, "text", "".join(f"t{i} " for i in range(11, 21)), None),
        (21, "reasoning", "", "late"),
    ]


def test_overflow_frees_memory_and_raises_the_alarm() -> None:
    sub = Subscriber("test", max_frames=16, max_bytes=1 << 20)
    alarms: list[bool] = []
    sub.on_overflow = lambda: alarms.append(True)
    ready(sub)
    for seq in range(1, 40):  # one frame per generation: nothing to merge with
        sub.deliver(protocol.start("c", f"g{seq}", "m", "demo", "demo-1"))
        if sub.overflowed:
            break
    assert sub.overflowed
    assert not sub.outbox and sub.queued_bytes == 0 and alarms == [True]
    sub.deliver(delta("a", 500))
    assert not sub.outbox  # nothing more is queued for a subscriber being closed


def test_byte_bound() -> None:
    sub = Subscriber("test", max_frames=1000, max_bytes=10_000)
    ready(sub)
    sub.push(protocol.pong())  # the head is being written: deltas merge behind it
    for seq in range(1, 50):
        sub.deliver(delta("g", seq, "y" * 500))
    assert sub.overflowed


def test_duplicates_dropped_and_gap_resyncs() -> None:
    sub = Subscriber("test")
    ready(sub)
    gaps: list[str] = []
    sub.on_gap = lambda s, chat: gaps.append(chat)
    sub.deliver(protocol.start("c", "g", "m", "demo", "demo-1"))
    for seq in (1, 2, 2, 1, 3):
        sub.deliver(delta("g", seq))
    sub.deliver(delta("g", 7))  # 4..6 missing
    assert gaps == ["c"]
    frames = sub.drain()
    assert [f.type for f in frames] == ["start", "delta"] and frames[1].seq == 3


async def test_subscribe_merges_catch_up_and_live_without_duplicates() -> None:
    bus = MemoryBus()
    calls: list[Cursor | None] = []

    async def catch_up(chat: str, cursor: Cursor | None) -> list[Event]:
        calls.append(cursor)
        await bus.append(delta("g", 3))  # live while catching up: buffered, then de-duplicated
        return [delta("g", 2), delta("g", 3)]

    hub = Hub(bus, catch_up)
    await bus.start(hub.on_event, lambda gen: None)
    sub = Subscriber("test")
    await hub.subscribe(sub, "c", Cursor(gen="g", seq=1))
    batch = await asyncio.wait_for(sub.next_batch(), 1)
    assert len(batch) == 1 and batch[0].seq == 3 and batch[0].data["text"] == "xx"
    hub.drop(sub)
    assert not hub.chats and not hub.connections
    await hub.close()


async def test_live_events_the_client_already_has_are_not_sent_after_an_empty_catch_up(
) -> None:
    """A long-poll after a snapshot at seq 1: the log has nothing newer yet, while the live
    copies of the events the snapshot already showed (start, seq 1) arrive only now. They
    are the client's already: only seq 2 goes out, never merged with seq 1."""
    bus = MemoryBus()

    async def catch_up(chat: str, cursor: Cursor | None) -> list[Event]:
        await bus.append(protocol.start("c", "g", "m", "demo", "demo-1"))
        await bus.append(delta("g", 1, "## "))
        await bus.append(delta("g", 2, "On "))
        return []

    hub = Hub(bus, catch_up)
    await bus.start(hub.on_event, lambda gen: None)
    sub = Subscriber("poll")
    await hub.subscribe(sub, "c", Cursor(gen="g", seq=1))
    batch = await asyncio.wait_for(sub.next_batch(), 1)
    assert [(e.type, e.seq, e.data.get("text")) for e in batch] == \
        [("delta", 2, "On ")]
    hub.drop(sub)
    await hub.close()


def test_many_interleaved_generations_merge_and_barriers_keep_order() -> None:
    sub = Subscriber("test", max_frames=256)
    ready(sub)
    gens = [f"g{i}" for i in range(100)]
    for seq in range(1, 21):
        for gen in gens:
            sub.deliver(delta(gen, seq, "t"))
    batch = sub.drain()
    assert len(batch) == 100 and all(e.seq == 20 and e.data["text"] == "t" * 20 for e in batch)
    # a non-delta event is a barrier: a later delta does not jump over it
    sub.deliver(delta("g0", 21, "a"))
    sub.deliver(protocol.start("c", "new", "m", "demo", "demo-1"))
    sub.deliver(delta("g0", 22, "b"))
    assert [(e.type, e.seq) for e in sub.drain()] == [("delta", 21), ("start", 0), ("delta", 22)]


async def test_a_resync_outlasts_a_short_bus_outage_and_gives_up_on_a_long_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_module, "RESYNC_BACKOFF", Backoff(base_s=0.01, max_s=0.01))
    monkeypatch.setattr(hub_module, "RESYNC_ATTEMPTS", 4)
    failures = {"c": 2, "d": 99}  # chat -> catch-ups that find the bus unavailable

    async def catch_up(chat: str, cursor: Cursor | None) -> list[Event]:
        if failures[chat] > 0:
            failures[chat] -= 1
            raise BusUnavailable("down")
        return [delta("g", 2)]

    hub = Hub(MemoryBus(), catch_up)
    short, long = Subscriber("test"), Subscriber("test")
    for sub, chat in ((short, "c"), (long, "d")):
        ready(sub, chat)
        sub.deliver(protocol.start(chat, "g", "m", "demo", "demo-1"))
        sub.deliver(protocol.delta(chat, "g", 1, "x"))
        sub.drain()
        hub.resync(sub, chat)
    await asyncio.wait_for(asyncio.gather(*hub._tasks), 1)

    assert [(e.type, e.seq) for e in short.drain()] == [("delta", 2)]
    assert short.close_code is None
    assert long.close_code == Close.INTERNAL and long.drain() == []
    assert failures["d"] == 99 - 4  # the first try and one after each pause
    await hub.close()
