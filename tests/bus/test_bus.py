"""The Bus contract, run against every backend (see conftest.py: `bus`, `peer`, `make_bus`).

`bus` plays the process that owns a generation; `peer` another process (for the memory
backend, the same one). Ids are fresh per test, so tests never see each other's events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from chatcast.core import protocol
from chatcast.core.protocol import Event
from chatcast.server.bus.base import LogSealed, log_entry
from chatcast.store.ids import new_id
from tests.bus.conftest import BusFactory, BusProbe


def deltas(chat: str, gen: str, texts: list[str], first_seq: int = 1) -> list[Event]:
    return [protocol.delta(chat, gen, first_seq + i, t) for i, t in enumerate(texts)]


def final(chat: str, gen: str, seq: int, content: str) -> Event:
    msg = {"id": new_id(), "chat": chat, "role": "assistant", "content": content,
           "status": "complete", "gen": gen}
    return protocol.done(chat, gen, seq, "completed", msg, usage={"output_tokens": 3})


def data(events: list[Event] | None) -> list[dict[str, object]]:
    assert events is not None, "log unexpectedly unknown"
    return [e.data for e in events]


async def eventually(check: Callable[[], Awaitable[bool]], limit_s: float = 5.0) -> None:
    """Poll a time-based condition (expiry) until it holds. Expiry is the passing of time,
    not an event anyone could signal, so polling is the honest way to observe it."""
    async with asyncio.timeout(limit_s):
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


# -- the log --------------------------------------------------------------------------------


async def test_read_log_replays_after_seq_in_order(bus: BusProbe) -> None:
    chat, gen = new_id(), new_id()
    events = [*deltas(chat, gen, ["Hel", "lo", ", wor", "ld"]), final(chat, gen, 5, "Hello, world")]
    for e in events:
        assert await bus.bus.append(e) is False

    assert data(await bus.bus.read_log(gen, 0, chat=chat)) == [e.data for e in events]
    assert data(await bus.bus.read_log(gen, 2, chat=chat)) == [e.data for e in events[2:]]
    assert data(await bus.bus.read_log(gen, 4, chat=chat)) == [events[4].data]
    assert await bus.bus.read_log(gen, 5, chat=chat) == []


async def test_seal_refuses_deltas_but_takes_the_done(bus: BusProbe, peer: BusProbe) -> None:
    """Another process ending a generation seals it first: the owner's next delta is
    refused (append says stop) and the log it reads afterwards is final."""
    chat, gen = new_id(), new_id()
    for e in deltas(chat, gen, ["a", "b"]):
        await bus.bus.append(e)
    await peer.bus.seal(gen, chat=chat)
    with pytest.raises(LogSealed):
        await bus.bus.append(protocol.delta(chat, gen, 3, "c"))
    assert [e["seq"] for e in data(await peer.bus.read_log(gen, 0, chat=chat))] == [1, 2]
    assert await peer.bus.append(final(chat, gen, 3, "ab")) is False
    with pytest.raises(LogSealed):  # a done seals for good
        await bus.bus.append(final(chat, gen, 4, "abc"))
    types = [e["type"] for e in data(await peer.bus.read_log(gen, 0, chat=chat))]
    assert types == ["delta", "delta", "done"]


async def test_read_log_of_unknown_generation_is_none(bus: BusProbe) -> None:
    assert await bus.bus.read_log(new_id(), 0, chat=new_id()) is None


async def test_logs_are_kept_per_generation(bus: BusProbe, peer: BusProbe) -> None:
    chat, gen_a, gen_b = new_id(), new_id(), new_id()
    for a, b in zip(deltas(chat, gen_a, ["a1", "a2"]), deltas(chat, gen_b, ["b1", "b2"]),
                    strict=True):
        await bus.bus.append(a)
        await bus.bus.append(b)

    assert [e["text"] for e in data(await peer.bus.read_log(gen_a, 0, chat=chat))] == ["a1", "a2"]
    assert [e["text"] for e in data(await peer.bus.read_log(gen_b, 0, chat=chat))] == ["b1", "b2"]


async def test_events_round_trip_unchanged(bus: BusProbe, peer: BusProbe) -> None:
    chat, gen = new_id(), new_id()
    await peer.bus.watch(chat)
    text = 'emoji 🎉, CJK 漢字, quotes "\'\\, newline\n, NUL-free, combining é'
    sent = [protocol.delta(chat, gen, 1, text), final(chat, gen, 2, text)]
    for e in sent:
        await bus.bus.append(e)

    assert data(await peer.bus.read_log(gen, 0, chat=chat)) == [e.data for e in sent]
    assert await peer.wait_events(chat, 2) == [e.data for e in sent]


async def test_log_holds_only_positioned_events(bus: BusProbe) -> None:
    chat, gen = new_id(), new_id()
    await bus.bus.publish(protocol.start(chat, gen, new_id(), "demo", "demo-1"))
    first = protocol.delta(chat, gen, 1, "x")
    await bus.bus.append(first)
    await bus.bus.publish(protocol.message(chat, {"id": new_id(), "content": "hi"}))

    assert data(await bus.bus.read_log(gen, 0, chat=chat)) == [first.data]


async def test_restore_log_writes_the_log_again_and_publishes_nothing(
        bus: BusProbe, peer: BusProbe) -> None:
    """After the backend lost a log, its owner writes it again from its own copy; appending
    goes on after it, and watchers get only what is appended, not the restored events."""
    chat, gen, control = new_id(), new_id(), new_id()
    await peer.bus.watch(chat)
    kept = [protocol.start(chat, gen, new_id(), "demo", "demo-1"), *deltas(chat, gen, ["a", "b"])]

    await bus.bus.restore_log(gen, [log_entry(e) for e in kept], chat=chat)
    nxt = protocol.delta(chat, gen, 3, "c")
    assert await bus.bus.append(nxt) is False

    assert data(await peer.bus.read_log(gen, 0, chat=chat)) == [e.data for e in [*kept[1:], nxt]]
    assert data(await peer.bus.read_log(gen, 2, chat=chat)) == [nxt.data]
    barrier = protocol.delta(chat, control, 1, "barrier")
    await bus.bus.append(barrier)
    await peer.wait_event(lambda e: e.data == barrier.data)
    assert [e["text"] for e in peer.events_of(chat)] == ["c", "barrier"]


# -- end of a log and retention -------------------------------------------------------------


async def test_ended_log_stays_readable_within_retention(bus: BusProbe, peer: BusProbe) -> None:
    chat, gen = new_id(), new_id()
    events = [*deltas(chat, gen, ["a", "b"]), final(chat, gen, 3, "ab")]
    for e in events:
        await bus.bus.append(e)
    await bus.bus.end_log(gen, chat=chat)

    assert data(await peer.bus.read_log(gen, 1, chat=chat)) == [e.data for e in events[1:]]


async def test_ended_log_expires_after_retention(make_bus: BusFactory) -> None:
    bus = await make_bus(retention_s=0.2)
    chat, gen = new_id(), new_id()
    await bus.bus.append(protocol.delta(chat, gen, 1, "gone soon"))
    await bus.bus.end_log(gen, chat=chat)

    async def expired() -> bool:
        return await bus.bus.read_log(gen, 0, chat=chat) is None

    await eventually(expired)


async def test_log_without_end_does_not_expire_at_retention(make_bus: BusFactory) -> None:
    """Retention starts at end_log: a long generation keeps its whole log while it runs."""
    bus = await make_bus(retention_s=0.2)
    chat, running, ended = new_id(), new_id(), new_id()
    await bus.bus.append(protocol.delta(chat, running, 1, "still going"))
    await bus.bus.append(protocol.delta(chat, ended, 1, "over"))
    await bus.bus.end_log(ended, chat=chat)

    async def expired() -> bool:
        return await bus.bus.read_log(ended, 0, chat=chat) is None

    await eventually(expired)  # retention has passed for `ended` ...
    # ... not for `running`
    assert data(await bus.bus.read_log(running, 0, chat=chat))[0]["text"] == "still going"


async def test_a_recorded_end_is_kept_beside_the_log_unpublished_until_the_log_ends(
        bus: BusProbe, peer: BusProbe) -> None:
    """The end of an answer whose final write waits for the database: another process reads
    it (the orphan sweep, should the owner die), yet it is neither in the log nor published
    (tabs get a done only once the answer is saved); a later record replaces it, and the
    log's end forgets it."""
    chat, gen, control = new_id(), new_id(), new_id()
    await peer.bus.watch(chat)
    text = deltas(chat, gen, ["a", "b"])
    for e in text:
        await bus.bus.append(e)
    assert await peer.bus.recorded_end(gen, chat=chat) is None

    end = final(chat, gen, 3, "ab")
    await bus.bus.record_end(final(chat, gen, 3, "a"))
    await bus.bus.record_end(end)

    recorded = await peer.bus.recorded_end(gen, chat=chat)
    assert recorded is not None and recorded.data == end.data
    assert data(await peer.bus.read_log(gen, 0, chat=chat)) == [e.data for e in text]
    barrier = protocol.delta(chat, control, 1, "barrier")
    await bus.bus.append(barrier)
    await peer.wait_event(lambda e: e.data == barrier.data)
    assert [e["type"] for e in peer.events_of(chat)] == ["delta", "delta", "delta"]
    await peer.bus.end_log(gen, chat=chat)
    assert await bus.bus.recorded_end(gen, chat=chat) is None
    assert await peer.bus.recorded_end(new_id(), chat=chat) is None


