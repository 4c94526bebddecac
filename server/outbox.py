"""A connection's bounded outbox: frames wait here while the connection is busy writing.

While it is busy, a new delta of the same generation is merged into the queued one (adaptive
coalescing: an idle socket gets every delta at once, a busy one gets fewer, larger frames).
If the outbox still overflows its frame or byte bound, it is marked overflowed and emptied,
and its transport closes the connection (WebSocket 4008); the client resumes from its cursor.
A transport that can write from the producer's task sets `direct`: an idle connection's
frame is then written at once, and only a write the socket pushed back is handed to the
transport's writer (`stalled`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from chatcast.core import protocol
from chatcast.core.protocol import Event
from chatcast.server import metrics


class Merged:
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


class Outbox:
    # One per connection, alive as long as it: slots keep it small.
    __slots__ = ("_joinable", "_waiter", "_writing", "close_code", "direct", "max_bytes",
                 "max_frames", "on_overflow", "outbox", "overflowed", "queued_bytes",
                 "stalled")

    def __init__(self, max_frames: int = 256, max_bytes: int = 1 << 20) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.outbox: list[Event | Merged] = []
        # gen → index in the outbox of its queued delta that later deltas may join; cleared
        # by anything that is not a delta (a barrier: it must keep its place) and by drain.
        self._joinable: dict[str, int] = {}
        self.queued_bytes = 0
        self.overflowed = False
        self.on_overflow: Callable[[], object] | None = None  # the transport's alarm
        self.close_code: int | None = None  # set when the server closes this connection
        self._waiter: asyncio.Future[None] | None = None  # the writer, waiting for frames
        # Direct delivery, for a transport that can write from the producer's task: it
        # writes the frame now and returns None, or, if the socket pushed back, returns what
        # finishes the write (the transport's writer awaits it before anything else).
        self.direct: Callable[[Event], Awaitable[None] | None] | None = None
        self.stalled: Awaitable[None] | None = None
        self._writing = False  # the writer is sending (a batch, or a stalled frame)

    # Producer side --------------------------------------------------------------------

    def push(self, event: Event) -> None:
        """Queue a frame that is not about a chat position (ack, error, pong)."""
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

    def _merge_target(self, at: int, event: Event) -> Merged | None:
        """The queued delta at `at` as a merge, if `event` may join it (same part)."""
        queued = self.outbox[at]
        if isinstance(queued, Merged):
            return queued if queued.part == protocol.delta_part(event)[0] else None
        assert isinstance(queued, Event)
        if protocol.delta_part(queued)[0] != protocol.delta_part(event)[0]:
            return None
        merged = Merged(queued)
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
        batch = [e.event() if isinstance(e, Merged) else e for e in self.outbox]
        self.outbox.clear()
        self._joinable.clear()
        self.queued_bytes = 0
        return batch
