"""Per-process fan-out: chat → local subscribers, each with a bounded outbox.

A subscriber is one client connection (a WebSocket, an SSE response, a long-poll request).
Its outbox is bounded in frames and bytes. While the connection is busy writing, a new delta
of the same generation is merged into the queued one (adaptive coalescing: an idle socket
gets every delta at once, a busy one gets fewer, larger frames). If the outbox still
overflows, the subscriber is marked overflowed and its transport closes it (WebSocket 4008);
the client resumes from its cursor.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from server import metrics, protocol
from server.bus.base import Bus, BusUnavailable
from server.codes import Close
from server.protocol import Cursor, Event

log = logging.getLogger("chatcast.hub")

# A resync that finds the bus unavailable is tried again after these pauses, then given up:
# the client is closed and resumes by itself.
RESYNC_RETRIES_S = (0.2, 0.5, 1.0, 2.0)

CatchUp = Callable[[str, Cursor | None], Awaitable[list[Event]]]


@dataclass(slots=True)
class _ChatView:
    """One subscriber's view of one chat: live events are buffered while it catches up."""

    syncing: bool = True
    buffer: list[Event] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)  # gen → last seq delivered
    # The position a resync would resume from, (gen, seq): a plain tuple because it changes
    # with every delivered frame; a `Cursor` is built only when a resync needs one.
    position: tuple[str, int] | None = None
    # gens whose done was delivered; most views never need one (an empty set is 216 bytes)
    finished: set[str] | None = None




class _Merged:
    """Consecutive deltas of one generation and one part (text or reasoning) queued for a
    busy client, joined only when sent (so merging stays linear however long the client
    stalls)."""

    __slots__ = ("chat", "gen", "part", "parts", "seq", "ts")
    type = "delta"

    def __init__(self, first: Event) -> None:
        self.chat, self.gen, self.seq = first.chat, first.gen, first.seq
        self.ts = first.data.get("ts")  # benchmarks: the oldest merged chunk's emit time
        self.part, text = protocol.delta_part(first)
        self.parts: list[str] = [text]

    def add(self, text: str, seq: int) -> None:
        self.parts.append(text)
        self.seq = seq

    def event(self) -> Event:
        make = protocol.reasoning_delta if self.part == protocol.REASONING else protocol.delta
        return make(self.chat, str(self.gen), self.seq, "".join(self.parts), ts=self.ts)


