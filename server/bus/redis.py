"""RedisBus: the Bus for many processes, on one Redis (or a Cluster: keys carry `{gen}` tags).

Per generation a stream `{prefix}{gen}:log` holds the positioned events (entry id `<seq>-1`,
field `e` = the event's JSON); live events go to the channel `{prefix}chat:<chat>`; stop
requests set `{prefix}{gen}:stop` and are announced on `{prefix}stop`; leases are plain keys
`{prefix}{gen}:lease` with a TTL; the end of an answer whose final write waits for the
database is kept in `{prefix}{gen}:end` (the `done`'s JSON) until the log ends. Appending
is one round trip (a Lua script: XADD, PUBLISH, stop check), so a token costs one command on
the hot path. If Redis restarts empty, the owner's next append raises `BusUnavailable`
instead of starting a log with a hole, and the owner writes the whole log again with
`restore_log`; a reader whose cursor falls before the first entry of a log gets None
(snapshot), never a tail with a gap.

Each process has one command connection pool and exactly one pub/sub connection, read by a
listener task this bus owns. If Redis goes away, commands raise `BusUnavailable` within
seconds, and the listener reconnects with backoff, subscribes again to every watched chat and
the stop channel, and calls `on_reconnect` so the hub can have subscribers resume (live events
published while the connection was down are gone; the logs hold what still exists).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chatcast.core.protocol import Event
from chatcast.core.retry import Backoff, retry
from chatcast.server.bus.base import (
    Bus,
    BusUnavailable,
    EventHandler,
    LogEntry,
    LogSealed,
    ReconnectHandler,
    StopRequestHandler,
)

log = logging.getLogger("chatcast.bus")


SOCKET_TIMEOUT_S = 2.0      # a command that gets no answer in this time fails
PING_TIMEOUT_S = 1.0        # /readyz must answer fast
STOP_KEY_TTL_S = 6 * 3600   # a stop request outlives any generation
ACTIVE_LOG_TTL_S = 24 * 3600  # safety net for logs whose generation nobody ended
IDLE_PING_S = 5.0           # a silent pub/sub connection is pinged after this long ...
PONG_TIMEOUT_S = 3.0        # ... and declared dead if nothing comes back in this time
# The listener reconnects after 0.1 s, then backs off to a try every 5 s.
LISTENER_BACKOFF = Backoff(base_s=0.1, max_s=5.0)
_DOWN = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)

# What the append script returns first (the second value is whether a stop was requested);
# the script's returns name them in comments.
APPENDED = 1     # stored and published
REPEAT = 0       # an id not above the stream's last one (a retried call): neither stored nor
                 # published again
LOG_LOST = -1    # the log must exist (this process appended to it before) but does not:
                 # Redis lost it, and the owner must restore it before anything else goes in
SEALED = -2      # the generation was ended elsewhere: nothing is added (stop is reported)

# KEYS: log, stop, sealed. ARGV: stream id, event JSON, chat channel, safety TTL (ms), must
# exist ('1': this process appended before), is done ('1': a done, which seals the log and
# is the only event a log sealed 'closed' still takes). Returns {status, stop_requested}
# with status one of the four above.
_APPEND = """
local stopped = redis.call('EXISTS', KEYS[2])
local sealed = redis.call('GET', KEYS[3])
if sealed == 'done' or (sealed and ARGV[6] ~= '1') then return {-2, 1} end  -- SEALED
if ARGV[5] == '1' and redis.call('EXISTS', KEYS[1]) == 0 then
  return {-1, stopped}  -- LOG_LOST
end
local ok = redis.pcall('XADD', KEYS[1], ARGV[1], 'e', ARGV[2])
if type(ok) == 'table' and ok.err then
  if string.find(ok.err, 'equal or smaller', 1, true) then return {0, stopped} end  -- REPEAT
  return redis.error_reply(ok.err)
