"""RedisClusterBus: the Redis bus on a Redis Cluster (`CHATCAST_REDIS_CLUSTER=true`, REDIS_URL
naming one or more seed nodes, comma-separated).

One hash slot per chat: every key of a chat's generations is `{prefix}{<chat>}:<gen>:<kind>`
and the chat's sharded channel is `{prefix}chat:{<chat>}`, so they share the chat's hash tag.
The append script therefore appends, SPUBLISHes (in order: one channel, one node) and checks
for a stop in one run on one node; chats spread over the shards, and adding shards adds
fan-out capacity (SPUBLISH reaches only the node of the slot, where classic PUBLISH goes to
every node).

- Appends of one loop turn go out as one function call (FCALL) per master, for all the
  generations whose chats that master serves (the function is flagged
  `allow-cross-slot-keys` and finds its keys in its arguments). If a node answers with a
  redirect (a slot migrating or moved, a failover under way) or is unreachable, the slot map
  is read again and the appends concerned are sent again where their slots are now (an
  append already made is a repeat and is neither stored nor published twice); if that still
  fails, they raise BusUnavailable, which the owner treats as an outage (it streams on and
  writes the log again once the bus is back).
- A stop request sets the stop key and SPUBLISHes a stop message on the chat's channel, which
  the owner listens to while it runs a generation of the chat (no broadcast to every node).
- Live delivery: `ShardedSubscriptions` (redis_shards.py), one connection and one reader per
  master, following the slot map; after a slot migration or a failover only the chats
  concerned are resynchronised (`on_resync`), from their logs.
- MOVED, ASK, TRYAGAIN, CLUSTERDOWN and an uncovered slot count as the bus being unavailable
  (BusUnavailable), like a connection error: transient.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MasterDownError,
    MovedError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)

from chatcast.core.protocol import Event
from chatcast.server.bus.base import (
    BusUnavailable,
    EventHandler,
    ReconnectHandler,
    ResyncHandler,
    StopRequestHandler,
)
from chatcast.server.bus.redis import (
    _DOWN,
    ACTIVE_LOG_TTL_S,
    APPEND_ONE,
    CONNECTION,
    SOCKET_TIMEOUT_S,
    STOP_KEY_TTL_S,
    BusMisconfigured,
    RedisBus,
    mode_problem,
    pairs,
    redacted_url,
)
from chatcast.server.bus.redis_internals import CLOSED_UNDER, refresh_slot_map
from chatcast.server.bus.redis_shards import ShardedSubscriptions

log = logging.getLogger("chatcast.bus")

#: What a cluster answers while slots move or a failover is under way: try again soon.
REDIRECTS = (MovedError, AskError, TryAgainError, ClusterDownError, MasterDownError,
             ClusterError, SlotNotCoveredError)
# (A command whose connection redis-py closed under it: see redis_internals.CLOSED_UNDER.)
TRANSIENT = (*_DOWN, *REDIRECTS, RedisClusterException, *CLOSED_UNDER)
#: Tries of a batch of appends whose node failed (the map is read again before each).
APPEND_TRIES = 3
FUNCTION_LIBRARY = "chatcast"
APPEND_FUNCTION = "chatcast_append"
#: Marks a stop request on a chat's channel (an event's JSON starts with '{').
STOP_MESSAGE = b"!stop "

# Per append: log, stop, sealed, stream id, event JSON, channel, must hold, is done (the
# keys are arguments: one call carries the appends of many slots of one node).
_LIBRARY = f"""#!lua name={FUNCTION_LIBRARY}
{APPEND_ONE}
redis.register_function{{function_name='{APPEND_FUNCTION}', callback=function(keys, args)
  local out = {{}}
  for i = 0, (#args - 1) / 8 - 1 do
    local a = 2 + 8 * i
    out[2 * i + 1], out[2 * i + 2] = append_one(args[a], args[a + 1], args[a + 2],
      args[a + 3], args[a + 4], args[a + 5], args[1], args[a + 6], args[a + 7], 'SPUBLISH')
  end
  return out
end, flags={{'allow-cross-slot-keys'}}}}
"""

# KEYS: stop. ARGV: TTL (s), channel, message. The flag and its announcement, on the chat's
# node.
_REQUEST_STOP = """
redis.call('SET', KEYS[1], 1, 'EX', ARGV[1])
redis.call('SPUBLISH', ARGV[2], ARGV[3])
return 1
"""


def seed_nodes(url: str) -> list[ClusterNode]:
    """The seed nodes named by REDIS_URL (`redis://h1:p1,redis://h2:p2` or `redis://h1:p1,h2:p2`)."""
    nodes = []
    for part in (p.strip() for p in url.split(",")):
        if not part:
            continue
        parts = urlsplit(part if "://" in part else f"redis://{part}")
        nodes.append(ClusterNode(parts.hostname or "127.0.0.1", parts.port or 6379))
    if not nodes:
        raise BusMisconfigured("chatcast: REDIS_URL names no Redis Cluster node")
    return nodes


class RedisClusterBus(RedisBus):
    def __init__(self, url: str, *, retention_s: float = 900.0, prefix: str = "cc:",
                 max_connections: int = 64) -> None:
        super().__init__(url, retention_s=retention_s, prefix=prefix,
                         max_connections=max_connections)
        self._stop_script = self._redis.register_script(_REQUEST_STOP)
        self._shards: ShardedSubscriptions | None = None
        self._held: dict[str, set[str]] = {}  # chat → its generations this process runs
        self._channels_up = False

    def _make_clients(self, url: str, max_connections: int) -> None:
        first = urlsplit(url.split(",")[0].strip())
        self._redis = RedisCluster(
            startup_nodes=seed_nodes(url), username=first.username, password=first.password,
            max_connections=max_connections, client_name="chatcast-cmd",
            socket_timeout=SOCKET_TIMEOUT_S, retry=Retry(ExponentialBackoff(0.5, 0.05), 2),
            **CONNECTION)
        self._sub_redis = None
        self._auth: dict[str, Any] = {"username": first.username, "password": first.password}

    # Lifecycle ---------------------------------------------------------------------------

    async def start(self, on_event: EventHandler, on_stop_requested: StopRequestHandler, *,
                    on_reconnect: ReconnectHandler | None = None,
                    on_resync: ResyncHandler | None = None) -> None:
        self._on_event, self._on_reconnect = on_event, on_reconnect
        self._on_stop_requested, self._on_resync = on_stop_requested, on_resync
        try:
            await self._check_seed()
            await self._redis.initialize()
            await self._load_library()
        except BusMisconfigured:
            await self._close_clients()
            raise
        except (*TRANSIENT, ResponseError) as exc:
            await self._close_clients()
            raise BusUnavailable(f"cannot reach the Redis Cluster at {redacted_url(self.url)} "
                                 f"(REDIS_URL): {exc}") from exc
        seeds = [(n.host, int(n.port)) for n in self._redis.get_nodes()]
        self._shards = ShardedSubscriptions(seeds, self._on_message, self._moved,
                                            {**CONNECTION, **self._auth,
                                             "socket_timeout": SOCKET_TIMEOUT_S})
        self._channels_up = True

    async def _check_seed(self) -> None:
        """Refuse a seed that is not a cluster node (a plain Redis, or its replica)."""
        errors: list[str] = []
        for node in seed_nodes(self.url):
            client = Redis(host=node.host, port=int(node.port), **CONNECTION, **self._auth,
                           socket_timeout=SOCKET_TIMEOUT_S)
            try:
                problem = mode_problem(await client.info("replication"),
                                       await client.info("cluster"), cluster=True)
            except (RedisError, OSError) as exc:
                errors.append(f"{node.name}: {exc}")
                continue
            finally:
                await client.aclose()
            if problem:
                raise BusMisconfigured(f"chatcast: REDIS_URL node {node.name} {problem}")
            return
        raise BusUnavailable(f"no seed node reachable: {'; '.join(errors)}")

    async def _load_library(self) -> None:
        await self._redis.execute_command("FUNCTION LOAD", "REPLACE", _LIBRARY,
                                          target_nodes=RedisCluster.PRIMARIES)

    async def close(self) -> None:
        for task in list(self._batches):
            task.cancel()
        await asyncio.gather(*self._batches, return_exceptions=True)
        if self._shards is not None:
            await self._shards.close()
        await self._close_clients()

    async def ping(self) -> bool:
        """True when the cluster answers and every subscription is where its slot is."""
        if self._shards is None or not self._shards.up:
            return False
        try:
            async with asyncio.timeout(1.0):
                return bool(await self._redis.ping(target_nodes=RedisCluster.PRIMARIES))
        except (*TRANSIENT, RedisError):
            return False

    # The log -----------------------------------------------------------------------------

    async def append(self, event: Event) -> bool:
        gen = str(event.gen)
        if event.type != "done" and gen not in self._open_logs:
            # This process produces `gen`: from now on its stop requests must reach us.
            await self._hold(event.chat, gen)
        return await super().append(event)

    async def _append_all(self, calls: list[tuple[Any, ...]]) -> list[Any]:
        """One FCALL per master for the appends of the chats it serves; appends whose node
        redirected or failed are sent again after the slot map was read again."""
        results: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        error: BaseException | None = None
        for attempt in range(APPEND_TRIES):
            if attempt:
                await asyncio.sleep(0.05 * attempt)
                with contextlib.suppress(*TRANSIENT):
                    await refresh_slot_map(self._redis)
            try:
                groups = self._by_node(calls, pending)
            except TRANSIENT as exc:
                error = exc
                continue
            failed: list[int] = []
            outcomes = await asyncio.gather(*(self._fcall(node, [calls[i] for i in group])
                                              for node, group in groups.values()),
                                            return_exceptions=True)
            for (_node, group), outcome in zip(groups.values(), outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    if not isinstance(outcome, Exception):
                        raise outcome
                    if isinstance(outcome, ResponseError) and "not found" in str(outcome):
                        with contextlib.suppress(*TRANSIENT):  # a node restarted empty
                            await self._load_library()
                    error = outcome
                    failed.extend(group)
                    continue
                for index, result in zip(group, outcome, strict=True):
                    results[index] = result
            if not failed:
                return results
            pending = failed
        raise BusUnavailable(f"Redis Cluster unavailable for {len(pending)} appends: {error}")

    def _by_node(self, calls: list[tuple[Any, ...]],
                 indexes: list[int]) -> dict[str, tuple[ClusterNode, list[int]]]:
        groups: dict[str, tuple[ClusterNode, list[int]]] = {}
        for i in indexes:
            node = self._redis.get_node_from_key(calls[i][0])
            groups.setdefault(node.name, (node, []))[1].append(i)
        return groups

    async def _fcall(self, node: ClusterNode, calls: list[tuple[Any, ...]]) -> list[Any]:
        args = [int(ACTIVE_LOG_TTL_S * 1000), *(arg for call in calls for arg in call)]
        self.stats["round_trips"] += 1
        flat = await self._redis.execute_command("FCALL", APPEND_FUNCTION, 0, *args,
                                                 target_nodes=node)
        return pairs(flat)

    async def end_log(self, gen: str, *, chat: str) -> None:
        await super().end_log(gen, chat=chat)
        await self._release(chat, gen)

    async def publish(self, event: Event) -> None:
        await self._call(self._redis.execute_command(
            "SPUBLISH", self._chat_channel(event.chat), event.encode()))
        self.stats["publishes"] += 1

    # Live fan-out and stop requests --------------------------------------------------------

    async def watch(self, chat: str) -> None:
        """Returns once the chat's node confirmed the subscription."""
        first = chat not in self._watched
        self._watched.add(chat)
        if first and chat not in self._held:
            try:
                await self._subscribed().add(self._chat_channel(chat))
            except BusUnavailable:
                self._watched.discard(chat)
                raise

    async def unwatch(self, chat: str) -> None:
        self._watched.discard(chat)
        if chat not in self._held:
            await self._subscribed().remove(self._chat_channel(chat))

    async def request_stop(self, gen: str, *, chat: str) -> None:
        await self._call(self._stop_script(
            [self._key(chat, gen, "stop")],
            [STOP_KEY_TTL_S, self._chat_channel(chat), STOP_MESSAGE + gen.encode()]))

    # Leases ------------------------------------------------------------------------------

    def lease_shard(self, gen: str, *, chat: str) -> str:
        """The node serving the chat's slot, as this process's slot map has it."""
        try:
            return str(self._redis.get_node_from_key(self._key(chat, gen, "lease")).name)
        except TRANSIENT:  # no map yet, or the slot is not covered now
            return ""

    async def refresh_leases(self, leases: Mapping[str, str], ttl_s: float) -> None:
        """Each lease on its own (their keys are in different slots), all at once; the first
        failure is raised once every one has been tried."""
        outcomes = await asyncio.gather(
            *(self.refresh_lease(gen, ttl_s, chat=chat) for gen, chat in leases.items()),
            return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _hold(self, chat: str, gen: str) -> None:
        """Listen to `chat` while this process runs `gen` (for its stop requests). If the
        subscription cannot be made now, a stop still arrives with the next append's
        answer."""
        gens = self._held.get(chat)
        if gens is None:
            gens = self._held[chat] = set()
            if chat not in self._watched:
                try:
                    await self._subscribed().add(self._chat_channel(chat))
                except BusUnavailable as exc:
                    log.warning("stop requests of chat %s come with appends only (%s)", chat,
                                exc)
        gens.add(gen)

    async def _release(self, chat: str, gen: str) -> None:
        gens = self._held.get(chat)
        if gens is None or gen not in gens:
            return
        gens.discard(gen)
        if not gens:
            del self._held[chat]
            if chat not in self._watched:
                await self._subscribed().remove(self._chat_channel(chat))

    def _subscribed(self) -> ShardedSubscriptions:
        if self._shards is None:
            raise BusUnavailable("the Redis Cluster bus is not started")
        return self._shards

    def _on_message(self, channel: bytes, data: bytes) -> None:
        chat = self._chat_of(channel)
        if data.startswith(STOP_MESSAGE):
            if self._on_stop_requested is not None:
                self._on_stop_requested(data[len(STOP_MESSAGE):].decode())
        elif chat in self._watched and self._on_event is not None:
            self._on_event(Event.decode(data))

    def _moved(self, channels: Collection[bytes]) -> None:
        """Subscriptions that followed their slot: their watched chats catch up."""
        self.stats["reconnects"] += 1
        chats = {self._chat_of(c) for c in channels} & self._watched
        if not chats:
            return
        if self._on_resync is not None:
            self._on_resync(chats)
        else:
            self._call_reconnect_hook()

    # Names -------------------------------------------------------------------------------

    def _key(self, chat: str, gen: str, kind: str) -> str:
        """Keyed by the chat's hash tag: one slot holds all of a chat's generations."""
        return f"{self.prefix}{{{chat}}}:{gen}:{kind}"

    def _chat_channel(self, chat: str) -> bytes:
        return self._chat_prefix + b"{" + chat.encode() + b"}"

    def _chat_of(self, channel: bytes) -> str:
        return channel[len(self._chat_prefix) + 1:-1].decode()

    async def _call(self, command: Any) -> Any:
        """One Redis round trip; a cluster that cannot serve it now is BusUnavailable."""
        self.stats["round_trips"] += 1
        try:
            return await command
        except TRANSIENT as exc:
            raise BusUnavailable(f"Redis Cluster unavailable: {exc!r}") from exc
