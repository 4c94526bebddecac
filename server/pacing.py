"""Adaptive coalescing at the source: how long a generation may hold its next delta back.

An idle process sends every chunk the moment the provider gives it. A busy one lets each
generation wait a little between appends, so the chunks that arrive meanwhile go out as one
delta: one bus append, one fan-out and one frame per socket instead of several.

"Busy" is measured over the last second, two ways: the process's CPU use (a saturated loop
runs every task in turn, so its timers are barely late while everything falls behind) and
the median lateness of the event loop's timers (the process is starved by others; a single
pause such as a garbage collection does not count). The hold grows with either, up to the
configured maximum, and is back to zero as soon as the process has room again."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import deque

from chatcast.server import metrics

TICK_S = 0.05
WINDOW = 20  # ticks: one second
# CPU use of the process (0..1 of a core) where holding starts, and where it is at maximum.
CPU_FROM, CPU_FULL = 0.85, 1.0
# Below this timer lateness the loop keeps up; above, hold = lag times LAG_FACTOR.
IDLE_LAG_S = 0.005
LAG_FACTOR = 4.0


class Pacer:
    def __init__(self, max_hold_s: float) -> None:
        self.max_hold_s = max_hold_s
        self.lag_s = 0.0  # median lateness of the event loop's timers over the window
        self.cpu = 0.0  # CPU use over the window, in cores
        self._lags: deque[float] = deque(maxlen=WINDOW)
        self._clock: deque[tuple[float, float]] = deque(maxlen=WINDOW + 1)
        self._task: asyncio.Task[None] | None = None

    def hold_s(self) -> float:
        """Seconds a generation waits after an append before taking more chunks."""
        if self.max_hold_s <= 0:
            return 0.0
        by_cpu = min(max((self.cpu - CPU_FROM) / (CPU_FULL - CPU_FROM), 0.0), 1.0)
        hold = by_cpu * self.max_hold_s
        if self.lag_s >= IDLE_LAG_S:
            hold = max(hold, self.lag_s * LAG_FACTOR)
        return min(hold, self.max_hold_s)

    def observe(self, lag_s: float, wall: float | None = None,
                cpu_s: float | None = None) -> None:
        """One tick: how late the timer ran, and (optionally) the clocks now."""
        self._lags.append(max(lag_s, 0.0))
        self.lag_s = statistics.median(self._lags)
        if wall is not None and cpu_s is not None:
            self._clock.append((wall, cpu_s))
            (w0, c0), (w1, c1) = self._clock[0], self._clock[-1]
            self.cpu = (c1 - c0) / (w1 - w0) if w1 > w0 else 0.0
        metrics.LOOP_LAG.set(self.lag_s)

    def start(self) -> None:
        if self._task is None and self.max_hold_s > 0:
            self._task = asyncio.get_running_loop().create_task(self._measure(),
                                                                name="pacer")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _measure(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + TICK_S
            await asyncio.sleep(TICK_S)
            now = loop.time()
            self.observe(now - due, now, time.process_time())
