"""RedisBus: the Bus for many processes, on one Redis (for a Redis Cluster see
redis_cluster.py, which builds on this).

Per generation a stream `{prefix}{gen}:log` holds the positioned events (entry id `<seq>-1`,
field `e` = the event's JSON); live events go to the channel `{prefix}chat:<chat>`; stop
requests set `{prefix}{gen}:stop` and are announced on `{prefix}stop`; leases are plain keys
`{prefix}{gen}:lease` with a TTL; the end of an answer whose final write waits for the
database is kept in `{prefix}{gen}:end` (the `done`'s JSON) until the log ends. Appending
is one round trip (a Lua script: XADD, PUBLISH, stop check); the appends of every
generation made in one turn of the event loop go out together in one script call, so under
load a token costs a fraction of a round trip. If Redis restarts empty, the owner's next
append raises `BusUnavailable` instead of starting a log with a hole, and the owner writes
the whole log again with `restore_log` (the script counts the log's entries, so a log that
lost only its tail is restored too); a reader whose cursor falls before the first entry of
a log gets None (snapshot), never a tail with a gap.

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
from collections.abc import Mapping
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
    ResyncHandler,
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
CONNECTION: dict[str, Any] = {"socket_connect_timeout": SOCKET_TIMEOUT_S,
                              "socket_keepalive": True}

# What the append script returns per append (the second value is whether a stop was
# requested, or for ERROR the error text); the script's returns name them in comments.
APPENDED = 1     # stored and published
REPEAT = 0       # an id not above the stream's last one (a retried call): neither stored nor
                 # published again
LOG_LOST = -1    # the log must hold what this process put in it but holds less: Redis lost
                 # it (a restart, or a failover that lost its tail), and the owner must
                 # restore it before anything else goes in
SEALED = -2      # the generation was ended elsewhere: nothing is added (stop is reported)
ERROR = -3       # Redis refused the XADD for another reason (the text says why)

#: One append, shared by the single-Redis script and the cluster function. Arguments: log,
#: stop and sealed keys; stream id `<seq>-1`; event JSON; channel; safety TTL (ms); must
#: hold (how many entries this process put in the log, which must still be there); is done
#: ('1': a done, which seals the log and is the only event a log sealed 'closed' still
#: takes); the publish command.
APPEND_ONE = """
local function append_one(log, stop, sealed, id, event, channel, ttl, must_hold, is_done, pub)
  local stopped = redis.call('EXISTS', stop)
  local s = redis.call('GET', sealed)
  if s == 'done' or (s and is_done ~= '1') then return -2, 1 end  -- SEALED
  if must_hold ~= '0' and redis.call('XLEN', log) < tonumber(must_hold) then
    return -1, stopped  -- LOG_LOST
  end
  local ok = redis.pcall('XADD', log, id, 'e', event)
  if type(ok) == 'table' and ok.err then
    if string.find(ok.err, 'equal or smaller', 1, true) then return 0, stopped end  -- REPEAT
    return -3, ok.err  -- ERROR
  end
  redis.call(pub, channel, event)
  redis.call('PEXPIRE', log, ttl)
  if is_done == '1' then redis.call('SET', sealed, 'done', 'PX', ttl) end
  return 1, stopped  -- APPENDED
end
"""

#: Every append of one loop turn in one script run (one round trip, one script call).
#: KEYS: log, stop, sealed of each append. ARGV[1]: safety TTL (ms), then per append: stream
#: id, event JSON, channel, must hold, is done. Returns {status, stop-or-error} per append.
_APPEND_BATCH = APPEND_ONE + """
local out = {}
for i = 0, #KEYS / 3 - 1 do
  local k, a = 3 * i, 2 + 5 * i
  out[2 * i + 1], out[2 * i + 2] = append_one(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3],
    ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[1], ARGV[a + 3], ARGV[a + 4], 'PUBLISH')