# -- live fan-out ---------------------------------------------------------------------------


async def test_append_reaches_a_watching_process_in_order(bus: BusProbe, peer: BusProbe) -> None:
    chat, gen = new_id(), new_id()
    await peer.bus.watch(chat)
    sent = deltas(chat, gen, [f"t{i} " for i in range(1, 51)])
    for e in sent:
        await bus.bus.append(e)

    got = await peer.wait_events(chat, len(sent))
    assert got == [e.data for e in sent]


async def test_publish_fans_out_unpositioned_events(bus: BusProbe, peer: BusProbe) -> None:
    chat, gen = new_id(), new_id()
    await peer.bus.watch(chat)
    msg = protocol.message(chat, {"id": new_id(), "role": "user", "content": "hi"})
    begin = protocol.start(chat, gen, new_id(), "demo", "demo-1")
    await bus.bus.publish(msg)
    await bus.bus.publish(begin)

    assert await peer.wait_events(chat, 2) == [msg.data, begin.data]


async def test_only_watched_chats_are_delivered(bus: BusProbe, peer: BusProbe) -> None:
    watched, other = new_id(), new_id()
    await peer.bus.watch(watched)
    await bus.bus.append(protocol.delta(other, new_id(), 1, "not for you"))
    await bus.bus.publish(protocol.message(other, {"id": new_id(), "content": "nor this"}))
    barrier = protocol.delta(watched, new_id(), 1, "barrier")
    await bus.bus.append(barrier)

    await peer.wait_event(lambda e: e.data == barrier.data)
    assert peer.events_of(other) == []


