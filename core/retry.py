"""Retrying with bounded exponential backoff: one helper for every retry loop.

`Backoff` is the schedule (exponential from `base_s`, capped at `max_s`, optionally
jittered, an upstream's Retry-After honoured); `retry` calls an operation until it succeeds,
fails with an error it does not retry, runs out of attempts (the last error is raised), or,
with `attempts=None`, forever until cancelled. `on_retry` hears of each failed attempt
before the pause (for logging).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Pause before retry number `attempt` (0-based): `base_s * factor**attempt`, at most
    `max_s`. With `jitter` j, the exponential pause is scaled by a uniform factor in
    [1 - j, 1] before the cap, so clients that failed together do not retry together."""

    base_s: float
    max_s: float
    factor: float = 2.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if not (self.base_s >= 0 and self.max_s >= 0 and self.factor >= 1
                and 0 <= self.jitter <= 1):
            raise ValueError(f"invalid backoff {self}")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry `attempt`; the upstream's `retry_after` when it gave
        one (never more than `max_s`)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_s)
        exponent = min(attempt, 64)  # the cap is reached long before; no float overflow
        pause = self.base_s * self.factor ** exponent
        if self.jitter:
            pause *= random.uniform(1 - self.jitter, 1)
        return min(pause, self.max_s)


#: Told of each failed attempt before the pause: (attempt number from 1, error, pause in s).
OnRetry = Callable[[int, BaseException, float], None]


async def retry(operation: Callable[[], Awaitable[T]], *,
                retry_on: type[BaseException] | tuple[type[BaseException], ...],
                backoff: Backoff, attempts: int | None,
                on_retry: OnRetry | None = None) -> T:
    """`await operation()` until it returns. An error of a `retry_on` type is retried after
    the backoff's pause, at most `attempts` calls in all (None: until cancelled); the error
    of the last attempt is raised. Any other error is raised at once."""
    if attempts is not None and attempts < 1:
        raise ValueError("attempts must be at least 1")
    attempt = 0
    while True:
        try:
            return await operation()
        except retry_on as exc:
            attempt += 1
            if attempts is not None and attempt >= attempts:
                raise
            pause = backoff.delay(attempt - 1)
            if on_retry is not None:
                on_retry(attempt, exc, pause)
        await asyncio.sleep(pause)
