"""Processes under test: chatcast servers, the baseline server, a private redis-server; and
what is read from /proc about them (CPU time, resident memory)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
#: The chatcast source tree under test (default: this checkout).
SERVER_SRC = Path(os.environ.get("CHATCAST_BENCH_SRC", REPO))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# Settings of the outer environment must not leak into a measured server.
_SCRUBBED_PREFIXES = ("CHATCAST_", "OPENAI_", "GEMINI_", "GOOGLE_")
_SCRUBBED = {"DATABASE_URL", "REDIS_URL"}


#: Per-user abuse limits, raised so that one benchmark user may drive the whole load.
BENCH_LIMITS = {"MESSAGES_PER_MINUTE": "1000000", "MAX_GENERATIONS_PER_USER": "100000",
                "MAX_SOCKETS_PER_USER": "100000", "WS_FRAMES_PER_S": "1000000",
                "WS_FRAME_BURST": "1000000", "WS_IDLE_TIMEOUT_S": "3600",
                "MAX_SUBSCRIPTIONS_PER_SOCKET": "1000"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in _SCRUBBED and not k.startswith(_SCRUBBED_PREFIXES)}
    env["PYTHONPATH"] = f"{SERVER_SRC}:{REPO}"
    env.update(extra)
    return env


def pinned(cpu: str | None, cmd: list[str]) -> list[str]:
    if cpu is None or shutil.which("taskset") is None:
        return cmd
    return ["taskset", "-c", cpu, *cmd]


def pin(pid: int, cpu: str | None) -> None:
    """Every thread of a started process onto `cpu` (threads it starts later inherit it).
    A server is started on any core and pinned once it answers: its start-up (imports,
    migrations) then uses both cores instead of queueing on the server's one."""
    if cpu is None:
        return
    cpus = {int(c) for c in cpu.split(",")}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            os.sched_setaffinity(int(task.name), cpus)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (from /proc/<pid>/stat)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def wait_http(port: int, path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port}")


def wait_tcp(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@dataclass
class Server:
    """One or more server processes of one system under test."""

    kind: str  # "baseline" | "chatcast"
    label: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    def rss(self) -> int:
        return sum(rss_bytes(pid) for pid in self.pids)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_baseline(rate: float, cpu: str | None, log: Path) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "benchmarks.baseline_server", "--port", str(port),
           "--rate", str(rate), "--timestamps"]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=clean_env({}), cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT)
    server = Server("baseline", "baseline (websockets)", [proc], [port])
    try:
        wait_tcp(port)
        pin(proc.pid, cpu)
    except BaseException:
        server.stop()
        raise
    return server


def _chatcast_env(data_dir: Path, rate: float, redis_url: str | None,
                  extra: dict[str, str] | None, db_url: str | None) -> dict[str, str]:
    env = {"CHATCAST_DATA_DIR": str(data_dir), "CHATCAST_SECRET_KEY": "bench",
           "CHATCAST_DEMO_TOKENS_PER_S": str(rate), "CHATCAST_DEMO_TIMESTAMPS": "true",
           "CHATCAST_LOG_LEVEL": "WARNING", "CHATCAST_PROVIDER": "demo",
           "DATABASE_URL": db_url or f"sqlite+aiosqlite:///{data_dir}/chatcast.db",
           # The load is one user with many chats and sockets: per-user limits out of the way.
           **{f"CHATCAST_{k}": v for k, v in BENCH_LIMITS.items()}, **(extra or {})}
    if redis_url:
        env["REDIS_URL"] = redis_url
    return clean_env(env)


def migrate(data_dir: Path, db_url: str | None = None) -> None:
    """Create chatcast's schema: in `db_url`, or in `data_dir`/chatcast.db (SQLite)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    full = _chatcast_env(data_dir, 50, None, None, db_url)
    subprocess.run([sys.executable, "-m", "chatcast.server.cli", "migrate"], env=full,
                   cwd=data_dir, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def start_chatcast(label: str, data_dir: Path, *, processes: int = 1, rate: float,
                   redis_url: str | None, cpu: str | None, log: Path,
                   extra: dict[str, str] | None = None, db_url: str | None = None,
                   process_env: list[dict[str, str]] | None = None,
                   start_timeout_s: float = 60.0, migrated: bool = False) -> Server:
    """Start `processes` chatcast servers on one database (SQLite in `data_dir` unless
    `db_url`), migrating it first unless `migrated` (e.g. a copy of a migrated template);
    process i also gets `process_env[i]` (e.g. its own Redis Cluster seed node in
    REDIS_URL)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    full = _chatcast_env(data_dir, rate, redis_url, extra, db_url)
    if not migrated:
        migrate(data_dir, db_url)
    server = Server("chatcast", label)
    for i in range(processes):
        port = free_port()
        cmd = [sys.executable, "-m", "chatcast.server.cli", "serve", "--port", str(port)]
        own = {**full, **process_env[i]} if process_env else full
        with log.open("ab") as out:
            server.procs.append(subprocess.Popen(cmd, env=own, cwd=data_dir, stdout=out,
                                                 stderr=subprocess.STDOUT))
        server.ports.append(port)
    try:
        for port in server.ports:
            wait_http(port, "/healthz", timeout=start_timeout_s)
        for pid in server.pids:
            pin(pid, cpu)
    except RuntimeError as exc:
        server.stop()
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"{label}: {exc}; the servers' log ends with:\n" + "\n".join(tail)
                           ) from exc
    except BaseException:
        server.stop()
        raise
    return server


class Redis:
    """A private redis-server, no persistence."""

    def __init__(self, cpu: str | None, workdir: Path) -> None:
        self.port = free_port()
        cmd = ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no",
               "--bind", "127.0.0.1", "--dir", str(workdir)]
        self.proc = subprocess.Popen(pinned(cpu, cmd), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_tcp(self.port)
        import redis

        self.client = redis.Redis(port=self.port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def commandstats(self) -> dict[str, int]:
        """calls per command (scripts' inner commands included), plus 'total'."""
        info: dict[str, Any] = self.client.info("commandstats")
        out = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}
        out["total"] = int(self.client.info("stats")["total_commands_processed"])
        return out

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(timeout=10)
