"""Per-process fan-out: chat → local subscribers. A subscriber is a connection's outbox
(`outbox.py`: merging, bounds, direct writes) plus its cursor per chat (`positions.py`:
repeats, gaps, where to resume); the hub registers it live first, then has it catch up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection

from chatcast.core.codes import Close
from chatcast.core.errors import StorageUnavailable
from chatcast.core.protocol import Cursor, Event
from chatcast.core.retry import Backoff, retry
from chatcast.server.bus.base import BusUnavailable, ChatFanout
from chatcast.server.outbox import Outbox
from chatcast.server.positions import DELIVER, GAP, ChatCursor

log = logging.getLogger("chatcast.hub")

# A resync that finds the bus unavailable is tried again after pauses of 0.25, 0.5, 1 and
# 2 s, then given up: the client is closed and resumes by itself.
RESYNC_BACKOFF = Backoff(base_s=0.25, max_s=2.0)
RESYNC_ATTEMPTS = 5

CatchUp = Callable[[str, Cursor | None], Awaitable[list[Event]]]


class Subscriber(Outbox):
    """One client connection (a WebSocket, an SSE response, a long-poll request): its outbox
    and, per chat it watches, its cursor. Live events of a chat that is catching up are
    buffered until the catch-up is in."""

    __slots__ = ("chats", "on_gap", "syncing", "transport")

    def __init__(self, transport: str, max_frames: int = 256, max_bytes: int = 1 << 20) -> None:
        super().__init__(max_frames, max_bytes)
        self.transport = transport
        self.chats: dict[str, ChatCursor] = {}
        # chat → live events held back while that chat catches up (absent: live). None
        # when no chat is catching up, as on most connections most of the time: no dict.
        self.syncing: dict[str, list[Event]] | None = None
        self.on_gap: Callable[[Subscriber, str], None] | None = None

    def deliver(self, event: Event) -> None:
        """A live event of a chat this subscriber may be watching."""
        cursor = self.chats.get(event.chat)
        if cursor is None:
            return
        held = self.syncing.get(event.chat) if self.syncing is not None else None
        if held is not None:
            held.append(event)
        else:
            self._emit(cursor, event)

    def _emit(self, cursor: ChatCursor, event: Event) -> None:
        verdict = cursor.admit(event)
        if verdict == DELIVER:
            self._enqueue(event)
        elif verdict == GAP and self.on_gap is not None:
            self.on_gap(self, event.chat)

    # Subscription bookkeeping (driven by the Hub) -------------------------------------

    def open_chat(self, chat: str, cursor: Cursor | None = None) -> None:
        """Start watching `chat` from the client's `cursor` (what it already has is never
        sent again, even when it is heard live after the catch-up came back empty): live
        events are held until `caught_up`."""
        self.chats[chat] = ChatCursor(cursor)
        self._hold(chat)

    def hold(self, chat: str) -> bool:
        """Hold live events of `chat` again, for a resync; False if the chat is not watched
        or already catching up."""
        if chat not in self.chats or (self.syncing is not None and chat in self.syncing):
            return False
        self._hold(chat)
        return True

    def _hold(self, chat: str) -> None:
        if self.syncing is None:
            self.syncing = {}
        self.syncing[chat] = []

    def _release(self, chat: str) -> list[Event] | None:
        if self.syncing is None:
            return None
        held = self.syncing.pop(chat, None)
        if not self.syncing:
            self.syncing = None
        return held

    def caught_up(self, chat: str, catch_up: list[Event]) -> None:
        """The catch-up of `chat` is in: deliver it, then the live events held meanwhile."""
        cursor = self.chats.get(chat)
        held = self._release(chat)
        if cursor is None:
            return
        for event in catch_up:
            self._emit(cursor, event)
        for event in held or ():
            self._emit(cursor, event)

    def close_chat(self, chat: str) -> None:
        self.chats.pop(chat, None)
        self._release(chat)


class Hub:
    def __init__(self, fanout: ChatFanout, catch_up: CatchUp) -> None:
        self.fanout = fanout
        self.catch_up = catch_up
        self.chats: dict[str, set[Subscriber]] = {}
        self.connections: set[Subscriber] = set()
        self._watching: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def on_event(self, event: Event) -> None:
        """Called by the bus for every live event of a watched chat."""
        for sub in self.chats.get(event.chat, ()):
            sub.deliver(event)

    def attach(self, sub: Subscriber) -> None:
        """A connection opened (so shutdown can reach it even before it subscribes)."""
        self.connections.add(sub)
        sub.on_gap = self.resync

    def resync(self, sub: Subscriber, chat: str) -> None:
        """Catch `sub` up on `chat` from its own cursor (live events buffer meanwhile)."""
        if not sub.hold(chat):
            return
        cursor = sub.chats[chat].cursor()
        task = asyncio.get_running_loop().create_task(self._resync(sub, chat, cursor))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resync(self, sub: Subscriber, chat: str, cursor: Cursor | None) -> None:
        try:  # a moment of overload or a reconnect: try again
            events = await retry(lambda: self.catch_up(chat, cursor),
                                 retry_on=(BusUnavailable, StorageUnavailable),
                                 backoff=RESYNC_BACKOFF, attempts=RESYNC_ATTEMPTS)
        except (BusUnavailable, StorageUnavailable) as exc:
            log.warning("%s for a resync; closing the client so it resumes itself",
                        "bus unavailable" if isinstance(exc, BusUnavailable) else
                        "database unavailable", extra={"chat": chat})
        except Exception:
            log.exception("resync failed; closing the client so it resumes itself")
        else:
            sub.caught_up(chat, events)
            return
        sub.close(Close.INTERNAL)

    def resync_all(self) -> None:
        """After the bus reconnected: every subscriber catches up on every chat."""
        self.resync_chats(list(self.chats))

    def resync_chats(self, chats: Collection[str]) -> None:
        """Live delivery of `chats` was interrupted (e.g. their Redis Cluster slot moved):
        their subscribers catch up; other chats are not touched."""
        for chat in chats:
            for sub in list(self.chats.get(chat, ())):
                self.resync(sub, chat)

    async def subscribe(self, sub: Subscriber, chat: str, cursor: Cursor | None) -> None:
        """Live first, then catch up from the cursor; the overlap is de-duplicated by seq."""
        self.attach(sub)
        sub.open_chat(chat, cursor)
        self.chats.setdefault(chat, set()).add(sub)
        try:
            await self._ensure_watch(chat)
            events = await self.catch_up(chat, cursor)
        except BaseException:
            self.unsubscribe(sub, chat)
            raise
        sub.caught_up(chat, events)

    async def _ensure_watch(self, chat: str) -> None:
        fut = self._watching.get(chat)
        if fut is None:
            fut = self._watching[chat] = asyncio.get_running_loop().create_future()
            try:
                await self.fanout.watch(chat)
            except BaseException as exc:
                del self._watching[chat]
                fut.set_exception(exc)
                fut.exception()  # retrieved: waiting subscribers re-raise it themselves
                raise
            fut.set_result(None)
        await asyncio.shield(fut)

    def unsubscribe(self, sub: Subscriber, chat: str) -> None:
        sub.close_chat(chat)
        subs = self.chats.get(chat)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self.chats[chat]
            if self._watching.pop(chat, None) is not None:
                task = asyncio.get_running_loop().create_task(self._unwatch(chat))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _unwatch(self, chat: str) -> None:
        if chat not in self._watching:  # nobody subscribed again in the meantime
            await self.fanout.unwatch(chat)

    def drop(self, sub: Subscriber) -> None:
        """Forget a subscriber on all its chats (its connection ended)."""
        self.connections.discard(sub)
        for chat in list(sub.chats):
            self.unsubscribe(sub, chat)

    async def close_all(self, code: int, wait_s: float = 2.0) -> None:
        """Tell every connection to close with `code` and wait (bounded) until they have."""
        for sub in list(self.connections):
            sub.close(code)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while self.connections and loop.time() < deadline:  # noqa: ASYNC110 - bounded poll
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
