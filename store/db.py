"""The async engine (one per process) and migrations."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.util import await_only
from sqlmodel.ext.asyncio.session import AsyncSession

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


def normalize_url(url: str) -> str:
    """Accept the usual spellings and pick the async driver."""
    for prefix, async_prefix in (("postgres://", "postgresql+asyncpg://"),
                                 ("postgresql://", "postgresql+asyncpg://"),
                                 ("sqlite://", "sqlite+aiosqlite://")):
        if url.startswith(prefix):
            return async_prefix + url[len(prefix):]
    return url


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{data_dir / 'chatcast.db'}"


def make_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        # One connection for the process: SQLite has one writer at a time, and writers on
        # several connections meet SQLITE_BUSY and sleep in its busy handler (1 … 100 ms
        # steps) while they hold their connections. Under a burst of starts that slept for
        # seconds; one connection queues them in order on the event loop instead.
        pool: dict[str, Any] = {} if make_url(url).database in (None, "", ":memory:") \
            else {"pool_size": 1, "max_overflow": 0, "pool_timeout": 60}
        engine = create_async_engine(url, connect_args={"timeout": 30}, **pool)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=pool_size)
    if engine.dialect.name == "postgresql":
        _check_on_checkout(engine)
    return engine


#: A pooled PostgreSQL connection that has been idle for longer than this is pinged (one
#: round trip) before it is handed out; one used more recently is not.
PING_IDLE_S = 2.0


def _check_on_checkout(engine: AsyncEngine) -> None:
    """What makes the first query after a database restart work, without SQLAlchemy's
    `pool_pre_ping` (which its asyncpg adapter runs as BEGIN, `;`, ROLLBACK: three round
    trips on every checkout, 11.8 % of a PostgreSQL server's samples at a burst).

    At checkout, a connection is refused (`DisconnectionError`: the pool drops it and hands
    out another, connecting a new one if needed) when
    - asyncpg already knows it is closed: a restarted or stopped server closes its
      connections' sockets, and asyncpg sees that without a round trip; or
    - it was idle for more than `PING_IDLE_S` and a one-round-trip `;` (simple query
      protocol, outside any transaction) fails: a connection the server dropped without
      closing its socket, e.g. a network that went away while it was idle.
    A connection that dies between its last use and a checkout within `PING_IDLE_S`, with
    no closed socket to show for it, fails its statement instead: that call answers
    `storage_unavailable` (retryable) and SQLAlchemy invalidates the whole pool, so the
    calls after it connect afresh."""

    @event.listens_for(engine.sync_engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        driver = dbapi_conn.driver_connection
        if driver.is_closed():
            raise DisconnectionError("the connection was closed")
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since <= PING_IDLE_S:
            return  # new, or used a moment ago
        try:
            await_only(driver.execute(";"))
        except Exception as exc:
            raise DisconnectionError("the connection failed its ping") from exc


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    # Imported here: a server process that does not migrate starts without alembic and its
    # imports (the app's import went 1.10 -> 0.75 s in one measurement here).
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return cfg


def migrate(url: str) -> None:
    """Bring the schema to the newest revision (creates the SQLite file's folder if needed)."""
    parsed = make_url(normalize_url(url))
    if parsed.drivername.startswith("sqlite") and parsed.database:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    from alembic import command

    command.upgrade(alembic_config(url), "head")


async def migrate_async(url: str) -> None:
    await asyncio.to_thread(migrate, url)
