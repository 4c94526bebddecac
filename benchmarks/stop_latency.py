"""Stop latency: from a `stop` frame sent on tab B to `done{stopped}` received on tabs A and B.

Starts a real server process (memory bus by default, or `--redis URL` with two processes,
stop sent to the process that does not own the generation), runs N trials and writes
results/stop_latency.json and .md. No assertion: the figures are the result.

    python -m benchmarks.stop_latency --trials 40
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import websockets

RESULTS = Path(__file__).parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data_dir: Path, env: dict[str, str],
                 cpu: str | None = None) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    from benchmarks.procs import clean_env

    full_env = clean_env({"CHATCAST_DATA_DIR": str(data_dir), "CHATCAST_SECRET_KEY": "bench",
                          **env})
    cmd = [sys.executable, "-m", "chatcast.server.cli", "serve", "--port", str(port)]
    if cpu is not None:
        cmd = ["taskset", "-c", cpu, *cmd]
    proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


async def recv_until(ws: Any, pred: Any) -> dict[str, Any]:
    while True:
        ev = json.loads(await ws.recv())
        if pred(ev):
            return ev  # type: ignore[no-any-return]


async def trial(port_a: int, port_b: int, cookie: str, chat: str) -> tuple[float, float]:
    hdr = {"Cookie": cookie}
    async with websockets.connect(f"ws://127.0.0.1:{port_a}/ws", additional_headers=hdr) as a, \
            websockets.connect(f"ws://127.0.0.1:{port_b}/ws", additional_headers=hdr) as b:
        for ws in (a, b):
            await ws.send(json.dumps({"type": "subscribe", "chat": chat, "rid": "s"}))
            await recv_until(ws, lambda e: e.get("rid") == "s")
        await a.send(json.dumps({"type": "send", "chat": chat, "content": "tell me a story"}))
        start = await recv_until(b, lambda e: e["type"] == "start")
        for _ in range(5):
            await recv_until(b, lambda e: e["type"] == "delta")
        t0 = time.perf_counter()
        await b.send(json.dumps({"type": "stop", "gen": start["gen"]}))
        is_done = lambda e: e["type"] == "done" and e["gen"] == start["gen"]  # noqa: E731
        done_b = await recv_until(b, is_done)
        tb = time.perf_counter() - t0
        done_a = await recv_until(a, is_done)
        ta = time.perf_counter() - t0
        assert done_a["status"] == done_b["status"] == "stopped"
        return ta * 1000, tb * 1000


async def run(trials: int, redis_url: str | None, cpu: str | None = None) -> dict[str, Any]:
    """`cpu`: pin the server processes to these cores (taskset list)."""
    from benchmarks.procs import BENCH_LIMITS

    with tempfile.TemporaryDirectory() as tmp:
        env = {"CHATCAST_DEMO_TOKENS_PER_S": "50",
               **{f"CHATCAST_{k}": v for k, v in BENCH_LIMITS.items()}}
        if redis_url:
            env["REDIS_URL"] = redis_url
            env["DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp}/shared.db"
        from benchmarks.procs import clean_env

        subprocess.run([sys.executable, "-m", "chatcast.server.cli", "migrate"], check=True,  # noqa: ASYNC221
                       env=clean_env({"CHATCAST_DATA_DIR": tmp, **env}),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs = [start_server(Path(tmp), env, cpu)]
        if redis_url:
            procs.append(start_server(Path(tmp), env, cpu))
        port_a, port_b = procs[0][1], procs[-1][1]
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port_a}") as http:
                r = await http.post("/api/chats", json={})
                chat = r.json()["id"]
                cookie = r.headers["set-cookie"].split(";")[0]
            to_a, to_b = [], []
            for _ in range(trials):
                ta, tb = await trial(port_a, port_b, cookie, chat)
                to_a.append(ta)
                to_b.append(tb)
        finally:
            for proc, _ in procs:
                proc.terminate()
                proc.wait(timeout=30)

    def summary(xs: list[float]) -> dict[str, float]:
        xs = sorted(xs)
        return {"p50_ms": round(statistics.median(xs), 2),
                "p99_ms": round(xs[min(len(xs) - 1, int(len(xs) * 0.99))], 2),
                "min_ms": round(xs[0], 2), "max_ms": round(xs[-1], 2)}

    return {"bus": "redis (2 processes)" if redis_url else "memory (1 process)",
            "trials": trials, "stopping_tab": summary(to_b), "other_tab": summary(to_a)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--redis", default=None, help="REDIS_URL: two processes share it")
    args = parser.parse_args()
    result = asyncio.run(run(args.trials, args.redis))
    RESULTS.mkdir(exist_ok=True)
    name = "stop_latency_redis" if args.redis else "stop_latency"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Stop latency — {result['bus']}, {result['trials']} trials", "",
             "| tab | p50 ms | p99 ms | min ms | max ms |", "|---|---|---|---|---|"]
    for tab in ("stopping_tab", "other_tab"):
        s = result[tab]
        lines.append(f"| {tab.replace('_', ' ')} | {s['p50_ms']} | {s['p99_ms']} | "
                     f"{s['min_ms']} | {s['max_ms']} |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
