"""What every provider stream gets, whatever its SDK: an idle timeout and a guaranteed close.

The provider's iterator is driven by a pump task owned by `guarded`. Closing the guarded
stream in any way (the consumer is cancelled, it stops iterating, or the idle timeout fires)
cancels that task and closes the provider's iterator before `guarded` returns, so no task
and no upstream response outlives the stream (a provider that swallows its cancellation and
goes on waiting is abandoned after `CANCEL_WAIT_S`, logged, so its answer still ends)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from chatcast.providers.base import (
    Chunk,
    ProviderFailure,
    ProviderStreamBroken,
    ProviderUnavailable,
    Usage,
)

log = logging.getLogger("chatcast.providers")

#: How long a cancelled provider may take to finish (close its response) before it is
#: abandoned; the built-in providers take milliseconds.
CANCEL_WAIT_S = 5.0


async def guarded(chunks: AsyncIterator[Chunk], *, label: str,
                  idle_timeout_s: float) -> AsyncGenerator[Chunk, None]:
    """`chunks`, failing when the provider sends nothing for `idle_timeout_s`: with
    `ProviderUnavailable` before the first chunk, `ProviderStreamBroken` after.

    The provider is read by its own task into an inbox, so it never waits for the consumer;
    whatever arrived while the consumer was busy is handed over as one merged chunk (a
    consumer that keeps up gets every chunk as it came)."""
    inbox = _Inbox(idle_timeout_s)
    pump = asyncio.create_task(_pump(chunks, inbox), name=f"provider-pump:{label}")
    try:
        while True:
            if not inbox.ready():
                await inbox.wait()
            if inbox.pending():
                yield inbox.take()
                continue
            if inbox.idle:
                raise _idle_failure(label, idle_timeout_s, flowed=inbox.flowed)
            if inbox.error is not None:
                raise inbox.error
            return  # ended
    finally:
        inbox.close()
        await _cancel(pump, label)


class _Inbox:
    """Chunks read but not yet taken, the end of the stream, and the idle watchdog: one
    timer per stream, re-armed only when it fires (not one per chunk)."""

    __slots__ = ("_loop", "_timer", "_waiter", "at", "ended", "error", "flowed", "idle",
                 "idle_timeout_s", "last", "metadata", "parts", "reasoning", "usage")

    def __init__(self, idle_timeout_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self.idle_timeout_s = idle_timeout_s
        self.parts: list[str] = []
        self.reasoning: list[str] = []
        self.usage: Usage | None = None
        self.metadata: dict[str, Any] | None = None
        self.at: float | None = None
        self.ended = False
        self.error: BaseException | None = None
        self.idle = False
        self.flowed = False
        self.last = self._loop.time()
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = self._loop.call_at(
            self.last + idle_timeout_s, self._watch)

    def ready(self) -> bool:
        return self.pending() or self.ended or self.idle

    def pending(self) -> bool:
        return (bool(self.parts) or bool(self.reasoning) or self.usage is not None
                or self.metadata is not None)

    def put(self, chunk: Chunk) -> None:
        self.last = self._loop.time()
        if chunk.output and self.at is None:
            self.at = time.time()
        if chunk.text:
            self.parts.append(chunk.text)
        if chunk.reasoning:
            self.reasoning.append(chunk.reasoning)
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.metadata:
            self.metadata = {**(self.metadata or {}), **chunk.metadata}
        self._wake()

    def end(self, error: BaseException | None = None) -> None:
        self.ended, self.error = True, error
        self._wake()

    def take(self) -> Chunk:
        chunk = Chunk(text=_joined(self.parts), usage=self.usage, at=self.at,
                      reasoning=_joined(self.reasoning), metadata=self.metadata)
        self.parts.clear()
        self.reasoning.clear()
        self.usage = self.at = self.metadata = None
        self.flowed = self.flowed or chunk.output
        return chunk

    async def wait(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _watch(self) -> None:
        if self.ended:
            self._timer = None
            return
        due = self.last + self.idle_timeout_s
        if self._loop.time() >= due:
            self._timer = None
            self.idle = True
            self._wake()
        else:
            self._timer = self._loop.call_at(due, self._watch)


def _joined(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else "".join(parts)


async def _pump(chunks: AsyncIterator[Chunk], inbox: _Inbox) -> None:
    try:
        async for chunk in chunks:
            inbox.put(chunk)
    except Exception as exc:  # handed to the consumer, which re-raises it
        inbox.end(exc)
    else:
        inbox.end()
    finally:
        # Cancelled (the consumer is gone), the provider may be suspended at a `yield`
        # rather than in its SDK: close it explicitly instead of leaving that to the GC.
        if isinstance(chunks, AsyncGenerator):
            await chunks.aclose()


async def _cancel(task: asyncio.Task[None], label: str) -> None:
    """Cancel `task` and wait until it has finished (its HTTP response closed), for
    `CANCEL_WAIT_S` at most: a provider that swallows its cancellation and goes on waiting
    (an application's own provider may) is abandoned, logged, rather than holding the stop
    of its answer for ever."""
    if task.done():
        return
    task.cancel()
    # Our own cancellation, while we wait, is raised here (the pump stays cancelled).
    done, _ = await asyncio.wait({task}, timeout=CANCEL_WAIT_S)
    if not done:
        log.error("provider ignored its cancellation: abandoned",
                  extra={"provider": label, "waited_s": CANCEL_WAIT_S})
        return
    if not task.cancelled() and (exc := task.exception()) is not None:
        raise exc


def _idle_failure(label: str, idle_timeout_s: float, *, flowed: bool) -> ProviderFailure:
    failure: ProviderFailure
    if flowed:
        failure = ProviderStreamBroken(f"{label} sent nothing for {idle_timeout_s:g} s "
                                       "mid-answer")
    else:
        failure = ProviderUnavailable(f"{label} sent nothing for {idle_timeout_s:g} s")
    failure.idle = True
    return failure


def scenario(failure: ProviderFailure, *, flowed: bool) -> str:
    """Which way a provider attempt failed: `idle_timeout`, `mid_stream` (after text had
    flowed) or `before_first_token`."""
    if failure.idle:
        return "idle_timeout"
    if flowed or isinstance(failure, ProviderStreamBroken):
        return "mid_stream"
    return "before_first_token"
