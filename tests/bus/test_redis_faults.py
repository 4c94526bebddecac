"""What only the Redis bus can go through: Redis restarting or vanishing under it, Redis
absent at start, retried appends, and one pub/sub connection per process however many chats.

Each test that hurts Redis gets its own redis-server (the `redis_server` factory).
"""

# Waits take `timeout=` with a default on purpose, as in conftest.py.

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from redis.asyncio import Redis

from chatcast.core import protocol
from chatcast.server.bus import redis as redis_bus
from chatcast.server.bus.base import BusUnavailable, log_entry
from chatcast.server.bus.redis import RedisBus
from chatcast.store.ids import new_id
from tests.bus.conftest import BusProbe
from tests.helpers.ports import free_port
from tests.helpers.redis_server import RedisServer

ServerFactory = Callable[[], RedisServer]


class RedisProbe(BusProbe):
    """A BusProbe that also records `on_reconnect` calls."""

    bus: RedisBus

    def __init__(self, bus: RedisBus) -> None:
        super().__init__(bus)
        self.reconnects = 0

    async def start(self) -> RedisProbe:
        await self.bus.start(self._on_event, self._on_stop, on_reconnect=self._on_reconnect)
        return self

    def _on_reconnect(self) -> None:
        self.reconnects += 1
        self._arrived.set()

    async def wait_reconnect(self, count: int = 1, timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while self.reconnects < count:
                self._arrived.clear()
                await self._arrived.wait()


@pytest.fixture
async def buses() -> AsyncIterator[list[RedisProbe]]:
    """Started probes are appended by `_start`; all are closed after the test."""
    started: list[RedisProbe] = []
    yield started
    for probe in started:
        await probe.bus.close()


async def _start(buses: list[RedisProbe], url: str, prefix: str) -> RedisProbe:
    probe = RedisProbe(RedisBus(url, prefix=prefix))
    buses.append(probe)
    return await probe.start()


async def eventually(check: Callable[[], Awaitable[bool]], limit_s: float = 15.0) -> None:
    """Poll until `check()` holds: Redis going away is not an event anyone could signal,
    so polling is the honest way to observe it."""
    async with asyncio.timeout(limit_s):
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


# -- Redis absent at start ----------------------------------------------------------------


async def test_unreachable_at_start_is_a_clear_error_naming_redis_url() -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    bus = RedisBus(url)
    with pytest.raises(BusUnavailable) as raised:
        async with asyncio.timeout(10):
            await bus.start(lambda e: None, lambda g: None)
    message = str(raised.value)
    assert "REDIS_URL" in message
    assert "127.0.0.1" in message
    assert "s3cret" not in message  # the password is not repeated in logs
    assert await bus.ping() is False
    await bus.close()


# -- Redis restarting mid-use -------------------------------------------------------------


async def test_restart_surfaces_the_outage_then_resubscribes_by_itself(
        redis_server: ServerFactory, key_prefix: str, buses: list[RedisProbe]) -> None:
    server = redis_server()
    owner = await _start(buses, server.url, key_prefix)
    peer = await _start(buses, server.url, key_prefix)
    chat, gen = new_id(), new_id()
    await peer.bus.watch(chat)
    await owner.bus.append(protocol.delta(chat, gen, 1, "before"))
    await peer.wait_events(chat, 1)

    server.kill()

    async def down() -> bool:
        return not await peer.bus.ping() and not await owner.bus.ping()

    await eventually(down)
    async with asyncio.timeout(10):  # fails fast, does not hang
        with pytest.raises(BusUnavailable):
            await owner.bus.append(protocol.delta(chat, gen, 2, "lost"))
        with pytest.raises(BusUnavailable):
            await owner.bus.publish(protocol.message(chat, {"id": new_id()}))
        with pytest.raises(BusUnavailable):
            await peer.bus.watch(new_id())

    await asyncio.to_thread(server.restart)
    await peer.wait_reconnect()
    await owner.wait_reconnect()
    assert await peer.bus.ping() is True

    # Live events flow again on the chat watched before the restart (a new generation: the
    # old one's log was lost, see the next test) ...
    later = new_id()
    await owner.bus.append(protocol.delta(chat, later, 1, "after"))
    got = await peer.wait_events(chat, 2)
    assert [e["text"] for e in got] == ["before", "after"]
    # ... and stop requests reach the owner again.
    await peer.bus.request_stop(later, chat=chat)
    await owner.wait_stop(later)


async def test_a_log_lost_in_a_restart_is_refused_then_restored(
        redis_server: ServerFactory, key_prefix: str, buses: list[RedisProbe]) -> None:
    """Redis restarted empty mid-generation: the owner's next append does not start a log
    with a hole; it raises, and after `restore_log` the log is whole and appends go on."""
    server = redis_server()
    owner = await _start(buses, server.url, key_prefix)
    peer = await _start(buses, server.url, key_prefix)
    chat, gen = new_id(), new_id()
    await peer.bus.watch(chat)
    sent = [protocol.start(chat, gen, new_id(), "demo", "demo-1"),
            *(protocol.delta(chat, gen, seq, f"t{seq}") for seq in (1, 2, 3))]
    for event in sent:
        await owner.bus.append(event)

    await asyncio.to_thread(server.restart)
    await owner.wait_reconnect()
    await peer.wait_reconnect()
    fourth = protocol.delta(chat, gen, 4, "t4")
    with pytest.raises(BusUnavailable, match="lost the log"):
        await owner.bus.append(fourth)
    assert await peer.bus.read_log(gen, 0, chat=chat) is None  # nothing half-written

    await owner.bus.restore_log(gen, [log_entry(e) for e in [*sent, fourth]], chat=chat)
    assert await owner.bus.append(protocol.delta(chat, gen, 5, "t5")) is False
    tail = await peer.bus.read_log(gen, 0, chat=chat)
    assert tail is not None and [e.seq for e in tail] == [1, 2, 3, 4, 5]
    # restore_log published nothing: the peer saw live only what was appended.
    await peer.wait_event(lambda e: e.seq == 5)
    assert [e["seq"] for e in peer.events_of(chat) if e["type"] == "delta"] == [1, 2, 3, 5]


async def test_a_log_with_a_hole_is_unknown_before_it(
        redis_server: ServerFactory, key_prefix: str, buses: list[RedisProbe]) -> None:
    """A log that starts after a cursor (e.g. another process appended `done` to a log
    Redis had lost) cannot serve that cursor exactly: the log is unknown to it."""
    server = redis_server()
    owner = await _start(buses, server.url, key_prefix)
    chat, gen = new_id(), new_id()
    for seq in (1, 2, 3):
        await owner.bus.append(protocol.delta(chat, gen, seq, f"t{seq}"))
    await asyncio.to_thread(server.restart)
    other = await _start(buses, server.url, key_prefix)  # never appended to `gen`
    await other.bus.append(protocol.delta(chat, gen, 4, "t4"))
    await other.bus.append(protocol.delta(chat, gen, 5, "t5"))

    assert await other.bus.read_log(gen, 0, chat=chat) is None
    assert await other.bus.read_log(gen, 2, chat=chat) is None
    tail = await other.bus.read_log(gen, 3, chat=chat)
    assert tail is not None and [e.seq for e in tail] == [4, 5]


async def test_a_silent_redis_is_detected_and_left(
        redis_server: ServerFactory, key_prefix: str, buses: list[RedisProbe],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A frozen Redis sends no FIN: pings time out, the listener declares the link dead,
    and reconnects once Redis answers again."""
    monkeypatch.setattr(redis_bus, "IDLE_PING_S", 0.3)
    monkeypatch.setattr(redis_bus, "PONG_TIMEOUT_S", 0.5)
    server = redis_server()
    assert server.proc is not None
    bus = await _start(buses, server.url, key_prefix)
    chat = new_id()
    await bus.bus.watch(chat)

    caplog.set_level(logging.WARNING, logger="chatcast.bus")

    async def declared_lost() -> bool:
        return any("connection lost" in r.getMessage() for r in caplog.records)

    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        assert await bus.bus.ping() is False
        await eventually(declared_lost, limit_s=10)
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    await bus.wait_reconnect()
    await bus.bus.append(protocol.delta(chat, new_id(), 1, "awake"))
    assert [e["text"] for e in await bus.wait_events(chat, 1)] == ["awake"]


# -- retried appends ----------------------------------------------------------------------


async def test_a_repeated_append_is_neither_stored_nor_published_twice(
        redis_url: str, key_prefix: str, buses: list[RedisProbe]) -> None:
    owner = await _start(buses, redis_url, key_prefix)
    peer = await _start(buses, redis_url, key_prefix)
    chat, gen = new_id(), new_id()
    await peer.bus.watch(chat)
    first = protocol.delta(chat, gen, 1, "once")
    assert await owner.bus.append(first) is False
    assert await owner.bus.append(first) is False  # e.g. retried after a timeout
    await owner.bus.append(protocol.delta(chat, gen, 2, "twice"))

    got = await peer.wait_events(chat, 2)
    assert [e["text"] for e in got] == ["once", "twice"]
    log = await peer.bus.read_log(gen, 0, chat=chat)
    assert log is not None and [e.data["text"] for e in log] == ["once", "twice"]
    assert owner.bus.stats["duplicates"] == 1


async def test_append_is_one_round_trip(redis_url: str, key_prefix: str,
                                        buses: list[RedisProbe]) -> None:
    bus = await _start(buses, redis_url, key_prefix)
    chat, gen = new_id(), new_id()
    await bus.bus.append(protocol.delta(chat, gen, 1, "warm"))  # loads the script
    before = bus.bus.stats["round_trips"]
    for seq in range(2, 102):
        await bus.bus.append(protocol.delta(chat, gen, seq, "x"))
    assert bus.bus.stats["round_trips"] - before == 100


# -- one pub/sub connection per process ---------------------------------------------------


async def test_one_pubsub_connection_however_many_chats(
        redis_server: ServerFactory, key_prefix: str, buses: list[RedisProbe]) -> None:
    server = redis_server()
    bus = await _start(buses, server.url, key_prefix)
    chats = [new_id() for _ in range(200)]
    for chat in chats:
        await bus.bus.watch(chat)
    for i, chat in enumerate(chats):  # and traffic on all of them
        await bus.bus.publish(protocol.message(chat, {"id": str(i)}))
    await bus.wait_events(chats[-1], 1)

    clients = await _client_list(server.url)
    subscribers = [c for c in clients if int(c["sub"]) > 0 or int(c["psub"]) > 0]
    assert [c["name"] for c in subscribers] == ["chatcast-pubsub"]
    assert int(subscribers[0]["sub"]) == len(chats) + 1  # the chats and the stop channel
    assert all(c["name"] in ("chatcast-cmd", "chatcast-pubsub", "probe") for c in clients)

    for chat in chats:
        await bus.bus.unwatch(chat)

    async def only_stop_channel_left() -> bool:
        clients = await _client_list(server.url)
        return [int(c["sub"]) for c in clients if c["name"] == "chatcast-pubsub"] == [1]

    await eventually(only_stop_channel_left)


async def _client_list(url: str) -> list[dict[str, str]]:
    probe: Redis = Redis.from_url(url, client_name="probe")
    try:
        clients: list[dict[str, str]] = await probe.client_list()
        return clients
    finally:
        await probe.aclose()


# -- Many appends at once ------------------------------------------------------------------


async def test_appends_of_one_loop_turn_share_a_round_trip_and_never_run_out_of_connections(
        redis_url: str, key_prefix: str, buses: list[RedisProbe]) -> None:
    """300 generations appending at the same moment through a pool of 2 connections: every
    append lands (no "Too many connections" surfacing as an outage), watchers get every
    event, and they travel in a few pipelined round trips instead of 300."""
    probe = RedisProbe(RedisBus(redis_url, prefix=key_prefix, max_connections=2))
    buses.append(probe)
    await probe.start()
    peer = await _start(buses, redis_url, key_prefix)
    chat = new_id()
    await peer.bus.watch(chat)
    gens = [new_id() for _ in range(300)]
    before = probe.bus.stats["round_trips"]

    stops = await asyncio.gather(*(probe.bus.append(protocol.delta(chat, gen, 1, f"t-{gen}"))
                                   for gen in gens))

    assert stops == [False] * len(gens)
    assert probe.bus.stats["round_trips"] - before <= 5
    await peer.wait_events(chat, len(gens))
    assert {e["gen"] for e in peer.events_of(chat)} == set(gens)
    for gen in gens[:5]:
        log_events = await peer.bus.read_log(gen, 0, chat=chat)
        assert log_events is not None and [e.text() for e in log_events] == \
            [protocol.delta(chat, gen, 1, f"t-{gen}").text()]


async def test_a_restarted_redis_gets_the_append_script_again(
        redis_server: ServerFactory, key_prefix: str, buses: list[RedisProbe]) -> None:
    """Scripts live in Redis's memory: after a restart the pipelined appends load theirs
    again instead of failing with NOSCRIPT."""
    server = redis_server()
    owner = await _start(buses, server.url, key_prefix)
    chat = new_id()
    await owner.bus.append(protocol.delta(chat, new_id(), 1, "before"))
    await asyncio.to_thread(server.restart)
    await owner.wait_reconnect()
    gen = new_id()
    assert await owner.bus.append(protocol.delta(chat, gen, 1, "after")) is False
    tail = await owner.bus.read_log(gen, 0, chat=chat)
    assert tail is not None and [e.seq for e in tail] == [1]