class Subscriber:
    # One per connection, alive as long as it: slots keep it small.
    __slots__ = ("_joinable", "_waiter", "_writing", "chats", "close_code", "direct",
                 "max_bytes", "max_frames", "on_gap", "on_overflow", "outbox", "overflowed",
                 "queued_bytes", "stalled", "transport")

    def __init__(self, transport: str, max_frames: int = 256, max_bytes: int = 1 << 20) -> None:
        self.transport = transport
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.outbox: list[Event | _Merged] = []
        # gen → index in the outbox of its queued delta that later deltas may join; cleared
        # by anything that is not a delta (a barrier: it must keep its place) and by drain.
        self._joinable: dict[str, int] = {}
        self.queued_bytes = 0
        self.overflowed = False
        self.on_overflow: Callable[[], object] | None = None  # the transport's alarm
        self.close_code: int | None = None  # set when the server closes this connection
        self.on_gap: Callable[[Subscriber, str], None] | None = None
        self.chats: dict[str, _ChatView] = {}
        self._waiter: asyncio.Future[None] | None = None  # the writer, waiting for frames
        # Direct delivery, for a transport that can write from the producer's task: it
        # writes the frame now and returns None, or, if the socket pushed back, returns what
        # finishes the write (the transport's writer awaits it before anything else).
        self.direct: Callable[[Event], Awaitable[None] | None] | None = None
        self.stalled: Awaitable[None] | None = None
        self._writing = False  # the writer is sending (a batch, or a stalled frame)

    # Producer side --------------------------------------------------------------------

    def deliver(self, event: Event) -> None:
        """A live event of a chat this subscriber may be watching."""
        view = self.chats.get(event.chat)
        if view is None:
            return
        if view.syncing:
            view.buffer.append(event)
        else:
            self._emit(view, event)

    def push(self, event: Event) -> None:
        """Queue a frame that is not about a chat position (ack, error, pong)."""
        self._enqueue(event)

    def _emit(self, view: _ChatView, event: Event) -> None:
        if event.type == "snapshot":
            active = event.data.get("active")
            view.seen.clear()
            view.finished = {m["gen"] for m in event.data["messages"]
                             if m.get("gen") and m.get("status") != "streaming"} or None
            if active:
                view.seen[active["gen"]] = int(active["seq"])
                if view.finished:
                    view.finished.discard(active["gen"])
            cursor = event.data.get("cursor")
            view.position = (cursor["gen"], int(cursor["seq"])) if cursor else None
        elif event.type == "start":
            gen = str(event.gen)
            if gen not in view.seen:
                view.seen[gen] = 0
                view.position = (gen, 0)
        elif event.is_positioned:
            gen = str(event.gen)
            if view.finished and gen in view.finished:
                return  # its done (or a snapshot showing it over) was delivered already
            last = view.seen.get(gen)
            if event.type == "done" and last is not None and event.seq <= last:
                # A done written by another process from SQL after the log was lost can be
                # behind what this client saw; it still must learn the final state.
                last = event.seq - 1
            if last is not None and event.seq <= last:
                return  # already delivered (replay and live overlap)
            if last is not None and event.seq > last + 1:
                # Bus events are single chunks, so a jump means this process missed some
                # (e.g. the bus reconnected): catch up from the log instead of leaving a hole.
                if self.on_gap is not None:
                    self.on_gap(self, event.chat)
                return
            view.seen[gen] = event.seq
            view.position = (gen, event.seq)
            if event.type == "done":
                if view.finished is None:
                    view.finished = set()
                view.finished.add(gen)
            if len(view.seen) > 8:
                gone = next(iter(view.seen))
                view.seen.pop(gone)
                if view.finished:
                    view.finished.discard(gone)
        self._enqueue(event)

    def _enqueue(self, event: Event) -> None:
        if self.overflowed:
            return
        if self.direct is not None and not self._writing and not self.outbox:
            # Idle socket: write now, from this task (no wake-up of the writer).
            rest = self.direct(event)
            if rest is not None:  # pushed back: the writer finishes it, later frames queue
                self.stalled = rest
                self._writing = True
                self._wake()
            return
        if event.type == "delta":
            gen = str(event.gen)
            at = self._joinable.get(gen)
            if at is not None:  # the client is busy: merge instead of queueing more
                merged = self._merge_target(at, event)
                if merged is not None:
                    merged.add(protocol.delta_part(event)[1], event.seq)
                    self.queued_bytes += len(merged.parts[-1])
                    metrics.COALESCED.inc()
                    self._check_bounds()
                    return
            self._joinable[gen] = len(self.outbox)
        else:
            self._joinable.clear()
        self.outbox.append(event)
        self.queued_bytes += len(event.encode())
        self._check_bounds()

    def _merge_target(self, at: int, event: Event) -> _Merged | None:
        """The queued delta at `at` as a merge, if `event` may join it (same part)."""
        queued = self.outbox[at]
        if isinstance(queued, _Merged):
            return queued if queued.part == protocol.delta_part(event)[0] else None
        assert isinstance(queued, Event)
        if protocol.delta_part(queued)[0] != protocol.delta_part(event)[0]:
            return None
        merged = _Merged(queued)
        self.outbox[at] = merged
        return merged

    def _check_bounds(self) -> None:
        if len(self.outbox) > self.max_frames or self.queued_bytes > self.max_bytes:
            self.overflowed = True
            self.direct = None
            if self.on_overflow is not None:
                self.on_overflow()
            self.outbox.clear()
            self._joinable.clear()
            self.queued_bytes = 0
            metrics.SLOW_CLOSES.inc()
        self._wake()

    def _wake(self) -> None:
        # A future made only while the writer waits: an asyncio.Event per connection would
        # keep a deque (~0.6 KiB) for its whole life.
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # Consumer side --------------------------------------------------------------------

    def close(self, code: int) -> None:
        """Ask the transport to end this connection with `code` after what is queued."""
        self.close_code = code
        self.direct = None  # from now on everything goes through the writer
        self._wake()

    async def next_batch(self) -> list[Event]:
        """Wait for frames; return all queued. Also returns (maybe empty) when the
        subscriber overflowed or is being closed: check `overflowed` / `close_code`. A
        `stalled` frame, if set when this returns, goes out before the batch. Until the
        next call the writer counts as busy: new frames queue (and deltas merge)."""
        self._writing = False
        while not self.outbox and not self.overflowed and self.close_code is None \
                and self.stalled is None:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self._writing = True
        return self.drain()

    def drain(self) -> list[Event]:
        """Everything queued, now (merged deltas joined)."""
        batch = [e.event() if isinstance(e, _Merged) else e for e in self.outbox]
        self.outbox.clear()
        self._joinable.clear()
        self.queued_bytes = 0
        return batch

    # Subscription bookkeeping (driven by the Hub) -------------------------------------

    def _open(self, chat: str) -> None:
        self.chats[chat] = _ChatView()

    def _finish_sync(self, chat: str, catch_up: list[Event]) -> None:
        view = self.chats.get(chat)
        if view is None:
            return
        for event in catch_up:
            self._emit(view, event)
        for event in view.buffer:
            self._emit(view, event)
        view.buffer.clear()
        view.syncing = False


