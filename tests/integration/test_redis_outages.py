"""Redis killed for 30 s under two server processes, while answers stream and while one of
them ends: the answer that ends in the outage is saved at once, and its end reaches both
tabs when Redis is back (its `done`, or the snapshot of a tab that resynchronised); the one
that streams through the outage goes on and completes (its owner re-creates its lease, so
the orphan sweep, which sees no lease for a moment after the empty Redis returns, never
reaps it); both tabs of both chats end exactly as SQL says; `/readyz` says `bus: false`
during the outage and recovers after it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import DatabaseFactory, ServerFactory
from tests.helpers.clients import WSClient
from tests.helpers.redis_server import RedisServer
from tests.helpers.server import ServerProcess
from tests.integration.conftest import make_user, sql_message

pytestmark = [pytest.mark.xdist_group("outages"), pytest.mark.timeout(300)]

OUTAGE_S = 30.0
TOKENS_PER_S = 25
LEASE_S = 3.0


def echo(words: int) -> str:
    """A prompt the demo model answers with its own `words` words (one token each)."""
    return "echo: " + " ".join(f"w{n}" for n in range(words))


def of(gen: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: bool(e.get("gen") == gen)


async def ended(tab: WSClient, chat: str, ack: dict[str, Any],
                timeout: float) -> tuple[str, str]:
    """(text, message status) of `gen` as this tab ends it, checked by its assembler: its
    `done`, or a snapshot that shows it over. (A tab that resynchronises after Redis came
    back empty gets a snapshot from SQL; a `done` published after it is then a repeat.)"""
    asm = tab.assembler(chat)
    gen = str(ack["gen"])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while gen not in asm.done and gen not in asm.finished:
        await tab.wait_for(None, lambda e: e.get("chat") == chat
                           and e.get("type") in ("done", "snapshot"),
                           timeout=max(deadline - loop.time(), 0.001))
    if gen in asm.done:
        text_ = asm.check_done(gen=gen)
        assert asm.done[gen]["status"] == "completed"
        return text_, str(asm.done[gen]["message"]["status"])
    asm.assert_clean()
    message = asm.messages[str(ack["assistant"])]
    return str(message["content"]), str(message["status"])


async def readyz(srv: ServerProcess) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as http:
        r = await http.get("/readyz")
        return r.status_code, r.json()


async def wait_ready(srv: ServerProcess, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while (await readyz(srv))[0] != 200:  # noqa: ASYNC110 - polls a real process
            await asyncio.sleep(0.2)


async def test_redis_killed_for_30s_while_answers_stream_and_one_ends(
        server: ServerFactory, redis_server: Callable[[], RedisServer],
        make_database: DatabaseFactory) -> None:
    redis = redis_server()
    env = {"REDIS_URL": redis.url, "DATABASE_URL": make_database("postgresql"),
           "CHATCAST_DEMO_TOKENS_PER_S": str(TOKENS_PER_S),
           "CHATCAST_LEASE_TTL_S": str(LEASE_S), "CHATCAST_CHECKPOINT_INTERVAL_S": "0.5"}
    a, b = await asyncio.gather(server(env=env), server(env=env))
    async for user in make_user(a):
        long_chat, short_chat = await user.new_chat(), await user.new_chat()
        async with await WSClient.connect(a.ws_url, cookie=user.cookie) as tab_a, \
                await WSClient.connect(b.ws_url, cookie=user.cookie) as tab_b:
            for tab in (tab_a, tab_b):
                await tab.subscribe(long_chat)
                await tab.subscribe(short_chat)
            # Streams through the whole outage and some sweeps after it (~44 s), on A.
            ack_long = await tab_a.request({"type": "send", "chat": long_chat,
                                            "content": echo(1100)})
            # Ends during the outage (~4 s), on B.
            ack_short = await tab_b.request({"type": "send", "chat": short_chat,
                                             "content": echo(100)})
            long_gen, short_gen = ack_long["gen"], ack_short["gen"]
            for tab in (tab_a, tab_b):
                await tab.wait_for("delta", of(long_gen), timeout=30)
                await tab.wait_for("delta", of(short_gen), timeout=30)
            redis.kill()
            killed = time.monotonic()
            for srv in (a, b):
                status, body = await readyz(srv)
                assert status == 503 and body["bus"] is False and body["store"] is True
            await asyncio.sleep(OUTAGE_S - (time.monotonic() - killed))
            # The short answer ended meanwhile, saved to SQL without waiting for Redis.
            text_short_sql, status_short = await sql_message(a, ack_short["assistant"])
            assert status_short == "complete"
            redis.restart()
            back = time.monotonic()
            for srv in (a, b):
                await wait_ready(srv)
            shorts = await asyncio.gather(
                *(ended(tab, short_chat, ack_short, timeout=60) for tab in (tab_a, tab_b)))
            short_took = time.monotonic() - back
            longs = await asyncio.gather(
                *(ended(tab, long_chat, ack_long, timeout=90) for tab in (tab_a, tab_b)))
        for ack, ends in ((ack_short, shorts), (ack_long, longs)):
            assert ends[0] == ends[1], "the two tabs differ"
            assert await sql_message(a, ack["assistant"]) == ends[0]
        assert shorts[0] == (text_short_sql, "complete")
        assert longs[0][0] == " ".join(f"w{n}" for n in range(1100))
        print(f"Redis back: the short answer ended {short_took:.2f} s later on both tabs")
    for srv in (a, b):
        logs = srv.logs()
        assert "its owner is gone" not in logs, srv.log_tail(80)
        # One outage, logged once when it began and once when it ended.
        assert logs.count('"msg":"bus unavailable",') == 1, srv.log_tail(80)
        assert logs.count('"msg":"bus back",') == 1, srv.log_tail(80)
        assert logs.count("Traceback") == 0, srv.log_tail(120)