async def test_unwatch_ends_delivery(bus: BusProbe, peer: BusProbe) -> None:
    chat, control, gen = new_id(), new_id(), new_id()
    await peer.bus.watch(chat)
    await peer.bus.watch(control)
    await bus.bus.append(protocol.delta(chat, gen, 1, "seen"))
    await peer.wait_events(chat, 1)

    await peer.bus.unwatch(chat)
    await bus.bus.append(protocol.delta(chat, gen, 2, "unseen"))
    barrier = protocol.delta(control, new_id(), 1, "barrier")
    await bus.bus.append(barrier)

    await peer.wait_event(lambda e: e.data == barrier.data)
    assert [e["text"] for e in peer.events_of(chat)] == ["seen"]
    # The log still has everything: unwatch only ends live delivery.
    assert len(data(await peer.bus.read_log(gen, 0, chat=chat))) == 2


async def test_watch_again_after_unwatch(bus: BusProbe, peer: BusProbe) -> None:
    chat, gen = new_id(), new_id()
    await peer.bus.watch(chat)
    await peer.bus.unwatch(chat)
    await peer.bus.watch(chat)
    await bus.bus.append(protocol.delta(chat, gen, 1, "back"))

    assert [e["text"] for e in await peer.wait_events(chat, 1)] == ["back"]


# -- stop requests --------------------------------------------------------------------------