class Hub:
    def __init__(self, bus: Bus, catch_up: CatchUp) -> None:
        self.bus = bus
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
        view = sub.chats.get(chat)
        if view is None or view.syncing:
            return
        view.syncing = True
        cursor = Cursor(gen=view.position[0], seq=view.position[1]) if view.position else None
        task = asyncio.get_running_loop().create_task(self._resync(sub, chat, cursor))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resync(self, sub: Subscriber, chat: str, cursor: Cursor | None) -> None:
        for pause in (0.0, *RESYNC_RETRIES_S):
            if pause:
                await asyncio.sleep(pause)
            try:
                events = await self.catch_up(chat, cursor)
            except BusUnavailable:  # a moment of overload or a reconnect: try again
                continue
            except Exception:
                log.exception("resync failed; closing the client so it resumes itself")
                break
            sub._finish_sync(chat, events)
            return
        else:
            log.warning("bus unavailable for a resync; closing the client so it resumes "
                        "itself", extra={"chat": chat})
        sub.close(Close.INTERNAL)

    def resync_all(self) -> None:
        """After the bus reconnected: every subscriber catches up on every chat."""
        for chat, subs in list(self.chats.items()):
            for sub in list(subs):
                self.resync(sub, chat)

    async def subscribe(self, sub: Subscriber, chat: str, cursor: Cursor | None) -> None:
        """Live first, then catch up from the cursor; the overlap is de-duplicated by seq."""
        self.attach(sub)
        sub._open(chat)
        self.chats.setdefault(chat, set()).add(sub)
        try:
            await self._ensure_watch(chat)
            events = await self.catch_up(chat, cursor)
        except BaseException:
            self.unsubscribe(sub, chat)
            raise
        sub._finish_sync(chat, events)

    async def _ensure_watch(self, chat: str) -> None:
        fut = self._watching.get(chat)
        if fut is None:
            fut = self._watching[chat] = asyncio.get_running_loop().create_future()
            try:
                await self.bus.watch(chat)
            except BaseException as exc:
                del self._watching[chat]
                fut.set_exception(exc)
                fut.exception()  # retrieved: waiting subscribers re-raise it themselves
                raise
            fut.set_result(None)
        await asyncio.shield(fut)

    def unsubscribe(self, sub: Subscriber, chat: str) -> None:
        sub.chats.pop(chat, None)
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
            await self.bus.unwatch(chat)

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
