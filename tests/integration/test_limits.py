"""Limits on a real server (RELIABILITY.md rows 13, 17, 18): frames per second per socket,
messages per minute per user, concurrent generations per user (also across two processes on
one Redis and one PostgreSQL), sockets per user, idle sockets, and a server that stays
responsive under hundreds of idle sockets and slow-loris HTTP clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable

import httpx

from tests.conftest import DatabaseFactory, ServerFactory
from tests.helpers.clients import WSClient, cookie_header
from tests.helpers.redis_server import RedisServer
from tests.helpers.server import ServerProcess
from tests.integration.conftest import sql_rows


@contextlib.asynccontextmanager
async def browser(srv: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=srv.url, timeout=30,
                                 limits=httpx.Limits(max_connections=200)) as http:
        assert (await http.get("/api/chats")).status_code == 200  # sets the cookie
        yield http


async def new_chats(http: httpx.AsyncClient, n: int) -> list[str]:
    return [(await http.post("/api/chats", json={})).json()["id"] for _ in range(n)]


async def test_stop_flood_on_one_socket_is_closed_4029(server: ServerFactory) -> None:
    srv = await server()
    async with browser(srv) as http:
        chat = (await new_chats(http, 1))[0]
        ws = await WSClient.connect(srv.ws_url, cookie=cookie_header(http))
        frame = json.dumps({"type": "stop", "chat": chat})
        with contextlib.suppress(Exception):  # the server closes while we are still sending
            for i in range(1000):
                await ws.send_raw(frame)
                if i % 10 == 9:  # 10 frames a tick: far over 20/s even if a tick takes 100 ms
                    await asyncio.sleep(0.001)
        assert await ws.wait_closed() == 4029
        reason = ws.conn.close_reason or ""
        assert json.loads(reason)["retry_after"] >= 1
        # the server is fine: a new socket works, HTTP answers
        async with await WSClient.connect(srv.ws_url, cookie=cookie_header(http)) as again:
            assert (await again.request({"type": "ping"}))["type"] == "pong"
        assert (await http.get("/healthz")).status_code == 200


async def test_messages_per_minute(server: ServerFactory) -> None:
    srv = await server(env={"CHATCAST_MESSAGES_PER_MINUTE": "3",
                            "CHATCAST_DEMO_MAX_TOKENS": "3"})
    async with browser(srv) as http:
        chats = await new_chats(http, 5)
        async with await WSClient.connect(srv.ws_url, cookie=cookie_header(http)) as ws:
            replies = [await ws.request({"type": "send", "chat": c, "content": "x"})
                       for c in chats[:4]]
            assert [r["type"] for r in replies] == ["ack", "ack", "ack", "error"]
            assert replies[3]["code"] == "rate_limited" and replies[3]["retryable"] is True
            assert 0 < replies[3]["retry_after"] <= 20
        r = await http.post(f"/api/chats/{chats[4]}/messages", json={"content": "x"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert int(r.headers["Retry-After"]) >= 1


async def _parallel_sends(http: httpx.AsyncClient, chats: list[str],
                          n: int) -> list[httpx.Response]:
    async def send(i: int) -> httpx.Response:
        chat = chats[i % len(chats)]
        return await http.post(f"/api/chats/{chat}/messages",
                               json={"content": "hello", "client_msg_id": f"m-{chat}"})
    return list(await asyncio.gather(*(send(i) for i in range(n))))


async def generation_rows(srv: ServerProcess) -> list[tuple[str, str]]:
    rows = await sql_rows(srv, "SELECT g.id, m.client_msg_id FROM generation g JOIN message m "
                               "ON m.generation_id = g.id AND m.role = 'user'")
    return [(str(r[0]), str(r[1])) for r in rows]


def check_sends(responses: list[httpx.Response], limit: int) -> dict[str, str]:
    """Every send is either accepted or refused with too_many_generations; a client_msg_id
    is never answered with two different generations; at most `limit` were started."""
    gens: dict[str, str] = {}
    for r in responses:
        if r.status_code == 202:
            body = r.json()
            cid = body["message"]["client_msg_id"]
            assert gens.setdefault(cid, body["gen"]) == body["gen"]
        else:
            assert r.status_code == 429, r.text
            assert r.json()["error"]["code"] == "too_many_generations"
    assert 1 <= len(set(gens.values())) <= limit
    return gens


async def test_concurrent_generations_per_user_sqlite(server: ServerFactory) -> None:
    srv = await server(env={"CHATCAST_MAX_GENERATIONS_PER_USER": "2",
                            "CHATCAST_MESSAGES_PER_MINUTE": "1000",
                            "CHATCAST_DEMO_TOKENS_PER_S": "5", "CHATCAST_SHUTDOWN_GRACE_S": "1"})
    async with browser(srv) as http:
        chats = await new_chats(http, 15)
        gens = check_sends(await _parallel_sends(http, chats, 30), 2)
        rows = await generation_rows(srv)
        assert len(rows) == len(gens) and {cid for _, cid in rows} == set(gens)
        for gen in gens.values():
            await http.post(f"/api/generations/{gen}/stop")


async def test_rows_18_parallel_sends_across_two_processes(
        make_database: DatabaseFactory, redis_server: Callable[[], RedisServer],
        server: ServerFactory) -> None:
    # (fixtures in this order: the servers stop before their database is dropped)
    redis = redis_server()
    env = {"REDIS_URL": redis.url, "DATABASE_URL": make_database("postgresql"),
           "CHATCAST_MAX_GENERATIONS_PER_USER": "3", "CHATCAST_MESSAGES_PER_MINUTE": "1000",
           "CHATCAST_DEMO_TOKENS_PER_S": "5", "CHATCAST_SHUTDOWN_GRACE_S": "1"}
    a, b = await asyncio.gather(server(env=env), server(env=env))
    async with browser(a) as http_a, httpx.AsyncClient(
            base_url=b.url, cookies=http_a.cookies, timeout=30,
            limits=httpx.Limits(max_connections=200)) as http_b:
        chats = await new_chats(http_a, 50)
        # 100 sends: each chat's client_msg_id once on A and once on B, all at once
        ra, rb = await asyncio.gather(_parallel_sends(http_a, chats, 50),
                                      _parallel_sends(http_b, chats, 50))
        gens = check_sends(ra + rb, 3)
        rows = await generation_rows(a)
        assert len(rows) == len(gens) and {cid for _, cid in rows} == set(gens)
        for gen in gens.values():
            await http_a.post(f"/api/generations/{gen}/stop")


async def test_sockets_per_user_and_idle_sockets(server: ServerFactory) -> None:
    srv = await server(env={"CHATCAST_MAX_SOCKETS_PER_USER": "2",
                            "CHATCAST_WS_IDLE_TIMEOUT_S": "1"})
    async with browser(srv) as http:
        chat = (await new_chats(http, 1))[0]
        cookie = cookie_header(http)
        busy = await WSClient.connect(srv.ws_url, cookie=cookie)
        await busy.subscribe(chat)
        idle = await WSClient.connect(srv.ws_url, cookie=cookie)
        third = await WSClient.connect(srv.ws_url, cookie=cookie)
        assert await third.wait_closed() == 4029
        assert json.loads(third.conn.close_reason or "")["retry_after"] > 0
        # the idle one (no subscription, no frame) is closed; the subscribed one is not
        assert await idle.wait_closed(timeout=5) == 1001
        assert (await busy.request({"type": "ping"}))["type"] == "pong"
        await asyncio.sleep(1.5)
        assert (await busy.request({"type": "ping"}))["type"] == "pong"
        # the idle socket's slot is free again
        async with await WSClient.connect(srv.ws_url, cookie=cookie) as ws:
            assert (await ws.request({"type": "ping"}))["type"] == "pong"
        await busy.close()


async def _slow_loris(port: int, stop: asyncio.Event) -> None:
    """An HTTP client that sends its headers one byte at a time, forever."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /api/chats HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        while not stop.is_set():
            writer.write(b"X")
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    except (ConnectionError, OSError):
        pass  # the server may drop it: fine
    finally:
        writer.close()


async def test_row_17_idle_sockets_and_slow_loris(server: ServerFactory) -> None:
    srv = await server()
    stop = asyncio.Event()
    loris = [asyncio.create_task(_slow_loris(srv.port, stop)) for _ in range(100)]
    idle: list[WSClient] = []
    try:
        for _ in range(6):  # 300 idle sockets, each a new anonymous user
            idle += await asyncio.gather(*(WSClient.connect(srv.ws_url) for _ in range(50)))
        async with browser(srv) as http, asyncio.timeout(20):
            assert (await http.get("/healthz")).status_code == 200
            chat = (await new_chats(http, 1))[0]
            async with await WSClient.connect(srv.ws_url, cookie=cookie_header(http)) as ws:
                await ws.subscribe(chat)
                ack = await ws.request({"type": "send", "chat": chat, "content": "still here?"})
                await ws.wait_done(ack["gen"])
        assert sum(1 for s in idle if s.close_code is None) >= 250  # not dropped wholesale
    finally:
        stop.set()
        await asyncio.gather(*loris, return_exceptions=True)
        await asyncio.gather(*(s.close() for s in idle), return_exceptions=True)


