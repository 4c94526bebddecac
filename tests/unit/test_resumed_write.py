"""A write started in one task and pushed back is finished by another, exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from chatcast.server.asgi_internals import Resumed as _Resumed


async def _started(coro: Coroutine[Any, Any, None]) -> _Resumed:
    yielded = coro.send(None)  # runs up to its first real suspension, as the fan-out does
    return _Resumed(coro, yielded)


async def test_a_suspended_write_completes_in_the_task_that_awaits_it() -> None:
    writable = asyncio.Event()
    written: list[str] = []

    async def send() -> None:
        await writable.wait()
        written.append("frame")

    resumed = await _started(send())
    assert written == []
    waiter = asyncio.create_task(_await(resumed))
    await asyncio.sleep(0)
    writable.set()
    await asyncio.wait_for(waiter, 1)
    assert written == ["frame"]


async def test_cancelling_the_waiter_cancels_the_write() -> None:
    cancelled: list[bool] = []

    async def send() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    waiter = asyncio.create_task(_await(await _started(send())))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert cancelled == [True]


async def test_an_error_of_the_write_reaches_the_waiter() -> None:
    gate = asyncio.Event()

    async def send() -> None:
        await gate.wait()
        raise ConnectionResetError("peer gone")

    waiter = asyncio.create_task(_await(await _started(send())))
    gate.set()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(waiter, 1)


async def _await(resumed: _Resumed) -> None:
    await resumed
