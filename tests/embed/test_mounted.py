"""chatcast mounted under /chat in a real FastAPI app, served by a plain uvicorn process
(`uvicorn tests.embed.host_app:app`, no chatcast CLI and no lifespan for the mount): it
starts on the first request (migrating a fresh database), serves REST, the WebSocket, SSE,
long-poll, the demo UI and the JS client under the prefix, takes its users from the host's
identity hook (refusing, never falling back, when the hook raises), and ends running answers
as `chatcast serve` does on SIGTERM."""

from __future__ import annotations

import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.clients import Poller, SSEClient, WSClient
from tests.helpers.server import ServerProcess
from tests.integration.conftest import sql_message

PREFIX = "/chat"


def host(tmp_path: Path, *, migrate: bool = False, **env: str) -> ServerProcess:
    return ServerProcess(
        tmp_path / "host", migrate=migrate,  # by default the mounted app migrates itself
        command=[sys.executable, "-m", "uvicorn", "tests.embed.host_app:app", "--host",
                 "127.0.0.1", "--port", "{port}", "--timeout-graceful-shutdown", "30"],
        env={"CHATCAST_DEMO_TOKENS_PER_S": "100", **env})


@pytest.fixture
async def mounted(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    proc = host(tmp_path)
    await proc.start()
    yield proc
    code = await proc.stop()
    print(f"--- host (exit {code}):\n{proc.log_tail()}")


def as_user(srv: ServerProcess, who: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=srv.url + PREFIX, cookies={"host_user": who},
                             timeout=30, trust_env=False)


async def test_everything_under_the_prefix(mounted: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=mounted.url, timeout=30, trust_env=False) as http:
        page = await http.get(f"{PREFIX}/")
        assert page.status_code == 200 and 'src="static/app.js"' in page.text
        assert '"/static/' not in page.text and '"/client/' not in page.text
        for asset in ("static/app.js", "static/app.css", "client/chatcast.js",
                      "client/transports.js"):
            assert (await http.get(f"{PREFIX}/{asset}")).status_code == 200, asset
        assert (await http.get(f"{PREFIX}/healthz")).status_code == 200
        assert (await http.get(f"{PREFIX}/api/chats")).status_code == 401  # no identity
        refused = await http.get(f"{PREFIX}/api/chats", headers={"x-host-user": "boom"})
        assert refused.status_code == 401  # the hook raised: no anonymous fallback
    assert "identity hook raised" in mounted.logs()

    async with as_user(mounted, "alice") as alice, as_user(mounted, "bob") as bob:
        chat = (await alice.post("/api/chats", json={})).json()["id"]
        assert (await bob.get(f"/api/chats/{chat}/messages")).status_code == 404  # not bob's
        ws_url = mounted.ws_url.replace("/ws", f"{PREFIX}/ws")
        async with await WSClient.connect(ws_url, cookie="host_user=alice") as tab, \
                SSEClient(alice, f"/api/chats/{chat}/events") as sse:
            await tab.subscribe(chat)
            sent = await alice.post(f"/api/chats/{chat}/messages", json={"content": "hi"})
            assert sent.status_code == 202, sent.text
            gen = sent.json()["gen"]
            done_ws, done_sse = await tab.wait_done(gen), await sse.wait_done(gen)
        assert done_ws["status"] == done_sse["status"] == "completed"
        assert tab.assembler(chat).check_done(done_ws) == sse.assembler(chat).check_done(done_sse)
        events = await Poller(alice, chat, wait=1).poll()
        assert {e["type"] for e in events} & {"snapshot", "done"}, events
        stranger = await WSClient.connect(ws_url, cookie="host_user=boom")
        assert await stranger.wait_closed() == 4001
        async with as_user(mounted, "boom") as boom:
            refused_sse = await boom.get(f"/api/chats/{chat}/events",
                                         headers={"Accept": "text/event-stream"})
            assert refused_sse.status_code == 401
        metrics = await alice.get("/metrics")
        assert metrics.status_code == 200 and "chatcast_generations_total" in metrics.text


async def test_the_python_client_under_the_prefix_with_the_hosts_identity(
        mounted: ServerProcess) -> None:
    import chatcast.client as cc

    async with cc.connect(mounted.url + PREFIX, headers={"x-host-user": "carol"}) as client:
        chat = await client.create_chat("from the host's back end")
        answer = await client.ask(chat.id, "hello")
    assert answer.status == "completed" and answer.text
    async with as_user(mounted, "carol") as carol:
        assert chat.id in [c["id"] for c in (await carol.get("/api/chats")).json()["chats"]]


async def test_sigterm_while_streaming_ends_answers_as_chatcast_serve_does(
        tmp_path: Path) -> None:
    srv = host(tmp_path, CHATCAST_DEMO_TOKENS_PER_S="10", CHATCAST_SHUTDOWN_GRACE_S="1")
    await srv.start()
    try:
        async with as_user(srv, "alice") as alice:
            chat = (await alice.post("/api/chats", json={})).json()["id"]
            ws_url = srv.ws_url.replace("/ws", f"{PREFIX}/ws")
            tab = await WSClient.connect(ws_url, cookie="host_user=alice")
            await tab.subscribe(chat)
            ack = await tab.request({"type": "send", "chat": chat, "content": "long one"})
            await tab.wait_for("delta")
            srv.kill(signal.SIGTERM)
            # As with `chatcast serve`: clients are told 1001 (reconnect elsewhere) at once,
            # the answer gets the grace period, then ends `interrupted` in SQL.
            assert await tab.wait_closed(timeout=30) == 1001
            seen = tab.assembler(chat).text(ack["gen"])
            assert await srv.wait_async(timeout=60) in (0, -signal.SIGTERM)
    finally:
        await srv.stop()
    logs = srv.logs()
    assert "shutting down chatcast" in logs and "Application shutdown complete" in logs
    assert "cancelled at shutdown" not in logs
    content, status = await sql_message(srv, ack["assistant"])
    assert status == "interrupted" and content.startswith(seen)


async def test_a_host_may_run_chatcasts_lifespan_instead(tmp_path: Path) -> None:
    srv = host(tmp_path, migrate=True, HOST_LIFESPAN="1")
    await srv.start()
    try:
        assert "chatcast ready" in srv.logs()  # started with the host, before any request
        async with as_user(srv, "alice") as alice:
            assert (await alice.post("/api/chats", json={})).status_code == 201
        srv.kill(signal.SIGTERM)
        assert await srv.wait_async(timeout=60) in (0, -signal.SIGTERM)
    finally:
        await srv.stop()
    assert "Application shutdown complete" in srv.logs()
    assert "shutting down chatcast" not in srv.logs()  # the lifespan closed it, not a signal


async def test_a_mounted_chatcast_that_cannot_start_says_why_and_the_host_lives_on(
        tmp_path: Path) -> None:
    srv = host(tmp_path, CHATCAST_PROVIDERS="rag=no_such_module:make")
    await srv.start()  # the host's own /healthz
    try:
        async with as_user(srv, "alice") as alice:
            for _ in range(2):  # each request tries again, and is refused the same way
                refused = await alice.get("/api/chats")
                assert refused.status_code == 503
                assert refused.json()["error"]["message"] == "chatcast is not running"
            async with httpx.AsyncClient(base_url=srv.url, trust_env=False) as http:
                assert (await http.get("/healthz")).status_code == 200
    finally:
        await srv.stop()
    assert "chatcast cannot start: CHATCAST_PROVIDERS: rag=no_such_module:make" in srv.logs()
