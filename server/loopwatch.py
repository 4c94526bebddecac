"""How long the event loop stalls: a timer due every few milliseconds, and how late it runs.

Every socket of a process waits while one callback holds the loop (a big SQL result turned
into objects, a garbage collection, a burst of starts). A median (the pacer's) hides those
pauses; a benchmark that skips its first seconds hides them too. This watch keeps the
longest lateness seen and hands every noticeable one, with the longest, to `on_stall` (the
metrics), so a stall of tens of ms shows wherever it happens. Its resolution is its tick: a
stall of S ms is seen as S - tick .. S ms late.

Plain asyncio, no import of the rest of chatcast: the benchmark's baseline server runs the
same watch, so both are measured alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

TICK_S = 0.005
#: Lateness below this is the timer's own granularity, not a stall.
NOTICE_S = 0.002


class StallWatch:
    def __init__(self, tick_s: float = TICK_S,
                 on_stall: Callable[[float, float], None] | None = None) -> None:
        self.tick_s = tick_s
        self.on_stall = on_stall
        self.longest_s = 0.0
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._handle is None:
            self._schedule()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self) -> None:
        # A callback, not a task: one timer per tick, no coroutine step.
        self._due = time.monotonic() + self.tick_s
        self._handle = asyncio.get_running_loop().call_later(self.tick_s, self._tick)

    def _tick(self) -> None:
        late = time.monotonic() - self._due
        if late > NOTICE_S:
            if late > self.longest_s:
                self.longest_s = late
            if self.on_stall is not None:
                self.on_stall(late, self.longest_s)
        self._schedule()
