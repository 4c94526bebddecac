"""Sharded pub/sub on a Redis Cluster that follows the slot map.

Each channel is SSUBSCRIBEd on the master that serves its slot, over one connection per
master with one reader task each (`get_sharded_message` of redis-py's ClusterPubSub waits on
each node in turn; here no node waits for another). A subscription counts once Redis confirmed
it. Redis tells a subscriber when a slot it listens on moved away (an `sunsubscribe` it did
not ask for); a node that fails (its connection drops, or it stops answering pings) takes its
subscriptions with it. Either way the channels concerned are *moved*: the slot map is read
again, they are subscribed (and confirmed) where their slot lives now — retrying with backoff
while a failover is still under way — and `on_moved` is told which channels came back, so
only their chats catch up from the logs. Messages published meanwhile are not delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from chatcast.core.retry import Backoff
from chatcast.server.bus.base import BusUnavailable

log = logging.getLogger("chatcast.bus")

CONFIRM_TIMEOUT_S = 2.0
IDLE_PING_S = 5.0
PONG_TIMEOUT_S = 3.0
#: Moved channels are tried again after 0.1 s, backing off to every 2 s (a failover takes
#: the node timeout plus about a second).
MOVE_BACKOFF = Backoff(base_s=0.1, max_s=2.0)
MOVE_ATTEMPT_S = 6.0
CLOSE_TIMEOUT_S = 1.0

SLOTS = 16384
#: One node as the slot map names it: (host, port).
Address = tuple[str, int]
MessageHandler = Callable[[bytes, bytes], None]
MovedHandler = Callable[[set[bytes]], None]


@dataclass(eq=False)
class _Link:
    """One pub/sub connection to one master and its reader."""

    node: str
    client: Redis
    pubsub: PubSub
    channels: set[bytes] = field(default_factory=set)
    leaving: set[bytes] = field(default_factory=set)  # unsubscribes we asked for
    reader: asyncio.Task[None] | None = None


class ShardedSubscriptions:
    def __init__(self, seeds: list[Address], on_message: MessageHandler,
                 on_moved: MovedHandler, connection: dict[str, Any]) -> None:
        # The slot map is this listener's own (CLUSTER SLOTS, read when a slot moves or a
        # node goes): it never waits behind the command client's own map refreshes.
        self._known: list[Address] = list(seeds)
        self._map: list[tuple[int, int, Address]] = []
        self._on_message = on_message
        self._on_moved = on_moved
        self._connection = connection  # keyword arguments of each node connection
        self._links: dict[str, _Link] = {}
        self._wanted: set[bytes] = set()
        self._confirmations: dict[bytes, list[asyncio.Future[None]]] = {}
        self._moved: set[bytes] = set()
        self._mover: asyncio.Task[None] | None = None
        self._opening: dict[str, asyncio.Lock] = {}
        self._abandoned: set[asyncio.Future[Any]] = set()
        self.moves = 0  # channels moved (slot migrations and failovers), for tests and stats

    @property
    def up(self) -> bool:
        """No subscription is waiting to be moved."""
        return not self._moved

    async def add(self, channel: bytes) -> None:
        """Subscribe to `channel` on the master of its slot; returns once confirmed.
        Raises BusUnavailable when that cannot be done now."""
        if channel in self._wanted:  # subscribed, or being moved (it will be back)
            return
        self._wanted.add(channel)
        try:
            for attempt in range(3):
                if await self._subscribe([channel], refresh=attempt > 0):
                    return
            raise BusUnavailable(f"cannot subscribe to {channel!r}: the slot keeps moving")
        except BaseException:
            self._wanted.discard(channel)
            raise

    async def remove(self, channel: bytes) -> None:
        self._wanted.discard(channel)
        self._moved.discard(channel)
        for link in self._links.values():
            if channel in link.channels:
                link.channels.discard(channel)
                link.leaving.add(channel)
                with contextlib.suppress(RedisError, OSError):
                    await link.pubsub.sunsubscribe(channel)

    async def close(self) -> None:
        if self._mover is not None:
            self._mover.cancel()
            await asyncio.gather(self._mover, return_exceptions=True)
        for link in list(self._links.values()):
            await self._drop(link, None)
        for task in list(self._abandoned):
            task.cancel()
        if self._abandoned:
            await asyncio.wait(set(self._abandoned), timeout=CLOSE_TIMEOUT_S)

    # Subscribing -------------------------------------------------------------------------

    async def _subscribe(self, channels: Collection[bytes], *, refresh: bool) -> bool:
        """Subscribe `channels` where the slot map says (read again first if `refresh`);
        False if a node said the map is wrong. Raises BusUnavailable if a node is down."""
        try:
            if refresh or not self._map:
                await self._read_map()
            by_node: dict[Address, list[bytes]] = {}
            for channel in channels:
                by_node.setdefault(self._node_of(channel), []).append(channel)
            for address, group in by_node.items():
                link = await self._link(address)
                if not await self._confirm(link, group):
                    return False
            return True
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            # (RedisClusterException, e.g. "slots not covered" mid-failover, is no RedisError)
            raise BusUnavailable(f"Redis Cluster pub/sub unavailable: {exc!r}") from exc

    async def _confirm(self, link: _Link, channels: list[bytes]) -> bool:
        loop = asyncio.get_running_loop()
        waits = {ch: loop.create_future() for ch in channels}
        for channel, future in waits.items():
            self._confirmations.setdefault(channel, []).append(future)
        try:
            async with asyncio.timeout(CONFIRM_TIMEOUT_S):
                for channel in channels:  # one SSUBSCRIBE may only name channels of one slot
                    await link.pubsub.ssubscribe(channel)
                await asyncio.gather(*waits.values())
        except _Redirected:
            return False
        except BaseException:
            if self._links.get(link.node) is link and (link.reader is None or link.reader.done()
                                                        or not link.channels):
                # a link that cannot confirm is not kept for the next try
                self._links.pop(link.node, None)
                await self._drop(link, None)
            raise
        finally:
            for channel, future in waits.items():
                waiting = self._confirmations.get(channel, [])
                if future in waiting:
                    waiting.remove(future)
                if not waiting:
                    self._confirmations.pop(channel, None)
        for channel in channels:  # a channel lives on one node only
            for other in self._links.values():
                if other is not link:
                    other.channels.discard(channel)
        link.channels.update(channels)
        link.leaving.difference_update(channels)
        return True

    async def _read_map(self) -> None:
        """The slot map from the first known node that serves a full one."""
        errors = []
        for host, port in list(self._known):
            client = Redis(host=host, port=port, retry=Retry(NoBackoff(), 0), **self._connection)
            try:
                async with asyncio.timeout(CONFIRM_TIMEOUT_S):
                    reply = await client.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
            except (RedisError, OSError, TimeoutError) as exc:
                errors.append(f"{host}:{port}: {exc!r}")
                continue
            finally:
                with contextlib.suppress(RedisError, OSError, RuntimeError):
                    await client.aclose()
            spans = sorted((int(r[0]), int(r[1]), _address(r[2])) for r in reply)
            if sum(hi - lo + 1 for lo, hi, _ in spans) < SLOTS:
                errors.append(f"{host}:{port}: slots not all served")
                continue
            self._map = spans
            for _lo, _hi, *nodes in reply:
                for node in nodes:
                    if _address(node) not in self._known:
                        self._known.append(_address(node))
            return
        raise BusUnavailable(f"no Redis Cluster slot map: {'; '.join(errors)}")

    def _node_of(self, channel: bytes) -> Address:
        slot = key_slot(channel)
        for lo, hi, address in self._map:
            if lo <= slot <= hi:
                return address
        raise BusUnavailable(f"no node serves slot {slot}")

    async def _link(self, address: Address) -> _Link:
        name = f"{address[0]}:{address[1]}"
        link = self._links.get(name)
        if link is not None:
            return link
        async with self._opening.setdefault(name, asyncio.Lock()):
            link = self._links.get(name)
            if link is not None:
                return link
            client = Redis(host=address[0], port=address[1], client_name="chatcast-pubsub",
                           retry=Retry(NoBackoff(), 0), **self._connection)
            pubsub = client.pubsub()
            try:
                await pubsub.connect()  # type: ignore[no-untyped-call]
            except BaseException:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
                await client.aclose()
                raise
            link = self._links[name] = _Link(name, client, pubsub)
            link.reader = asyncio.create_task(self._read(link), name=f"shard-{name}")
            return link

    # Reading -----------------------------------------------------------------------------

    async def _read(self, link: _Link) -> None:
        """Deliver this node's messages until its connection fails; a silent connection is
        pinged, and one that does not answer counts as failed."""
        loop = asyncio.get_running_loop()
        heard, pinged = loop.time(), None
        try:
            while True:
                try:
                    message = await link.pubsub.get_message(timeout=1.0)
                except ResponseError as exc:  # an error reply: a subscribe to the wrong node
                    self._redirected(exc)
                    continue
                now = loop.time()
                if message is not None:
                    heard, pinged = now, None
                    self._handle(link, message)
                elif pinged is not None and now - pinged > PONG_TIMEOUT_S:
                    raise RedisConnectionError("no answer to PING on a shard connection")
                elif pinged is None and now - heard > IDLE_PING_S:
                    await link.pubsub.ping()
                    pinged = now
        except Exception as exc:  # whatever ended it (uvloop raises RuntimeError on a closed
            # transport), the link is gone and its channels must move
            log.warning("Redis Cluster node %s lost (%s); moving its %d subscriptions",
                        link.node, exc, len(link.channels))
            self._links.pop(link.node, None)
            self._move(link.channels)
            link.channels = set()
            self._fail_waiting(BusUnavailable(f"node {link.node} lost: {exc}"))
            await self._close_link(link)

    def _handle(self, link: _Link, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        if kind == "smessage":
            try:
                self._on_message(channel, message["data"])
            except Exception:
                log.exception("bus handler failed", extra={"channel": channel})
        elif kind == "ssubscribe":
            waiting = self._confirmations.get(channel)
            if waiting:
                future = waiting.pop(0)
                if not future.done():
                    future.set_result(None)
        elif kind == "sunsubscribe":
            if channel in link.leaving:
                link.leaving.discard(channel)
            elif channel in link.channels:  # not asked for: its slot moved to another node
                link.channels.discard(channel)
                self._move([channel])

    def _redirected(self, exc: RedisError) -> None:
        """A node refused a subscribe (MOVED: the map is stale): those waiting try again."""
        log.warning("Redis Cluster refused a subscription: %s", exc)
        for waiting in self._confirmations.values():
            for future in waiting:
                if not future.done():
                    future.set_exception(_Redirected(str(exc)))

    def _fail_waiting(self, exc: BaseException) -> None:
        for waiting in self._confirmations.values():
            for future in waiting:
                if not future.done():
                    future.set_exception(exc)

    # Moving ------------------------------------------------------------------------------

    def _move(self, channels: Collection[bytes]) -> None:
        moved = set(channels) & self._wanted
        if not moved:
            return
        self._moved |= moved
        if self._mover is None or self._mover.done():
            self._mover = asyncio.get_running_loop().create_task(self._move_all(),
                                                                  name="shard-mover")

    async def _move_all(self) -> None:
        """Subscribe moved channels where their slots are now, until all are back."""
        pause = MOVE_BACKOFF.base_s
        while self._moved:
            batch = self._moved & self._wanted
            self._moved.clear()
            done = await self._attempt(batch)
            if not done:
                self._moved |= batch & self._wanted
                await asyncio.sleep(pause)
                pause = min(pause * 2, MOVE_BACKOFF.max_s)
                continue
            pause = MOVE_BACKOFF.base_s
            self.moves += len(batch)
            log.warning("Redis Cluster: %d subscriptions followed their slots", len(batch))
            try:
                self._on_moved(batch)
            except Exception:
                log.exception("on_moved handler failed")
        await self._close_idle()

    async def _attempt(self, batch: set[bytes]) -> bool:
        """One try at subscribing `batch` where the map says now. Run as a task of its own
        and given up on after MOVE_ATTEMPT_S without waiting for it: a connection to a node
        that half-answers mid-failover can leave redis-py deaf to a cancellation, and this
        loop must go on until every channel is back."""
        attempt = asyncio.ensure_future(self._subscribe(batch, refresh=True))
        finished, _ = await asyncio.wait({attempt}, timeout=MOVE_ATTEMPT_S)
        if not finished:
            attempt.cancel()
            self._background(attempt)
            for link in list(self._links.values()):  # links made by it are not trusted
                if not link.channels:
                    self._links.pop(link.node, None)
                    self._background(asyncio.ensure_future(self._drop(link, None)))
            log.warning("moved subscriptions: a try was given up on after %.0f s",
                        MOVE_ATTEMPT_S)
            return False
        if attempt.cancelled():
            return False
        exc = attempt.exception()
        if exc is not None:
            log.debug("moved subscriptions not back yet (%r)", exc)
            return False
        return attempt.result()

    def _background(self, task: asyncio.Future[Any]) -> None:
        """Keep a task that nobody waits for until it ends (and retrieve its outcome)."""
        self._abandoned.add(task)
        task.add_done_callback(self._abandoned.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _close_idle(self) -> None:
        """Connections to nodes that serve none of our channels any more (a demoted
        master, a node whose slots all moved) are closed."""
        for link in list(self._links.values()):
            if not link.channels and not self._confirmations:
                self._links.pop(link.node, None)
                await self._drop(link, None)

    async def _drop(self, link: _Link, exc: BaseException | None) -> None:
        """Stop a link's reader (without waiting on it: see `_attempt`) and close it."""
        if link.reader is not None and link.reader is not asyncio.current_task():
            link.reader.cancel()
            if not link.reader.done():
                self._background(link.reader)
        await self._close_link(link)

    @staticmethod
    async def _close_link(link: _Link) -> None:
        """Close a link's connection, without waiting long on a node that is gone."""
        with contextlib.suppress(RedisError, OSError, RuntimeError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await link.pubsub.aclose()  # type: ignore[no-untyped-call]
        with contextlib.suppress(RedisError, OSError, RuntimeError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await link.client.aclose()


def _address(node: list[Any]) -> Address:
    host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
    return (host, int(node[1]))


class _Redirected(Exception):
    """A subscribe reached a node that no longer serves the channel's slot."""
