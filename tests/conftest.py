"""Session-wide fixtures: free ports, a private redis-server, throw-away PostgreSQL databases,
migrated databases for both SQL backends, and real chatcast server processes.

Every resource is private to one pytest process (one xdist worker), so `pytest -n 2` is safe.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal, Protocol

import pytest

from tests.helpers.pg import PgAdmin, PostgresUnavailable
from tests.helpers.ports import free_port as _free_port
from tests.helpers.redis_cluster import RedisCluster, redis_cli_binary
from tests.helpers.redis_server import RedisServer, redis_binary
from tests.helpers.server import ServerProcess
from tests.helpers.threads import run_in_thread

DbKind = Literal["sqlite", "postgresql"]

# -- ports ----------------------------------------------------------------------------------


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return _free_port()


@pytest.fixture
def key_prefix() -> str:
    """A unique prefix for Redis keys (or any shared namespace) of one test."""
    return f"t{secrets.token_hex(4)}:"


# -- Redis ----------------------------------------------------------------------------------


def _require_redis() -> str:
    binary = redis_binary()
    if binary is None:
        pytest.skip("redis-server binary not found; Redis tests skipped")
    return binary


@pytest.fixture(scope="session")
def redis_session_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The session's private redis-server (shared by tests; use `key_prefix`)."""
    binary = _require_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis"), binary=binary).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_session_server: RedisServer) -> str:
    """`redis://127.0.0.1:<port>/0` of the session's private redis-server."""
    return redis_session_server.url


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[[], RedisServer]]:
    """Factory of private redis-servers for tests that `.kill()` / `.restart()` them;
    all are stopped after the test."""
    binary = _require_redis()
    started: list[RedisServer] = []

    def make() -> RedisServer:
        workdir = tmp_path / f"redis{len(started)}"
        workdir.mkdir()
        server = RedisServer(workdir, binary=binary)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """The session's private Redis Cluster (3 masters + 3 replicas), shared by tests that
    do not break it (use `key_prefix`)."""
    _require_redis()
    if redis_cli_binary() is None:
        pytest.skip("redis-cli not found; Redis Cluster tests skipped")
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[Callable[[], RedisCluster]]:
    """Factory of private Redis Clusters for tests that kill nodes or move slots."""
    _require_redis()
    if redis_cli_binary() is None:
        pytest.skip("redis-cli not found; Redis Cluster tests skipped")
    started: list[RedisCluster] = []

    def make() -> RedisCluster:
        cluster = RedisCluster(tmp_path / f"cluster{len(started)}")
        started.append(cluster)
        return cluster.start()

    yield make
    for cluster in started:
        cluster.stop()


# -- SQL databases --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_admin() -> PgAdmin:
    """Access to the machine's PostgreSQL; skips (once, cached) when it is unreachable."""
    try:
        return PgAdmin.connect()
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 unreachable: {exc}")


@pytest.fixture(scope="session")
def pg_url(pg_admin: PgAdmin) -> Iterator[str]:
    """A migrated database of this session, `postgresql+asyncpg://…/chatcast_test_…`,
    dropped at the end. Shared by the session's tests: use fresh ids (they are ULIDs)."""
    name = pg_admin.create(pg_admin.new_name())
    url = pg_admin.url(name)
    try:
        _migrate(url)
        yield url
    finally:
        pg_admin.drop(name)


@pytest.fixture(scope="session")
def _pg_template(pg_admin: PgAdmin) -> Iterator[str]:
    """A migrated database nobody connects to, cloned (CREATE DATABASE … TEMPLATE) per test."""
    name = pg_admin.create(pg_admin.new_name("tpl_"))
    try:
        _migrate(pg_admin.url(name))
        yield name
    finally:
        pg_admin.drop(name)


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "chatcast.db"
    _migrate(f"sqlite+aiosqlite:///{path}")
    return path


class DatabaseFactory(Protocol):
    def __call__(self, kind: DbKind, *, migrated: bool = True) -> str: ...


@pytest.fixture
def make_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DatabaseFactory]:
    """`make_database("sqlite" | "postgresql", migrated=True) -> url`: a fresh, private
    database (empty when migrated=False), removed after the test."""
    dropped: list[tuple[PgAdmin, str]] = []
    count = 0

    def make(kind: DbKind, *, migrated: bool = True) -> str:
        nonlocal count
        count += 1
        if kind == "sqlite":
            path = tmp_path / f"db{count}" / "chatcast.db"
            path.parent.mkdir()
            if migrated:
                shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
            return f"sqlite+aiosqlite:///{path}"
        admin: PgAdmin = request.getfixturevalue("pg_admin")
        template = request.getfixturevalue("_pg_template") if migrated else None
        name = admin.create(admin.new_name(), template=template)
        dropped.append((admin, name))
        return admin.url(name)

    yield make
    for admin, name in dropped:
        admin.drop(name)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_kind(request: pytest.FixtureRequest) -> DbKind:
    """"sqlite" or "postgresql" (parametrizes every test that uses it)."""
    kind: DbKind = request.param
    return kind


@pytest.fixture
def db_url(db_kind: DbKind, make_database: DatabaseFactory) -> str:
    """A fresh, migrated database per test, once for SQLite (a tmp file) and once for
    PostgreSQL (a new database); the URL names the async driver."""
    return make_database(db_kind)


def _migrate(url: str) -> None:
    from chatcast.store.db import migrate

    run_in_thread(lambda: migrate(url))


# -- chatcast servers -----------------------------------------------------------------------


class ServerFactory(Protocol):
    def __call__(self, *, env: Mapping[str, str] | None = None, args: Sequence[str] = (),
                 port: int | None = None, data_dir: Path | None = None,
                 migrate: bool = True, start: bool = True) -> Awaitable[ServerProcess]: ...


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    """`srv = await server(env={...})`: a started chatcast process (see ServerProcess).
    Servers sharing a database also share CHATCAST_SECRET_KEY, so cookies work on all of
    them. Each is stopped after the test; its log tail is printed (shown on failure)."""
    started: list[ServerProcess] = []

    async def make(*, env: Mapping[str, str] | None = None, args: Sequence[str] = (),
                   port: int | None = None, data_dir: Path | None = None,
                   migrate: bool = True, start: bool = True) -> ServerProcess:
        proc = ServerProcess(data_dir or tmp_path / f"server{len(started)}", port=port,
                             env=env, args=args, migrate=migrate)
        started.append(proc)
        if start:
            await proc.start()
        return proc

    yield make
    for proc in started:
        code = await proc.stop()
        print(f"--- server {proc.url} (exit {code}), log {proc.log_path}:\n{proc.log_tail()}")
