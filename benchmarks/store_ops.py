"""CPU of each store call one arrival makes, and of a checkpoint of many generations, on the
event-loop thread (`time.thread_time`) and in the whole process (SQLite works in its own
thread), on SQLite and on PostgreSQL (a fresh database, dropped after).

    python -m benchmarks.store_ops [--generations 150] [--arrivals 60]

The whole-job scenario shows what the server does under a burst; this shows what each call
costs on its own, which is what a change to one of them moves.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from benchmarks import run
from chatcast.store.db import make_engine, migrate_async, session_factory
from chatcast.store.ids import new_id
from chatcast.store.repo import Checkpoint, Repo

Timings = dict[str, list[tuple[float, float]]]


async def _timed(out: Timings, name: str, call: Awaitable[Any]) -> Any:
    t0, p0 = time.thread_time(), time.process_time()
    result = await call
    out.setdefault(name, []).append(((time.thread_time() - t0) * 1e3,
                                     (time.process_time() - p0) * 1e3))
    return result


async def measure(url: str, generations: int, arrivals: int) -> dict[str, dict[str, float]]:
    await migrate_async(url)
    engine = make_engine(url)
    repo = Repo(session_factory(engine))
    out: Timings = {}
    try:
        for _ in range(arrivals):  # one arrival: what its requests ask of the store
            user = new_id()
            chat = await _timed(out, "create_chat", repo.create_chat(user))
            await _timed(out, "chat_state (a tab's snapshot)", repo.chat_state(chat.id, 50))
            got = await _timed(out, "get_chat", repo.get_chat(user, chat.id))
            st = await _timed(out, "start_send", repo.start_send(
                user, chat.id, "question", None, "demo", "demo-1", "owner", chat=got))
            await _timed(out, "finish", repo.finish(
                st.generation.id, "completed", "the answer", 3, usage={"output_tokens": 3},
                meta={"tokens": 3}, only_if_active=True))
        running = []
        for _ in range(generations):
            chat = await repo.create_chat("checkpointing")
            running.append(await repo.start_send("checkpointing", chat.id, "q", None, "demo",
                                                 "demo-1", "owner"))
        for k in range(10):  # the answers grow by 60 words a checkpoint
            words = 60 * (k + 1)
            items = [Checkpoint(s.generation.id, s.assistant.id,
                                " ".join(f"c{i}w{j}" for j in range(words)), words)
                     for i, s in enumerate(running)]
            await _timed(out, f"checkpoint_many ({generations} generations)",
                         repo.checkpoint_many(items))
    finally:
        await engine.dispose()
    return {name: {"loop_ms": round(statistics.median(x for x, _ in v[2:]), 2),
                   "process_ms": round(statistics.median(y for _, y in v[2:]), 2)}
            for name, v in out.items()}


async def main_async(generations: int, arrivals: int) -> None:
    with tempfile.TemporaryDirectory(prefix="chatcast-store-ops-") as tmp:
        sqlite = await measure(f"sqlite+aiosqlite:///{Path(tmp) / 'ops.db'}", generations,
                               arrivals)
    name = f"chatcast_ops_{new_id()}"
    await run.pg_admin(f'CREATE DATABASE "{name}"')
    try:
        pg_url = run.PG_ADMIN.replace("postgresql://", "postgresql+asyncpg://", 1)
        pg = await measure(pg_url.rsplit("/", 1)[0] + f"/{name}", generations, arrivals)
    finally:
        await run.pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print("| call | SQLite: loop thread ms | SQLite: process ms | PostgreSQL: loop thread ms |")
    print("|---|---|---|---|")
    for call, v in sqlite.items():
        print(f"| {call} | {v['loop_ms']} | {v['process_ms']} | {pg[call]['loop_ms']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generations", type=int, default=150)
    parser.add_argument("--arrivals", type=int, default=60)
    args = parser.parse_args()
    with run.affinity("1"):
        asyncio.run(main_async(args.generations, args.arrivals))


if __name__ == "__main__":
    main()
