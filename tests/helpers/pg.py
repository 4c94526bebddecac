"""Throw-away PostgreSQL databases on the machine's server (127.0.0.1:5432, trust auth)."""

from __future__ import annotations

import functools
import os
import re
import secrets

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from tests.helpers.threads import run_coro

#: CHATCAST_TEST_PG_ADMIN overrides where to connect, e.g.
#: postgresql+asyncpg://postgres@127.0.0.1:5432/test. The database named there is only used
#: to run CREATE / DROP DATABASE.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5432
DEFAULT_MAINTENANCE_DB = "test"
CANDIDATE_USERS = ("postgres", "root")

_SAFE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresUnavailable(Exception):
    pass


class PgAdmin:
    """Creates and drops databases; every name it makes starts with `chatcast_test_`."""

    def __init__(self, admin_url: str, user: str) -> None:
        self.admin_url, self.user = admin_url, user

    @classmethod
    def connect(cls, connect_timeout: float = 5.0) -> PgAdmin:
        """Find a user that can create databases, or raise PostgresUnavailable saying why."""
        override = os.environ.get("CHATCAST_TEST_PG_ADMIN")
        urls = [override] if override else [
            f"postgresql+asyncpg://{user}@{DEFAULT_HOST}:{DEFAULT_PORT}/{DEFAULT_MAINTENANCE_DB}"
            for user in CANDIDATE_USERS]
        errors = []
        for url in urls:
            try:
                user = run_coro(functools.partial(_whoami, url, connect_timeout))
            except (OSError, SQLAlchemyError, TimeoutError, PostgresUnavailable) as exc:
                errors.append(f"{url}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
                continue
            return cls(url, user)
        raise PostgresUnavailable("; ".join(errors))

    def url(self, database: str) -> str:
        """SQLAlchemy URL (async driver) of a database on this server."""
        base, _, _ = self.admin_url.rpartition("/")
        return f"{base}/{database}"

    def new_name(self, tag: str = "") -> str:
        return f"chatcast_test_{tag}{secrets.token_hex(6)}"

    def create(self, name: str, template: str | None = None) -> str:
        _check(name)
        sql = f'CREATE DATABASE "{name}"'
        if template is not None:
            _check(template)
            sql += f' TEMPLATE "{template}"'
        run_coro(functools.partial(_execute, self.admin_url, sql))
        return name

    def drop(self, name: str) -> None:
        _check(name)
        run_coro(functools.partial(
            _execute, self.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _execute(url: str, sql: str, connect_timeout: float = 10.0) -> None:
    engine = create_async_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT",
                                 connect_args={"timeout": connect_timeout})
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


async def _whoami(url: str, connect_timeout: float) -> str:
    engine = create_async_engine(url, poolclass=NullPool,
                                 connect_args={"timeout": connect_timeout})
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(text(
                "SELECT current_user, rolcreatedb OR rolsuper FROM pg_roles "
                "WHERE rolname = current_user"))).one()
    finally:
        await engine.dispose()
    if not row[1]:
        raise PostgresUnavailable(f"user {row[0]!r} may not create databases")
    return str(row[0])


def _check(name: str) -> None:
    if not _SAFE_NAME.match(name):
        raise ValueError(f"unsafe database name {name!r}")