async def test_request_stop_reaches_the_owner(bus: BusProbe, peer: BusProbe) -> None:
    chat, gen = new_id(), new_id()
    assert await bus.bus.append(protocol.delta(chat, gen, 1, "a")) is False

    await peer.bus.request_stop(gen, chat=chat)
    await bus.wait_stop(gen)
    assert await bus.bus.append(protocol.delta(chat, gen, 2, "b")) is True


async def test_request_stop_is_idempotent_and_per_generation(bus: BusProbe,
                                                             peer: BusProbe) -> None:
    chat, stopped, running = new_id(), new_id(), new_id()
    await bus.bus.append(protocol.delta(chat, stopped, 1, "a"))
    await bus.bus.append(protocol.delta(chat, running, 1, "a"))

    await peer.bus.request_stop(stopped, chat=chat)
    await peer.bus.request_stop(stopped, chat=chat)
    await bus.wait_stop(stopped)

    assert await bus.bus.append(protocol.delta(chat, stopped, 2, "b")) is True
    assert await bus.bus.append(protocol.delta(chat, running, 2, "b")) is False


# -- leases ---------------------------------------------------------------------------------


async def test_lease_names_its_owner_until_dropped(bus: BusProbe, peer: BusProbe) -> None:
    chat, gen = new_id(), new_id()
    assert await peer.bus.lease_owner(gen, chat=chat) is None

    await bus.bus.refresh_lease(gen, 30.0, chat=chat)
    assert await bus.bus.lease_owner(gen, chat=chat) == bus.bus.owner
    assert await peer.bus.lease_owner(gen, chat=chat) == bus.bus.owner

    await bus.bus.drop_lease(gen, chat=chat)
    assert await peer.bus.lease_owner(gen, chat=chat) is None


async def test_lease_expires_without_refresh(bus: BusProbe, peer: BusProbe) -> None:
    chat, gen = new_id(), new_id()
    await bus.bus.refresh_lease(gen, 0.2, chat=chat)
    assert await peer.bus.lease_owner(gen, chat=chat) == bus.bus.owner

    async def expired() -> bool:
        return await peer.bus.lease_owner(gen, chat=chat) is None

    await eventually(expired)


async def test_refresh_extends_a_lease(bus: BusProbe, peer: BusProbe) -> None:
    chat, kept, control = new_id(), new_id(), new_id()
    await bus.bus.refresh_lease(kept, 0.2, chat=chat)
    await bus.bus.refresh_lease(control, 0.2, chat=chat)
    await bus.bus.refresh_lease(kept, 30.0, chat=chat)

    async def control_expired() -> bool:
        return await peer.bus.lease_owner(control, chat=chat) is None

    await eventually(control_expired)  # the short lease is over by now ...
    # ... the refreshed one is not
    assert await peer.bus.lease_owner(kept, chat=chat) == bus.bus.owner


async def test_leases_refreshed_together_shard_by_shard(bus: BusProbe, peer: BusProbe) -> None:
    """`refresh_leases` claims every lease of a shard at once (one Redis: one shard, one
    round trip; a Redis Cluster: one shard per master serving the chats)."""
    leases = {new_id(): new_id() for _ in range(40)}  # gen → chat, chats on every shard
    shards: dict[str, dict[str, str]] = {}
    for gen, chat in leases.items():
        shards.setdefault(bus.bus.lease_shard(gen, chat=chat), {})[gen] = chat
    stats: dict[str, int] = getattr(bus.bus, "stats", {"round_trips": 0})
    before = stats["round_trips"]
    for group in shards.values():
        await bus.bus.refresh_leases(group, 30.0)
    for gen, chat in leases.items():
        assert await peer.bus.lease_owner(gen, chat=chat) == bus.bus.owner
    cluster = type(bus.bus).__name__ == "RedisClusterBus"
    assert len(shards) == (3 if cluster else 1)
    if type(bus.bus).__name__ == "RedisBus":
        assert stats["round_trips"] - before == 1


async def test_owners_are_distinct_per_bus(make_bus: BusFactory) -> None:
    one, two = await make_bus(), await make_bus()
    assert one.bus.owner and two.bus.owner and one.bus.owner != two.bus.owner


async def test_ping(bus: BusProbe) -> None:
    assert await bus.bus.ping() is True
