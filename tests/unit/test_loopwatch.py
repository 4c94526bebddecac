"""The stall watch sees a callback that holds the event loop, and reports it."""

from __future__ import annotations

import asyncio
import time

from chatcast.server.loopwatch import StallWatch


async def test_a_blocked_loop_is_seen_as_a_stall() -> None:
    seen: list[tuple[float, float]] = []
    watch = StallWatch(tick_s=0.005, on_stall=lambda late, longest: seen.append((late, longest)))
    watch.start()
    try:
        await asyncio.sleep(0.02)
        seen.clear()  # a busy machine may have delayed a tick already: only the block counts
        time.sleep(0.1)  # noqa: ASYNC251 - holds the loop on purpose: the watch cannot run
        async with asyncio.timeout(10):
            while not seen:  # noqa: ASYNC110 - bounded
                await asyncio.sleep(0.005)
    finally:
        watch.close()
    # Blocked for 100 ms with a 5 ms tick: the first tick after it is at least 95 ms late.
    assert seen[0][0] >= 0.095
    assert seen[0][0] <= seen[0][1] <= watch.longest_s
