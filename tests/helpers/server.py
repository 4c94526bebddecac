"""A real chatcast server process on a free port (`python -m server.cli serve`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from tests.helpers.ports import free_port
from tests.helpers.threads import run_in_thread

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Variables of the outer environment that must not leak into a test server (a developer's
#: API key would make tests call a real provider; a DATABASE_URL would touch a real database).
_SCRUBBED_PREFIXES = ("CHATCAST_", "OPENAI_", "GEMINI_", "GOOGLE_")
_SCRUBBED = {"DATABASE_URL", "REDIS_URL"}


class ServerFailed(RuntimeError):
    pass


class ServerProcess:
    """One server process. Output (stdout and stderr) goes to `log_path`.

    `env` is added to a scrubbed copy of the environment, e.g. {"REDIS_URL": redis_url,
    "DATABASE_URL": pg_url, "CHATCAST_DEMO_TOKENS_PER_S": "200"}. The working directory is the
    scratch data dir, so a `.env` in the repo never applies. With `migrate=True` the database
    (DATABASE_URL, else the SQLite file in the data dir) is migrated before the start.
    """

# Test helpers take `timeout=` with a default on purpose: every wait in a test must be
# bounded, and a helper's own deadline gives a better message than an outer asyncio.timeout.

    def __init__(self, data_dir: Path, *, port: int | None = None,
                 env: Mapping[str, str] | None = None, args: Sequence[str] = (),
                 command: Sequence[str] | None = None, migrate: bool = True) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self._fixed_port = port is not None
        self.extra_env = dict(env or {})
        self.args = list(args)
        self.command = list(command) if command is not None else None
        self.migrate = migrate
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "server.log"
        self.starts = 0
        #: What answers 200 once the server is ready (a host app may mount chatcast).
        self.health_path = "/healthz"

    # -- addresses ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    @property
    def database_url(self) -> str:
        from chatcast.store.db import normalize_url, sqlite_url

        url = self.extra_env.get("DATABASE_URL")
        return normalize_url(url) if url else sqlite_url(self.data_dir.resolve())

    # -- lifecycle ----------------------------------------------------------------------

    def argv(self) -> list[str]:
        if self.command is not None:  # a stand-in; "{port}" in it is filled in
            return [part.replace("{port}", str(self.port)) for part in self.command] + self.args
        return [sys.executable, "-m", "chatcast.server.cli", "serve", "--host", "127.0.0.1",
                "--port", str(self.port), *self.args]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in _SCRUBBED and not k.startswith(_SCRUBBED_PREFIXES)}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env["CHATCAST_DATA_DIR"] = str(self.data_dir)
        env["CHATCAST_SECRET_KEY"] = "test-secret-key-for-chatcast-tests-only"
        env.update(self.extra_env)
        return env

    def spawn(self) -> None:
        """Start the process without waiting (see `wait_ready`)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.migrate and self.starts == 0:
            from chatcast.store.db import migrate

            url = self.database_url
            run_in_thread(lambda: migrate(url))
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts}: {' '.join(self.argv())}\n".encode())
            log.flush()
            # Own session: a kill of the group also reaches uvicorn worker processes.
            self.proc = subprocess.Popen(
                self.argv(), cwd=self.data_dir, env=self.environment(),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    async def start(self, timeout: float = 30.0) -> ServerProcess:
        """Spawn and wait for GET /healthz. If the port was taken meanwhile, try another."""
        for _attempt in range(3):
            self.spawn()
            try:
                await self.wait_ready(timeout)
                return self
            except ServerFailed:
                if self._fixed_port or "in use" not in self.logs()[-2000:]:
                    raise
                self.port = free_port()
        raise ServerFailed(f"server could not bind a port:\n{self.log_tail()}")

    async def wait_ready(self, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with httpx.AsyncClient(trust_env=False, timeout=2.0) as http:
            while True:
                if self.returncode is not None:
                    raise ServerFailed(f"server exited with {self.returncode} before "
                                       f"/healthz answered:\n{self.log_tail()}")
                try:
                    if (await http.get(self.url + self.health_path)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if loop.time() > deadline:
                    raise ServerFailed(f"/healthz not ready after {timeout}s:\n"
                                       f"{self.log_tail()}")
                await asyncio.sleep(0.05)

    async def restart(self, timeout: float = 30.0) -> ServerProcess:
        """Start again on the same port (after a kill or terminate)."""
        if self.returncode is None and self.proc is not None:
            self.kill()
            self.wait()
        self._fixed_port = True
        return await self.start(timeout)

    def kill(self, sig: int = signal.SIGKILL, *, group: bool = False) -> None:
        """Send `sig` (default SIGKILL) to the server, or to its whole process group."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)

    def terminate(self) -> None:
        """SIGTERM: a graceful shutdown (clients get close 1001)."""
        self.kill(signal.SIGTERM)

    def wait(self, timeout: float = 15.0) -> int:
        """Block until the process exits; its return code."""
        assert self.proc is not None, "server not started"
        return self.proc.wait(timeout)

    async def wait_async(self, timeout: float = 15.0) -> int:
        """`wait` without blocking the event loop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (code := self.returncode) is None:
            if loop.time() > deadline:
                raise TimeoutError(f"server pid {self.pid} still running after {timeout}s")
            await asyncio.sleep(0.02)
        return code

    async def stop(self, timeout: float = 15.0) -> int | None:
        """Terminate gracefully, kill the group if it lingers. Safe to call twice."""
        if self.proc is None:
            return None
        if self.returncode is None:
            self.terminate()
            with contextlib.suppress(TimeoutError):
                await self.wait_async(timeout)
        self._kill_group()
        return self.proc.wait(5)

    def _kill_group(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    # -- logs ---------------------------------------------------------------------------

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])

    async def wait_log(self, needle: str, timeout: float = 10.0, *, times: int = 1) -> None:
        """Wait until `needle` appears in the server's output (at least `times` times)."""
        deadline = time.monotonic() + timeout
        while self.logs().count(needle) < times:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{needle!r} not {times} time(s) in server log after "
                                   f"{timeout}s:\n{self.log_tail()}")
            await asyncio.sleep(0.05)
