"""Several server processes on one Redis and one PostgreSQL: every tab on every process sees
every token, stop reaches the owner, a dead owner's generations are interrupted and can be
continued, a dead connection's tab resumes elsewhere, Redis faults and SIGTERM lose nothing
(RELIABILITY.md rows 1-4 and 15)."""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import DatabaseFactory, ServerFactory
from tests.helpers.clients import WSClient
from tests.helpers.redis_server import RedisServer
from tests.helpers.server import ServerProcess
from tests.integration.conftest import User, make_user, sql_message

LEASE_S = 3.0


@dataclass
class Cluster:
    redis: RedisServer
    a: ServerProcess
    b: ServerProcess
    env: dict[str, str]


@pytest.fixture
async def cluster(server: ServerFactory, redis_server: Callable[[], RedisServer],
                  make_database: DatabaseFactory) -> Cluster:
    redis = redis_server()
    env = {"REDIS_URL": redis.url, "DATABASE_URL": make_database("postgresql"),
           "CHATCAST_DEMO_TOKENS_PER_S": "25", "CHATCAST_LEASE_TTL_S": str(LEASE_S),
           "CHATCAST_CHECKPOINT_INTERVAL_S": "0.5",
           # one user runs 50 streams at once here (row 15), far above the default limits
           "CHATCAST_MAX_GENERATIONS_PER_USER": "100", "CHATCAST_MESSAGES_PER_MINUTE": "1000"}
    a, b = await asyncio.gather(server(env=env), server(env=env))
    return Cluster(redis, a, b, env)


@pytest.fixture
async def alice(cluster: Cluster) -> AsyncIterator[User]:
    async for user in make_user(cluster.a):
        yield user


def of_gen(gen: str) -> Callable[[dict[str, Any]], bool]:
    return lambda event: bool(event.get("gen") == gen)


async def ws_on(srv: ServerProcess, user: User, **kw: object) -> WSClient:
    return await WSClient.connect(srv.ws_url, cookie=user.cookie, **kw)  # type: ignore[arg-type]


async def test_tabs_on_two_processes_see_every_token_and_stop_crosses(
        cluster: Cluster, alice: User) -> None:
    chat = await alice.new_chat()
    async with await ws_on(cluster.a, alice) as tab1, await ws_on(cluster.b, alice) as tab2:
        await tab1.subscribe(chat)
        await tab2.subscribe(chat)
        ack = await tab1.request({"type": "send", "chat": chat, "content": "across processes"})
        gen = ack["gen"]
        msg = await tab2.wait_for("message")
        assert msg["message"]["content"] == "across processes"
        done1, done2 = await asyncio.gather(tab1.wait_done(gen, timeout=60),
                                            tab2.wait_done(gen, timeout=60))
        text = tab1.assembler(chat).check_done(done1)
        assert tab2.assembler(chat).check_done(done2) == text
        assert await sql_message(cluster.a, ack["assistant"]) == (text, "complete")

        # stop from B ends a generation running on A, for both tabs
        latencies = []
        for _ in range(3):
            gen = (await tab1.request({"type": "send", "chat": chat, "content": "stop me"}))["gen"]
            for _ in range(3):
                await tab2.wait_for("delta", of_gen(gen))
            t0 = time.perf_counter()
            await tab2.send({"type": "stop", "gen": gen})
            done2 = await tab2.wait_done(gen)
            latencies.append((time.perf_counter() - t0) * 1000)
            done1 = await tab1.wait_done(gen)
            assert done1["status"] == done2["status"] == "stopped"
            partial = tab1.assembler(chat).check_done(done1)
            assert tab2.assembler(chat).check_done(done2) == partial
            assert (await sql_message(cluster.a, done1["message"]["id"]))[1] == "stopped"
    print(f"stop across processes: median {statistics.median(latencies):.1f} ms")


async def test_tab_joining_mid_stream_on_the_other_process(cluster: Cluster,
                                                           alice: User) -> None:
    chat = await alice.new_chat()
    async with await ws_on(cluster.a, alice) as tab1:
        await tab1.subscribe(chat)
        gen = (await tab1.request({"type": "send", "chat": chat, "content": "join"}))["gen"]
        for _ in range(10):
            await tab1.wait_for("delta")
        async with await ws_on(cluster.b, alice) as late, \
                await ws_on(cluster.b, alice) as resumer:
            await late.subscribe(chat)  # no cursor: snapshot of the text so far, then live
            snap = await late.wait_for("snapshot")
            assert snap["active"]["gen"] == gen and snap["active"]["seq"] >= 10
            cursor = tab1.assembler(chat).cursor
            assert cursor is not None
            resumer.assemblers[chat] = tab1.assemblers[chat]  # continue tab1's state on B
            await resumer.subscribe(chat, cursor.as_dict())
            done = await late.wait_done(gen, timeout=60)
            done_r = await resumer.wait_done(gen, timeout=60)
        text = late.assembler(chat).check_done(done)
        assert resumer.assembler(chat).check_done(done_r) == text


