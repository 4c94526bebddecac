"""Adaptive coalescing at the source: how long a generation may hold its next delta back.

An idle process sends every chunk the moment the provider gives it. A busy one (its event
loop falls behind) lets each generation wait a little between appends, so the chunks that
arrive meanwhile go out as one delta: one bus append, one fan-out and one frame per socket
instead of several. The wait follows the measured event-loop lag, so it grows only while
the process is overloaded and shrinks as soon as it catches up."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
from collections import deque

from server import metrics

TICK_S = 0.05
WINDOW = 20  # ticks: one second
# Below this lag the loop keeps up: no holding back at all.
IDLE_LAG_S = 0.002
# Hold = lag times this, up to the configured maximum.
LAG_FACTOR = 4.0


class Pacer:
    def __init__(self, max_hold_s: float) -> None:
        self.max_hold_s = max_hold_s
        self.lag_s = 0.0  # median lateness of the event loop's timers over the window
        self._samples: deque[float] = deque(maxlen=WINDOW)
        self._task: asyncio.Task[None] | None = None

    def hold_s(self) -> float:
        """Seconds a generation waits after an append before taking more chunks."""
        if self.max_hold_s <= 0 or self.lag_s < IDLE_LAG_S:
            return 0.0
        return min(self.max_hold_s, self.lag_s * LAG_FACTOR)

    def observe(self, lag_s: float) -> None:
        self._samples.append(max(lag_s, 0.0))
        self.lag_s = statistics.median(self._samples)
        metrics.LOOP_LAG.set(self.lag_s)

    def start(self) -> None:
        if self._task is None and self.max_hold_s > 0:
            self._task = asyncio.get_running_loop().create_task(self._measure(),
                                                                name="loop-lag")

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
            self.observe(loop.time() - due)
