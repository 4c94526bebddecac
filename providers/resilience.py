"""What every provider stream gets, whatever its SDK: an idle timeout and a guaranteed close.

The provider's iterator is driven by a pump task owned by `guarded`. Closing the guarded
stream in any way (the consumer is cancelled, it stops iterating, or the idle timeout fires)
cancels that task and closes the provider's iterator before `guarded` returns, so no task
and no upstream response outlives the stream."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, AsyncIterator

from providers.base import Chunk, ProviderFailure, ProviderStreamBroken, ProviderUnavailable

_END = object()


async def guarded(chunks: AsyncIterator[Chunk], *, label: str,
                  idle_timeout_s: float) -> AsyncGenerator[Chunk, None]:
    """`chunks`, failing when the provider sends nothing for `idle_timeout_s`: with
    `ProviderUnavailable` before the first chunk, `ProviderStreamBroken` after."""
    # One slot: the pump reads at most one chunk ahead of the consumer.
    queue: asyncio.Queue[Chunk | BaseException | object] = asyncio.Queue(maxsize=1)
    pump = asyncio.create_task(_pump(chunks, queue), name=f"provider-pump:{label}")
    flowed = False
    try:
        while True:
            try:
                async with asyncio.timeout(idle_timeout_s):
                    item = await queue.get()
            except TimeoutError:
                raise _idle_failure(label, idle_timeout_s, flowed=flowed) from None
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, Chunk)
            flowed = True
            yield item
    finally:
        await _cancel(pump)


async def _pump(chunks: AsyncIterator[Chunk],
                queue: asyncio.Queue[Chunk | BaseException | object]) -> None:
    try:
        async for chunk in chunks:
            await queue.put(chunk)
    except Exception as exc:  # handed to the consumer, which re-raises it
        await queue.put(exc)
    else:
        await queue.put(_END)
    finally:
        # Cancelled while waiting for the consumer, the provider is suspended at a `yield`
        # rather than in its SDK: close it explicitly instead of leaving that to the GC.
        if isinstance(chunks, AsyncGenerator):
            await chunks.aclose()


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait until it has finished (its HTTP response closed)."""
    if task.done():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # our own cancellation, not only the pump's


def _idle_failure(label: str, idle_timeout_s: float, *, flowed: bool) -> ProviderFailure:
    if flowed:
        return ProviderStreamBroken(f"{label} sent nothing for {idle_timeout_s:g} s mid-answer")
    return ProviderUnavailable(f"{label} sent nothing for {idle_timeout_s:g} s")


def backoff_delay(attempt: int, *, base_s: float, max_s: float,
                  retry_after: float | None = None) -> float:
    """Seconds before retry number `attempt` (0-based): the upstream's Retry-After when it
    gave one, else exponential backoff with jitter; never more than `max_s`."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), max_s)
    return min(base_s * 2.0**attempt * random.uniform(0.5, 1.0), max_s)
