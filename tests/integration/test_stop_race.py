"""Stops at random moments, on two processes sharing Redis and PostgreSQL: every tab ends with
exactly one `done`, its text equal to SQL and to `done.sha256`, whatever the stop hit — a
delta in flight, deltas being merged, the very end of an answer, an answer already done. The
wall-clock limit and SIGTERM (with a short grace period) cut generations mid-append too.

The suite runs a bounded number of rounds; set CHATCAST_STOP_RACE_ROUNDS for a long local run
(and CHATCAST_STOP_RACE_SEED to replay one)."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import DatabaseFactory, ServerFactory
from tests.helpers.clients import WSClient
from tests.helpers.redis_server import RedisServer
from tests.helpers.server import ServerProcess
from tests.integration.conftest import User, make_user, sql_message

ROUNDS = int(os.environ.get("CHATCAST_STOP_RACE_ROUNDS", "24"))
SEED = int(os.environ.get("CHATCAST_STOP_RACE_SEED", str(random.randrange(1 << 30))))
CONCURRENT = 6
TOKENS_PER_S = 120.0  # fast enough that stops often land inside an append
MAX_TOKENS = 60  # short answers: many stops land near (or after) the end


@dataclass
class Pair:
    a: ServerProcess
    b: ServerProcess


@pytest.fixture
async def pair(server: ServerFactory, redis_server: Callable[[], RedisServer],
               make_database: DatabaseFactory) -> Pair:
    redis = redis_server()
    env = {"REDIS_URL": redis.url, "DATABASE_URL": make_database("postgresql"),
           "CHATCAST_DEMO_TOKENS_PER_S": str(TOKENS_PER_S),
           "CHATCAST_DEMO_MAX_TOKENS": str(MAX_TOKENS),
           "CHATCAST_CHECKPOINT_INTERVAL_S": "0.2", "CHATCAST_LEASE_TTL_S": "6",
           # merging: pacing holds deltas back as soon as the loop is at all busy
           "CHATCAST_COALESCE_MAX_MS": "30",
           "CHATCAST_MAX_GENERATIONS_PER_USER": "100", "CHATCAST_MESSAGES_PER_MINUTE": "100000"}
    a, b = await asyncio.gather(server(env=env), server(env=env))
    return Pair(a, b)


@pytest.fixture
async def alice(pair: Pair) -> AsyncIterator[User]:
    async for user in make_user(pair.a):
        yield user


async def ws(srv: ServerProcess, user: User) -> WSClient:
    return await WSClient.connect(srv.ws_url, cookie=user.cookie)


def dones(tab: WSClient, gen: str) -> list[dict[str, Any]]:
    return [e for e in tab.received if e.get("type") == "done" and e.get("gen") == gen]


async def check_round(tabs: list[WSClient], srv: ServerProcess, chat: str, gen: str,
                      statuses: tuple[str, ...]) -> str:
    texts = []
    for tab in tabs:
        done = await tab.wait_done(gen, timeout=30)
        assert done["status"] in statuses, done["status"]
        texts.append(tab.assembler(chat).check_done(done))
    assert len(set(texts)) == 1, "tabs disagree"
    assert (await sql_message(srv, done["message"]["id"]))[0] == texts[0], "SQL differs"
    return texts[0]


async def one_round(rng: random.Random, pair: Pair, alice: User) -> None:
    """One chat, a tab on each process (each round its own sockets: rounds run at once)."""
    chat = await alice.new_chat()
    async with await ws(pair.a, alice) as tab_a, await ws(pair.b, alice) as tab_b:
        await tab_a.subscribe(chat)
        await tab_b.subscribe(chat)
        sender, stopper = (tab_a, tab_b) if rng.random() < 0.5 else (tab_b, tab_a)
        ack = await sender.request({"type": "send", "chat": chat,
                                    "content": f"race {rng.random()}"})
        gen = ack["gen"]
        # 0 … a little past the answer's length: mid-stream, at the very end, or after done
        await asyncio.sleep(rng.uniform(0, 1.15 * MAX_TOKENS / TOKENS_PER_S))
        reply = await stopper.request({"type": "stop", "gen": gen})
        assert reply["status"] in ("stopping", "completed", "stopped")
        await check_round([tab_a, tab_b], pair.a, chat, gen, ("stopped", "completed"))
        await asyncio.sleep(0.3)  # a second done would have arrived by now
        for tab in (tab_a, tab_b):
            assert len(dones(tab, gen)) == 1, f"seed {SEED}: {gen} has not one done"


async def test_random_stops_across_two_processes_end_exactly(pair: Pair, alice: User) -> None:
    rng = random.Random(SEED)
    for start in range(0, ROUNDS, CONCURRENT):
        await asyncio.gather(*[one_round(random.Random(rng.random()), pair, alice)
                               for _ in range(min(CONCURRENT, ROUNDS - start))])


async def test_time_limit_cuts_generations_mid_append(
        server: ServerFactory, redis_server: Callable[[], RedisServer],
        make_database: DatabaseFactory) -> None:
    redis = redis_server()
    env = {"REDIS_URL": redis.url, "DATABASE_URL": make_database("postgresql"),
           "CHATCAST_DEMO_TOKENS_PER_S": "200", "CHATCAST_GENERATION_TIMEOUT_S": "0.35",
           "CHATCAST_MAX_GENERATIONS_PER_USER": "100"}
    a, b = await asyncio.gather(server(env=env), server(env=env))
    async for user in make_user(a):
        async with await ws(a, user) as tab_a, await ws(b, user) as tab_b:
            chats = [await user.new_chat() for _ in range(6)]
            gens = {}
            for chat in chats:
                await tab_a.subscribe(chat)
                await tab_b.subscribe(chat)
                gens[chat] = (await tab_a.request(
                    {"type": "send", "chat": chat, "content": "a long answer"}))["gen"]
            for chat in chats:
                await check_round([tab_a, tab_b], a, chat, gens[chat], ("error",))
                assert len(dones(tab_a, gens[chat])) == 1


async def test_sigterm_mid_append_ends_every_generation_once(
        server: ServerFactory, redis_server: Callable[[], RedisServer],
        make_database: DatabaseFactory) -> None:
    redis = redis_server()
    env = {"REDIS_URL": redis.url, "DATABASE_URL": make_database("postgresql"),
           "CHATCAST_DEMO_TOKENS_PER_S": "150", "CHATCAST_LEASE_TTL_S": "3",
           "CHATCAST_MAX_GENERATIONS_PER_USER": "100", "CHATCAST_MESSAGES_PER_MINUTE": "1000"}
    a = await server(env={**env, "CHATCAST_SHUTDOWN_GRACE_S": "0.1"})
    b = await server(env=env)
    async for user in make_user(b):
        async with await ws(a, user) as tab_a, await ws(b, user) as tab_b:
            chats = [await user.new_chat() for _ in range(8)]
            gens = {}
            for chat in chats:
                await tab_b.subscribe(chat)
                gens[chat] = (await tab_a.request(
                    {"type": "send", "chat": chat, "content": "a long answer"}))["gen"]
            for _ in range(40):
                await tab_b.wait_for("delta")
            a.terminate()
            for chat in chats:
                await check_round([tab_b], b, chat, gens[chat], ("interrupted", "completed"))
            await a.wait_async(timeout=30)
            assert "cancelled at shutdown" not in a.logs()
            await asyncio.sleep(0.3)
            for chat in chats:
                assert len(dones(tab_b, gens[chat])) == 1
