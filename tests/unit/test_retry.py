"""The one retry helper: its schedule, its bounds, its forever mode and its callback."""

from __future__ import annotations

import asyncio

import pytest

from chatcast.core.retry import Backoff, retry

FAST = Backoff(base_s=0.001, max_s=0.002)


def test_the_schedule_doubles_up_to_the_cap_and_honours_retry_after() -> None:
    backoff = Backoff(base_s=0.25, max_s=5.0)
    assert [backoff.delay(a) for a in range(7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff.delay(10_000) == 5.0  # no overflow however long it has failed
    assert backoff.delay(0, retry_after=3) == 3 and backoff.delay(0, retry_after=60) == 5.0
    jittered = Backoff(base_s=1, max_s=100, jitter=0.5)
    assert all(4 <= jittered.delay(3) <= 8 for _ in range(100))
    with pytest.raises(ValueError):
        Backoff(base_s=1, max_s=10, jitter=2)


async def test_retries_until_it_works_telling_each_failure() -> None:
    calls: list[int] = []
    told: list[tuple[int, str, float]] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError(f"down {len(calls)}")
        return "up"

    result = await retry(flaky, retry_on=ConnectionError, backoff=FAST, attempts=5,
                         on_retry=lambda n, exc, pause: told.append((n, str(exc), pause)))
    assert result == "up" and len(calls) == 3
    assert told == [(1, "down 1", 0.001), (2, "down 2", 0.002)]


async def test_gives_up_with_the_last_error_and_never_retries_other_errors() -> None:
    calls: list[int] = []

    async def down() -> None:
        calls.append(1)
        raise ConnectionError(f"attempt {len(calls)}")

    with pytest.raises(ConnectionError, match="attempt 4"):
        await retry(down, retry_on=ConnectionError, backoff=FAST, attempts=4)

    async def broken() -> None:
        calls.append(1)
        raise KeyError("bug")

    calls.clear()
    with pytest.raises(KeyError):
        await retry(broken, retry_on=ConnectionError, backoff=FAST, attempts=4)
    assert len(calls) == 1


async def test_forever_means_until_cancelled() -> None:
    calls: list[int] = []
    enough = asyncio.Event()

    async def down() -> None:
        calls.append(1)
        if len(calls) == 50:
            enough.set()
        raise ConnectionError("down")

    task = asyncio.create_task(retry(down, retry_on=ConnectionError, backoff=FAST,
                                     attempts=None))
    await asyncio.wait_for(enough.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(calls) >= 50
