"""The database being unreachable, told apart from everything else that can go wrong in SQL.

Every `Repo` method is wrapped by `translate_errors`: an error that means "the database
cannot be reached right now" (connection refused or lost, the server starting up or shutting
down, the pool exhausted by dead connections) becomes `StorageUnavailable`, the one
retryable `storage_unavailable` code every transport answers with. Any other error (a bug, a
constraint) stays what it is, so it is never hidden behind "try again later".
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import exc as sa

from chatcast.core.errors import StorageUnavailable

try:  # asyncpg is only needed for PostgreSQL
    import asyncpg.exceptions as pg  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - installed with the project
    pg = None

P = ParamSpec("P")
T = TypeVar("T")

#: asyncpg errors that mean the server cannot serve this connection (SQLSTATE classes 08,
#: 57P01-57P03, 53300), and its own "the connection is gone" errors.
_PG_DOWN: tuple[type[BaseException], ...] = () if pg is None else (
    pg.PostgresConnectionError, pg.ConnectionDoesNotExistError, pg.CannotConnectNowError,
    pg.AdminShutdownError, pg.CrashShutdownError, pg.TooManyConnectionsError,
    pg.InterfaceError)

#: SQLite's words for a database file it cannot use right now.
_SQLITE_DOWN = ("database is locked", "unable to open database", "disk i/o error")


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says the database cannot be reached, as opposed to
    a statement that failed."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if _down(e):
            return True
        todo += [e.__cause__, e.__context__, getattr(e, "orig", None)]
    return False


def _down(e: BaseException) -> bool:
    if isinstance(e, OSError | ConnectionError | sa.DisconnectionError | sa.TimeoutError):
        return True  # refused, reset, unreachable; or no pooled connection in time
    if isinstance(e, sa.DBAPIError) and e.connection_invalidated:
        return True
    if isinstance(e, sa.InterfaceError):
        return True  # the driver's connection is closed or broken
    if _PG_DOWN and isinstance(e, _PG_DOWN):
        return True
    return isinstance(e, sqlite3.OperationalError) and \
        any(words in str(e).lower() for words in _SQLITE_DOWN)


def translate_errors(
        method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Decorate an async store method: "the database is unreachable" becomes
    StorageUnavailable (chained to the original, which stays in the log's cause)."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except StorageUnavailable:
            raise
        except Exception as exc:
            if is_unavailable(exc):
                raise StorageUnavailable() from exc
            raise

    return wrapper