end
return out
"""

# The log's other uses, each one script run (atomic, one round trip; on a Redis Cluster a
# chat's keys share one slot, where redis-py's cluster transactions are not dependable).
# KEYS: log. ARGV: safety TTL (ms), then stream id and event JSON of each entry.
_RESTORE_LOG = """
redis.call('DEL', KEYS[1])
for i = 2, #ARGV, 2 do redis.call('XADD', KEYS[1], ARGV[i], 'e', ARGV[i + 1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""
# KEYS: log. ARGV: first stream id. The entries from there, or nil if there is no log.
_READ_LOG = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('XRANGE', KEYS[1], ARGV[1], '+')
"""
# KEYS: log, sealed, stop, recorded end. ARGV: retention (ms).
_END_LOG = """
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3], KEYS[4])
return 1
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
        #: The command client: a `Redis` here, a `RedisCluster` in the cluster bus (the same
        #: command API); `_sub_redis` the pub/sub client, if separate.
        self._redis: Any
        self._sub_redis: Redis | None
        self._make_clients(url, max_connections)
        self._append = self._redis.register_script(_APPEND_BATCH)
        self._drop_lease = self._redis.register_script(_DROP_LEASE)
        self._restore_log = self._redis.register_script(_RESTORE_LOG)
        self._read_log = self._redis.register_script(_READ_LOG)
        self._end_log = self._redis.register_script(_END_LOG)
        self._stop_channel = f"{prefix}stop".encode()
        self._chat_prefix = f"{prefix}chat:".encode()
        self._watched: set[str] = set()
        # Generations this process appended to and has not ended: their log must exist.
        # (how many entries this process put in each: the log must still hold them).
        self._open_logs: dict[str, int] = {}
        self._confirmations: dict[bytes, list[asyncio.Future[None]]] = {}
        # Appends waiting for the end of the current loop turn, and batches in flight.
        self._batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._batches: set[asyncio.Task[None]] = set()
        self._pubsub: PubSub | None = None
        self._listener: asyncio.Task[None] | None = None
        self._on_event: EventHandler | None = None
        self._on_stop_requested: StopRequestHandler | None = None
        self._on_reconnect: ReconnectHandler | None = None
        self._on_resync: ResyncHandler | None = None

    def _make_clients(self, url: str, max_connections: int) -> None:
        # One retry: a pooled connection that died with a Redis restart is replaced at once.
        # Every command is safe to repeat (appends of a seen seq are ignored by the script).
        # A blocking pool: with more commands in flight than connections (hundreds of
        # generations appending at once), a command waits for a connection rather than
        # failing ("Too many connections" is not "Redis is down").
        pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=SOCKET_TIMEOUT_S,
            client_name="chatcast-cmd", socket_timeout=SOCKET_TIMEOUT_S,
            health_check_interval=15, retry=Retry(NoBackoff(), 1), **CONNECTION)
        self._redis = Redis.from_pool(pool)
        # The pub/sub connection does not retry by itself: the listener owns reconnecting.
        self._sub_redis = Redis.from_url(
            url, client_name="chatcast-pubsub", socket_timeout=SOCKET_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0), **CONNECTION)

    @property
    def client(self) -> Any:
        """The command connection pool, shared with other Redis users of this process
        (e.g. RedisLimits); the bus owns and closes it."""
        return self._redis

    # Lifecycle ---------------------------------------------------------------------------

    async def start(self, on_event: EventHandler, on_stop_requested: StopRequestHandler, *,
                    on_reconnect: ReconnectHandler | None = None,
                    on_resync: ResyncHandler | None = None) -> None:
        """Connect (or raise BusUnavailable naming REDIS_URL; BusMisconfigured if it names
        a Redis Cluster node or a replica) and start the listener. `on_reconnect` is called
        after the pub/sub connection was lost and is back."""
        self._on_event, self._on_reconnect = on_event, on_reconnect
        self._on_stop_requested, self._on_resync = on_stop_requested, on_resync
        try:
            await self._redis.ping()
            problem = mode_problem(await self._redis.info("replication"),
                                   await self._redis.info("cluster"), cluster=False)
            if problem:
                await self._close_clients()
                raise BusMisconfigured(f"chatcast: REDIS_URL {redacted_url(self.url)} {problem}")
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
        gen, chat = str(event.gen), event.chat
        call = (self._key(chat, gen, "log"), self._key(chat, gen, "stop"),
                self._key(chat, gen, "sealed"), f"{event.seq}-1", event.encode(),
                self._chat_channel(chat), self._open_logs.get(gen, 0),
                int(event.type == "done"))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._batch.append((call, future))
        if len(self._batch) == 1:  # the first of this loop turn: send them all at its end
            asyncio.get_running_loop().call_soon(self._send_batch)
        status, detail = await future
        self.stats["appends"] += 1
        if status == SEALED:
            raise LogSealed(f"generation {gen} was ended elsewhere")
        if status == LOG_LOST:
            raise BusUnavailable(f"Redis lost the log of generation {gen}; restore it")
        if status == ERROR:
            raise BusUnavailable(f"Redis refused an append to generation {gen}: {detail!r}")
        if status == REPEAT:
            self.stats["duplicates"] += 1
        else:
            self._open_logs[gen] = self._open_logs.get(gen, 0) + 1
        return bool(detail)

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, []
        task = asyncio.get_running_loop().create_task(self._run_batch(batch))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _run_batch(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        """Appends made in the same turn of the event loop go out in one script call: one
        round trip, one connection and one script run for all of them."""
        try:
            results = await self._append_all([call for call, _ in batch])
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

    async def _append_all(self, calls: list[tuple[Any, ...]]) -> list[Any]:
        """Run the appends `calls` (see `append`); their (status, detail) pairs in order."""
        keys = [key for call in calls for key in call[:3]]
        args = [int(ACTIVE_LOG_TTL_S * 1000), *(arg for call in calls for arg in call[3:])]
        try:
            flat = await self._call(self._redis.evalsha(self._append.sha, len(keys), *keys,
                                                        *args))
        except NoScriptError:
            # Redis restarted (or is another server): load the script, run them again.
            # Repeats are safe: an id already in the log is not added twice.
            self._append.sha = await self._call(self._redis.script_load(_APPEND_BATCH))
            flat = await self._call(self._redis.evalsha(self._append.sha, len(keys), *keys,
                                                        *args))
        return pairs(flat)

    async def restore_log(self, gen: str, entries: list[LogEntry], *, chat: str) -> None:
        """Replace the log with `entries` in one script run (one round trip)."""
        args: list[Any] = [int(ACTIVE_LOG_TTL_S * 1000)]
        for seq, raw in entries:
            args += [f"{seq}-1", raw]
        await self._call(self._restore_log([self._key(chat, gen, "log")], args))
        if entries:
            self._open_logs[gen] = len(entries)
        else:  # nothing was written: the next append starts the log afresh
            self._open_logs.pop(gen, None)

    async def publish(self, event: Event) -> None:
        await self._call(self._redis.publish(self._chat_channel(event.chat), event.encode()))
        self.stats["publishes"] += 1

    async def read_log(self, gen: str, after_seq: int, *, chat: str) -> list[Event] | None:
        entries = await self._call(self._read_log([self._key(chat, gen, "log")],
                                                  [f"{after_seq + 1}-0"]))
        self.stats["reads"] += 1
        if entries is None:
            return None
        # Each entry is [id, [b"e", event JSON]] (the only field).
        events = [Event.decode(fields[1]) for _id, fields in entries]
        if events and events[0].seq > after_seq + 1:
            return None  # the log starts after the cursor: Redis lost its beginning
        return events

    async def seal(self, gen: str, *, chat: str) -> None:
        key = self._key(chat, gen, "sealed")
        await self._call(self._redis.set(key, "closed", px=int(ACTIVE_LOG_TTL_S * 1000), nx=True))

    async def end_log(self, gen: str, *, chat: str) -> None:
        self._open_logs.pop(gen, None)
        keys = [self._key(chat, gen, kind) for kind in ("log", "sealed", "stop", "end")]
        await self._call(self._end_log(keys, [max(int(self.retention_s * 1000), 1)]))

    async def record_end(self, done: Event) -> None:
        await self._call(self._redis.set(self._key(done.chat, str(done.gen), "end"),
                                         done.encode(), px=int(ACTIVE_LOG_TTL_S * 1000)))

    async def recorded_end(self, gen: str, *, chat: str) -> Event | None:
        raw = await self._call(self._redis.get(self._key(chat, gen, "end")))
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

    async def request_stop(self, gen: str, *, chat: str) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(self._key(chat, gen, "stop"), 1, ex=STOP_KEY_TTL_S)
        pipe.publish(self._stop_channel, gen)
        await self._call(pipe.execute())

    async def refresh_lease(self, gen: str, ttl_s: float, *, chat: str) -> None:
        await self._call(self._redis.set(self._key(chat, gen, "lease"), self.owner,
                                         px=max(int(ttl_s * 1000), 1)))

    async def refresh_leases(self, leases: Mapping[str, str], ttl_s: float) -> None:
        """One round trip for all of them (one Redis: one part)."""
        pipe = self._redis.pipeline(transaction=False)
        for gen, chat in leases.items():
            pipe.set(self._key(chat, gen, "lease"), self.owner, px=max(int(ttl_s * 1000), 1))
        await self._call(pipe.execute())

    async def lease_owner(self, gen: str, *, chat: str) -> str | None:
        owner = await self._call(self._redis.get(self._key(chat, gen, "lease")))
        return owner.decode() if owner is not None else None

    async def drop_lease(self, gen: str, *, chat: str) -> None:
        await self._call(self._drop_lease([self._key(chat, gen, "lease")], [self.owner]))

    # Internals -----------------------------------------------------------------------------

    def _key(self, chat: str, gen: str, kind: str) -> str:
        """One Redis holds everything: the chat is not part of the name."""
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
        assert self._sub_redis is not None
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
            if client is not None:
                with contextlib.suppress(*_DOWN):
                    await client.aclose()


class BusMisconfigured(ValueError):
    """REDIS_URL and CHATCAST_REDIS_CLUSTER do not match the Redis they point at: refused at
    start-up (a plain client on a cluster node fails for most chats; a replica refuses
    writes)."""


def mode_problem(replication: dict[str, Any], cluster_info: dict[str, Any], *,
                 cluster: bool) -> str | None:
    """What is wrong with a node (its INFO replication and INFO cluster) for the mode asked
    for, or None. In cluster mode a seed may be a replica: the client finds the masters."""
    enabled = str(cluster_info.get("cluster_enabled", 0)) == "1"
    if cluster and not enabled:
        return ("is not a Redis Cluster node, but CHATCAST_REDIS_CLUSTER=true: "
                "unset it for a single Redis, or name cluster nodes")
    if not cluster and enabled:
        return ("is a Redis Cluster node: set CHATCAST_REDIS_CLUSTER=true (REDIS_URL then "
                "names one or more seed nodes, comma-separated)")
    if not cluster and replication.get("role") != "master":
        return "is a replica (read-only): point REDIS_URL at the master"
    return None


def pairs(flat: list[Any]) -> list[tuple[int, Any]]:
    """The append script's flat reply {status, detail, status, detail, ...} as pairs."""
    return [(int(flat[i]), flat[i + 1]) for i in range(0, len(flat), 2)]


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
