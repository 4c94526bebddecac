"""Run a coroutine to completion from synchronous code, whatever loop is around.

Sync fixtures and helpers (and alembic's env.py, which calls `asyncio.run`) must not touch the
test session's event loop, so the work runs on a fresh loop in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def run_coro(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """`asyncio.run(factory())` in a worker thread; returns its result or raises its error."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def run_in_thread(func: Callable[[], T]) -> T:
    """Call a blocking function that may start its own event loop (e.g. `store.db.migrate`)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(func).result()