end
redis.call('PUBLISH', ARGV[3], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if ARGV[6] == '1' then redis.call('SET', KEYS[3], 'done', 'PX', ARGV[4]) end
return {1, stopped}  -- APPENDED
"""

# KEYS: lease. ARGV: owner. Delete the lease only if it is still ours.
_DROP_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisBus(Bus):
    shared = True

    def __init__(self, url: str, *, retention_s: float = 900.0, prefix: str = "cc:",
                 max_connections: int = 64) -> None:
        self.url = url
        self.retention_s = retention_s
        self.prefix = prefix
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        #: Calls made, one round trip each (for benchmarks and metrics).
        self.stats: dict[str, int] = dict.fromkeys(
            ("appends", "duplicates", "publishes", "reads", "round_trips", "reconnects"), 0)
        common: dict[str, Any] = {"socket_connect_timeout": SOCKET_TIMEOUT_S,
                                  "socket_keepalive": True}
        # One retry: a pooled connection that died with a Redis restart is replaced at once.
        # Every command is safe to repeat (appends of a seen seq are ignored by the script).
        # A blocking pool: with more commands in flight than connections (hundreds of
        # generations appending at once), a command waits for a connection rather than
        # failing ("Too many connections" is not "Redis is down").
        pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=SOCKET_TIMEOUT_S,
            client_name="chatcast-cmd", socket_timeout=SOCKET_TIMEOUT_S,
            health_check_interval=15, retry=Retry(NoBackoff(), 1), **common)
        self._redis: Redis = Redis.from_pool(pool)
        # The pub/sub connection does not retry by itself: the listener owns reconnecting.
        self._sub_redis: Redis = Redis.from_url(
            url, client_name="chatcast-pubsub", socket_timeout=SOCKET_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0), **common)
        self._append = self._redis.register_script(_APPEND)
        self._drop_lease = self._redis.register_script(_DROP_LEASE)
        self._stop_channel = f"{prefix}stop".encode()
        self._chat_prefix = f"{prefix}chat:".encode()
        self._watched: set[str] = set()
        # Generations this process appended to and has not ended: their log must exist.
        self._open_logs: set[str] = set()
        self._confirmations: dict[bytes, list[asyncio.Future[None]]] = {}
        # Appends waiting for the end of the current loop turn, and batches in flight.
        self._batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._batches: set[asyncio.Task[None]] = set()
        self._pubsub: PubSub | None = None
        self._listener: asyncio.Task[None] | None = None
        self._on_event: EventHandler | None = None
        self._on_stop_requested: StopRequestHandler | None = None
        self._on_reconnect: ReconnectHandler | None = None

    @property
    def client(self) -> Redis:
        """The command connection pool, shared with other Redis users of this process
        (e.g. RedisLimits); the bus owns and closes it."""
        return self._redis

    # Lifecycle ---------------------------------------------------------------------------

    async def start(self, on_event: EventHandler, on_stop_requested: StopRequestHandler, *,
                    on_reconnect: ReconnectHandler | None = None) -> None:
        """Connect (or raise BusUnavailable naming REDIS_URL) and start the listener.
        `on_reconnect` is called after the pub/sub connection was lost and is back."""
        self._on_event, self._on_reconnect = on_event, on_reconnect
        self._on_stop_requested = on_stop_requested
        try:
            await self._redis.ping()
            self._pubsub = await self._open_pubsub()
        except _DOWN as exc:
            await self._close_clients()
            raise BusUnavailable(
                f"cannot reach Redis at {redacted_url(self.url)} (REDIS_URL): {exc}") from exc
        self._listener = asyncio.create_task(self._listen(), name="redis-bus-listener")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        for task in list(self._batches):
            task.cancel()
        await asyncio.gather(*self._batches, return_exceptions=True)
        await self._drop_pubsub()
        await self._close_clients()

    async def ping(self) -> bool:
        """True when commands get answers and the pub/sub connection is up."""
        if self._pubsub is None:
            return False
        try:
            async with asyncio.timeout(PING_TIMEOUT_S):
                return bool(await self._redis.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    # The log -----------------------------------------------------------------------------

    async def append(self, event: Event) -> bool:
        gen = str(event.gen)
        call = (self._key(gen, "log"), self._key(gen, "stop"), self._key(gen, "sealed"),
                f"{event.seq}-1", event.encode(), self._chat_channel(event.chat),
                int(ACTIVE_LOG_TTL_S * 1000), int(gen in self._open_logs),
                int(event.type == "done"))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._batch.append((call, future))
        if len(self._batch) == 1:  # the first of this loop turn: send them all at its end
            asyncio.get_running_loop().call_soon(self._send_batch)
        status, stopped = await future
        self.stats["appends"] += 1
        if status == SEALED:
            raise LogSealed(f"generation {gen} was ended elsewhere")
        if status == LOG_LOST:
            raise BusUnavailable(f"Redis lost the log of generation {gen}; restore it")
        if status == REPEAT:
            self.stats["duplicates"] += 1
        self._open_logs.add(gen)
        return bool(stopped)

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, []
        task = asyncio.get_running_loop().create_task(self._run_batch(batch))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _run_batch(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        """Appends made in the same turn of the event loop go out in one pipeline: one round
        trip and one connection for all of them (each is still its own script run)."""
        try:
            results = await self._pipeline([call for call, _ in batch])
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _pipeline(self, calls: list[tuple[Any, ...]]) -> list[Any]:
        for attempt in range(2):
            pipe = self._redis.pipeline(transaction=False)
            for call in calls:
                pipe.evalsha(self._append.sha, 3, *call)
            results: list[Any] = await self._call(pipe.execute(raise_on_error=False))
            if attempt == 0 and any(isinstance(r, NoScriptError) for r in results):
                # Redis restarted (or is another server): load the script, run them again.
                # Repeats are safe: an id already in the log is not added twice.
                self._append.sha = await self._call(self._redis.script_load(_APPEND))
                continue
            return results
        return results

    async def restore_log(self, gen: str, entries: list[LogEntry]) -> None:
        """Replace the log with `entries` in one transaction (one round trip)."""
        key = self._key(gen, "log")
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(key)
        for seq, raw in entries:
            pipe.xadd(key, {"e": raw}, id=f"{seq}-1")
        pipe.pexpire(key, int(ACTIVE_LOG_TTL_S * 1000))
        await self._call(pipe.execute())
        if entries:
            self._open_logs.add(gen)
        else:  # nothing was written: the next append starts the log afresh
            self._open_logs.discard(gen)

    async def publish(self, event: Event) -> None:
        await self._call(self._redis.publish(self._chat_channel(event.chat), event.encode()))
        self.stats["publishes"] += 1

    async def read_log(self, gen: str, after_seq: int) -> list[Event] | None:
        key = self._key(gen, "log")
        pipe = self._redis.pipeline(transaction=True)
        pipe.exists(key)
        pipe.xrange(key, min=f"{after_seq + 1}-0", max="+")
        exists, entries = await self._call(pipe.execute())
        self.stats["reads"] += 1
        if not exists:
            return None
        events = [Event.decode(fields[b"e"]) for _id, fields in entries]
        if events and events[0].seq > after_seq + 1:
            return None  # the log starts after the cursor: Redis lost its beginning
        return events

    async def seal(self, gen: str) -> None:
        key = self._key(gen, "sealed")
        await self._call(self._redis.set(key, "closed", px=int(ACTIVE_LOG_TTL_S * 1000), nx=True))

    async def end_log(self, gen: str) -> None:
        self._open_logs.discard(gen)
        pipe = self._redis.pipeline(transaction=True)
        pipe.pexpire(self._key(gen, "log"), max(int(self.retention_s * 1000), 1))
        pipe.pexpire(self._key(gen, "sealed"), max(int(self.retention_s * 1000), 1))
        pipe.delete(self._key(gen, "stop"), self._key(gen, "end"))
        await self._call(pipe.execute())

    async def record_end(self, done: Event) -> None:
        await self._call(self._redis.set(self._key(str(done.gen), "end"), done.encode(),
                                         px=int(ACTIVE_LOG_TTL_S * 1000)))

    async def recorded_end(self, gen: str) -> Event | None:
        raw = await self._call(self._redis.get(self._key(gen, "end")))
        return Event.decode(raw) if raw is not None else None

    # Live fan-out --------------------------------------------------------------------------

    async def watch(self, chat: str) -> None:
        """Returns once Redis confirmed the subscription (so nothing published after this
        returns can be missed); raises BusUnavailable while the pub/sub link is down."""
        channel = self._chat_channel(chat)
        pubsub = self._pubsub
        if pubsub is None:
            raise BusUnavailable("Redis pub/sub connection is down; reconnecting")
        self._watched.add(chat)
        confirmed = asyncio.get_running_loop().create_future()
        waiting = self._confirmations.setdefault(channel, [])
        waiting.append(confirmed)
        try:
            async with asyncio.timeout(SOCKET_TIMEOUT_S):
                await pubsub.subscribe(channel)
                await confirmed
        except (*_DOWN, BusUnavailable) as exc:
            self._watched.discard(chat)
            raise BusUnavailable(f"cannot subscribe to chat {chat} on Redis: {exc}") from exc
        finally:
            if confirmed in waiting:
                waiting.remove(confirmed)

    async def unwatch(self, chat: str) -> None:
        self._watched.discard(chat)
        pubsub = self._pubsub
        if pubsub is not None:
            # If this fails the link is down, and the listener reconnects to watched chats only.
            with contextlib.suppress(*_DOWN):
                await pubsub.unsubscribe(self._chat_channel(chat))

    # Stop requests and leases --------------------------------------------------------------

    async def request_stop(self, gen: str) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(self._key(gen, "stop"), 1, ex=STOP_KEY_TTL_S)
        pipe.publish(self._stop_channel, gen)
        await self._call(pipe.execute())

    async def refresh_lease(self, gen: str, ttl_s: float) -> None:
        await self._call(self._redis.set(self._key(gen, "lease"), self.owner,
                                         px=max(int(ttl_s * 1000), 1)))

    async def lease_owner(self, gen: str) -> str | None:
        owner = await self._call(self._redis.get(self._key(gen, "lease")))
        return owner.decode() if owner is not None else None

    async def drop_lease(self, gen: str) -> None:
        await self._call(self._drop_lease([self._key(gen, "lease")], [self.owner]))

    # Internals -----------------------------------------------------------------------------

    def _key(self, gen: str, kind: str) -> str:
        return f"{self.prefix}{{{gen}}}:{kind}"

    def _chat_channel(self, chat: str) -> bytes:
        return self._chat_prefix + chat.encode()

    async def _call(self, command: Any) -> Any:
        """Await one Redis round trip; a Redis that cannot be reached is BusUnavailable."""
        self.stats["round_trips"] += 1
        try:
            return await command
        except _DOWN as exc:
            raise BusUnavailable(f"Redis unavailable: {exc}") from exc

    async def _open_pubsub(self) -> PubSub:
        """A new pub/sub connection subscribed to the stop channel and every watched chat,
        returned once Redis confirmed all of them."""
        pubsub = self._sub_redis.pubsub()
        try:
            channels = [self._stop_channel, *(self._chat_channel(c) for c in self._watched)]
            async with asyncio.timeout(SOCKET_TIMEOUT_S * 2):
                await pubsub.subscribe(*channels)
                pending = set(channels)
                while pending:
                    message = await pubsub.get_message(timeout=SOCKET_TIMEOUT_S)
                    if message is not None and message["type"] == "subscribe":
                        pending.discard(message["channel"])
                    elif message is not None:
                        self._handle(message)
        except BaseException:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            raise
        return pubsub

    async def _listen(self) -> None:
        """Deliver messages for this process's life: after a lost connection, reconnect
        with backoff (until it works or the bus closes) and have subscribers resume."""
        while True:
            if self._pubsub is None:
                self._pubsub = await retry(self._open_pubsub, retry_on=(*_DOWN, RedisError),
                                           backoff=LISTENER_BACKOFF, attempts=None,
                                           on_retry=_still_down)
                self.stats["reconnects"] += 1
                log.warning("Redis pub/sub reconnected; %d chats subscribed again",
                            len(self._watched))
                self._call_reconnect_hook()
            try:
                await self._read(self._pubsub)
            except (*_DOWN, RedisError) as exc:
                await self._drop_pubsub(exc)
                log.warning("Redis pub/sub connection lost (%s); reconnecting", exc)
                await asyncio.sleep(LISTENER_BACKOFF.base_s)
            except Exception as exc:  # never the end of live delivery: start afresh
                await self._drop_pubsub(exc)
                log.exception("Redis pub/sub listener failed; reconnecting")
                await asyncio.sleep(LISTENER_BACKOFF.base_s)

    async def _read(self, pubsub: PubSub) -> None:
        """Deliver messages until the connection fails. A silent connection is pinged, and
        one that does not answer is treated as lost (a peer that vanished sends no FIN)."""
        loop = asyncio.get_running_loop()
        heard = loop.time()
        pinged: float | None = None
        while True:
            message = await pubsub.get_message(timeout=1.0)
            now = loop.time()
            if message is not None:
                heard, pinged = now, None
                self._handle(message)
            elif pinged is not None and now - pinged > PONG_TIMEOUT_S:
                raise RedisConnectionError("no answer to PING on the pub/sub connection")
            elif pinged is None and now - heard > IDLE_PING_S:
                await pubsub.ping()
                pinged = now

    def _handle(self, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        try:
            if kind == "subscribe":
                waiting = self._confirmations.get(channel)
                if waiting:
                    future = waiting.pop(0)
                    if not future.done():
                        future.set_result(None)
                if not waiting:
                    self._confirmations.pop(channel, None)
            elif kind != "message":
                return
            elif channel == self._stop_channel:
                if self._on_stop_requested is not None:
                    self._on_stop_requested(message["data"].decode())
            else:
                chat = channel[len(self._chat_prefix):].decode()
                if chat in self._watched and self._on_event is not None:
                    self._on_event(Event.decode(message["data"]))
        except Exception:
            log.exception("bus handler failed", extra={"channel": channel})

    def _call_reconnect_hook(self) -> None:
        if self._on_reconnect is None:
            return
        try:
            self._on_reconnect()
        except Exception:
            log.exception("on_reconnect handler failed")

    async def _drop_pubsub(self, exc: BaseException | None = None) -> None:
        pubsub, self._pubsub = self._pubsub, None
        for waiting in self._confirmations.values():
            for future in waiting:
                if not future.done():
                    future.set_exception(BusUnavailable(f"Redis pub/sub lost: {exc}"))
        self._confirmations.clear()
        if pubsub is not None:
            with contextlib.suppress(*_DOWN):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _close_clients(self) -> None:
        for client in (self._redis, self._sub_redis):
            with contextlib.suppress(*_DOWN):
                await client.aclose()


def _still_down(attempt: int, exc: BaseException, pause: float) -> None:
    log.debug("Redis still unreachable (%s); next try in %.1f s", exc, pause)


def redacted_url(url: str) -> str:
    """The URL without its password (error messages and logs must not carry secrets)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))