async def test_kill_9_owner_interrupts_then_continue_elsewhere(cluster: Cluster,
                                                               alice: User) -> None:
    chat = await alice.new_chat()
    async with await ws_on(cluster.b, alice) as watcher:
        await watcher.subscribe(chat)
        async with await ws_on(cluster.a, alice) as owner_tab:
            gen = (await owner_tab.request({"type": "send", "chat": chat,
                                            "content": "die"}))["gen"]
        for _ in range(12):
            await watcher.wait_for("delta")
        cluster.a.kill(signal.SIGKILL)
        t0 = time.monotonic()
        done = await watcher.wait_done(gen, timeout=LEASE_S * 4)
        waited = time.monotonic() - t0
        assert done["status"] == "interrupted"
        partial = watcher.assembler(chat).check_done(done)
        assert len(partial) > 0
        assert await sql_message(cluster.b, done["message"]["id"]) == (partial, "interrupted")
        print(f"owner death noticed after {waited:.1f} s (lease {LEASE_S} s)")
        cont = await watcher.request({"type": "continue", "gen": gen})
        assert cont["type"] == "ack", cont
        final = await watcher.wait_done(cont["gen"], timeout=60)
        assert final["status"] == "completed"
        full = watcher.assembler(chat).check_done(final)
        assert full.startswith(partial) and len(full) > len(partial)


async def test_kill_9_the_tabs_process_resumes_on_the_other(cluster: Cluster,
                                                           alice: User) -> None:
    chat = await alice.new_chat()
    async with await ws_on(cluster.a, alice) as owner_tab:
        await owner_tab.subscribe(chat)
        tab = await ws_on(cluster.b, alice)
        await tab.subscribe(chat)
        gen = (await owner_tab.request({"type": "send", "chat": chat, "content": "hop"}))["gen"]
        for _ in range(8):
            await tab.wait_for("delta")
        cluster.b.kill(signal.SIGKILL)
        await tab.wait_closed()
        cursor = tab.assembler(chat).cursor
        assert cursor is not None
        async with await ws_on(cluster.a, alice, assemblers=tab.assemblers) as again:
            await again.subscribe(chat, cursor.as_dict())
            done = await again.wait_done(gen, timeout=60)
        text = again.assembler(chat).check_done(done)
        done_owner = await owner_tab.wait_done(gen, timeout=60)
        assert owner_tab.assembler(chat).check_done(done_owner) == text


async def test_redis_restart_mid_stream_loses_nothing(cluster: Cluster, alice: User) -> None:
    chat = await alice.new_chat()
    async with await ws_on(cluster.a, alice) as tab1, await ws_on(cluster.b, alice) as tab2:
        await tab1.subscribe(chat)
        await tab2.subscribe(chat)
        gen = (await tab1.request({"type": "send", "chat": chat, "content": "outage"}))["gen"]
        for _ in range(5):
            await tab2.wait_for("delta")
        cluster.redis.kill()
        async with httpx.AsyncClient(base_url=cluster.b.url) as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 503 and ready.json()["bus"] is False
        await asyncio.sleep(1.5)  # tokens keep coming on A while Redis is down
        cluster.redis.restart()
        done1, done2 = await asyncio.gather(tab1.wait_done(gen, timeout=60),
                                            tab2.wait_done(gen, timeout=60))
        async with httpx.AsyncClient(base_url=cluster.b.url) as http:
            for _ in range(50):
                if (await http.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.2)
            assert (await http.get("/readyz")).status_code == 200
    assert done1["status"] == done2["status"] == "completed"
    text = tab1.assembler(chat).check_done(done1)
    assert tab2.assembler(chat).check_done(done2) == text
    assert await sql_message(cluster.a, done1["message"]["id"]) == (text, "complete")


async def test_unreachable_redis_at_start_is_a_clear_error(server: ServerFactory,
                                                           free_port: int) -> None:
    srv = await server(env={"REDIS_URL": f"redis://127.0.0.1:{free_port}/0"}, start=False)
    srv.spawn()
    code = await srv.wait_async(timeout=30)
    assert code != 0
    assert "REDIS_URL" in srv.logs() and "cannot reach Redis" in srv.logs()


async def test_sigterm_with_50_streams(cluster: Cluster, alice: User) -> None:
    chats = [await alice.new_chat() for _ in range(50)]
    tab = await ws_on(cluster.a, alice)
    gens = {}
    for chat in chats:
        await tab.subscribe(chat)
        gens[chat] = (await tab.request({"type": "send", "chat": chat, "content": "long"}))["gen"]
    for _ in range(50):
        await tab.wait_for("delta")
    cluster.a.terminate()  # SIGTERM; grace period 10 s by default, replies take ~6 s
    assert await tab.wait_closed(timeout=10) == 1001
    # uvicorn re-raises the SIGTERM after its clean shutdown, so the exit is -15 (or 0)
    assert await cluster.a.wait_async(timeout=40) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in cluster.a.logs()
    # every generation reached a terminal state in SQL; the tab resumes on B and agrees
    async with await ws_on(cluster.b, alice, assemblers=tab.assemblers) as again:
        for chat in chats:
            cursor = tab.assembler(chat).cursor
            await again.subscribe(chat, cursor.as_dict() if cursor else None)
        for chat in chats:
            asm = again.assembler(chat)
            if gens[chat] in asm.done:  # it ended before the tab was closed (a loaded machine)
                done = asm.done[gens[chat]]
            else:
                done = await again.wait_done(gens[chat], timeout=30)
            assert done["status"] in ("completed", "interrupted")
            text = asm.check_done(done)
            assert (await sql_message(cluster.b, done["message"]["id"]))[0] == text
