"""A private PostgreSQL 15 a test may crash and start again (the machine's own server on
5432 is never touched).

`initdb` + `pg_ctl` from /usr/lib/postgresql/15/bin on a free port, with a data directory
under /tmp; as root both run through the `postgres` account (`runuser -u postgres`), which
owns the directory. `fsync=off`: much faster on a loaded disk, and a crash of the server
alone (not of the machine) still loses no commit, since each commit waits for its WAL
write to the OS (`synchronous_commit` stays on: with it off, `-m immediate` loses the
latest commits).

`crash()` is `pg_ctl stop -m immediate` (no shutdown checkpoint: crash recovery at the next
start, like a killed server). `start()` is robust on a busy machine: a stale
`postmaster.pid` whose process is gone is removed, `pg_ctl start -w -t 60` is tried a few
times, and it returns only once a real connection succeeds; on failure it raises with the
server's own log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.helpers.ports import free_port
from tests.helpers.threads import run_coro

PG_BIN = Path("/usr/lib/postgresql/15/bin")
START_TRIES = 3


class PrivatePgUnavailable(Exception):
    """This machine cannot run a private PostgreSQL (no binaries, or no postgres account)."""


def _as_postgres() -> list[str]:
    """The prefix that runs a command as the `postgres` account (nothing if we are it)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser") is None:
        raise PrivatePgUnavailable("runuser not found (needed to run PostgreSQL as root)")
    return ["runuser", "-u", "postgres", "--"]


def _owner_ids() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise PrivatePgUnavailable("no postgres account on this machine") from None
    return entry.pw_uid, entry.pw_gid


class PrivatePostgres:
    """One private server. `url(db)` is its SQLAlchemy URL; `create_database(name)` makes
    a database on it."""

    def __init__(self, root: Path | None = None, port: int | None = None) -> None:
        if not (PG_BIN / "initdb").exists():
            raise PrivatePgUnavailable(f"PostgreSQL 15 not found in {PG_BIN}")
        self.prefix = _as_postgres()
        self.root = root or Path(tempfile.mkdtemp(prefix="chatcast-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.logfile = self.root / "postgres.log"
        self.port = port or free_port()
        self.starts = 0

    # -- addresses ----------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    # -- lifecycle ----------------------------------------------------------------------

    def init(self) -> PrivatePostgres:
        """initdb (trust auth, user postgres) and the settings of a throw-away server."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(exist_ok=True)
        ids = _owner_ids()
        if ids is not None:
            for path in (self.root, self.sockets):
                os.chown(path, *ids)
        self._run([str(PG_BIN / "initdb"), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                   "-D", str(self.data)], timeout=180)
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.sockets}'\n"
                       # A crash of the server (not of the machine) loses no commit
                       # with fsync off, as long as commits wait for their WAL write.
                       "fsync = off\nsynchronous_commit = on\nfull_page_writes = off\n"
                       "max_connections = 100\nshared_buffers = 32MB\n")
        return self

    def start(self, timeout: float = 90.0) -> PrivatePostgres:
        """Start the server and wait until it takes a connection."""
        last = ""
        for _attempt in range(START_TRIES):
            self._remove_stale_pid()
            result = self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.logfile),
                                  timeout=90, check=False)
            if result.returncode == 0 and self._wait_connectable(timeout):
                self.starts += 1
                return self
            last = f"pg_ctl start: rc {result.returncode}: {result.stdout}{result.stderr}"
            # A half-started server would hold the port and the pid file: stop it first.
            self._pg_ctl("stop", "-m", "immediate", "-w", "-t", "30", timeout=60,
                         check=False)
        raise RuntimeError(f"private PostgreSQL did not start on port {self.port}: {last}\n"
                           f"--- {self.logfile}:\n{self.log_tail()}")

    def crash(self) -> None:
        """A hard stop: no shutdown checkpoint, connections cut (`-m immediate`)."""
        self._pg_ctl("stop", "-m", "immediate", "-w", "-t", "60", timeout=90, check=False)
        self._wait_gone(30.0)

    def stop(self) -> None:
        """A fast, clean stop (safe to call when it is not running)."""
        if (self.data / "postmaster.pid").exists():
            self._pg_ctl("stop", "-m", "fast", "-w", "-t", "60", timeout=90, check=False)

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """CREATE DATABASE `name`; its URL."""
        self._psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    async def astart(self, timeout: float = 90.0) -> PrivatePostgres:
        """`start` off the event loop (the test's clients keep reading meanwhile)."""
        return await asyncio.to_thread(self.start, timeout)

    async def acrash(self) -> None:
        await asyncio.to_thread(self.crash)

    @property
    def running(self) -> bool:
        return self._postmaster_pid() is not None

    # -- internals ----------------------------------------------------------------------

    def _run(self, argv: list[str], *, timeout: float,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*self.prefix, *argv], capture_output=True, text=True,
                                timeout=timeout, cwd=self.root, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n"
                               f"{result.stdout}{result.stderr}")
        return result

    def _pg_ctl(self, *args: str, timeout: float,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args],
                         timeout=timeout, check=check)

    def _psql(self, sql: str) -> None:
        self._run([str(PG_BIN.parent / "bin" / "psql"), "-h", str(self.sockets), "-p",
                   str(self.port), "-U", "postgres", "-d", "postgres", "-v",
                   "ON_ERROR_STOP=1", "-c", sql], timeout=60)

    def _postmaster_pid(self) -> int | None:
        """The postmaster's pid from postmaster.pid, if that process exists."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid

    def _remove_stale_pid(self) -> None:
        pidfile = self.data / "postmaster.pid"
        if pidfile.exists() and self._postmaster_pid() is None:
            pidfile.unlink(missing_ok=True)

    def _wait_gone(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._postmaster_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.05)

    def _wait_connectable(self, timeout: float) -> bool:
        """Whether a real connection (a query answered) succeeds within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if run_coro(lambda: _can_query(self.port)):
                return True
            time.sleep(0.2)
        return False

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


async def _can_query(port: int) -> bool:
    import asyncpg  # type: ignore[import-untyped]

    try:
        conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres",
                                     database="postgres", timeout=5)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    try:
        await conn.fetchval("SELECT 1")
        return True
    except (OSError, asyncpg.PostgresError):
        return False
    finally:
        with contextlib.suppress(Exception):
            await conn.close()
