"""The AI SDK routes at the wire level, against a real server: bad input, the same limits,
Origin and identity rules as every other route, and one chat shared with chatcast's own
clients (the `ai` package itself drives them in tests/aisdk)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from tests.conftest import ServerFactory
from tests.helpers.clients import WSClient
from tests.helpers.server import ServerProcess
from tests.integration.conftest import User, make_user, row_counts
from tests.integration.test_auth import create_token

API = "/api/ai/chat"


async def module_server(tmp_path_factory: pytest.TempPathFactory,
                        env: dict[str, str]) -> AsyncIterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("aisdk"), env=env)
    try:
        yield await srv.start()
    finally:
        await srv.stop()


@pytest.fixture(scope="module")
async def srv(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServerProcess]:
    """One server for this module's tests (each test has its own users and chats)."""
    async for server in module_server(tmp_path_factory, {"CHATCAST_DEMO_TOKENS_PER_S": "100"}):
        yield server


def user_message(text: str, ui_id: str = "u1") -> dict[str, Any]:
    return {"id": ui_id, "role": "user", "parts": [{"type": "text", "text": text}]}


def body(chat: str, text: str = "echo: hi there", ui_id: str = "u1", **extra: Any
         ) -> dict[str, Any]:
    return {"id": chat, "messages": [user_message(text, ui_id)], "trigger": "submit-message",
            **extra}


def ai_ws_url(srv: ServerProcess) -> str:
    return srv.url.replace("http", "ws") + "/api/ai/ws"


async def chunks_of(http: httpx.AsyncClient, method: str, url: str,
                    **kw: Any) -> tuple[httpx.Response, list[Any]]:
    """A UI message stream's chunks (the JSON of each `data:` line; "[DONE]" as is)."""
    out: list[Any] = []
    async with http.stream(method, url, **kw) as r:
        if r.status_code != 200:
            await r.aread()
            return r, out
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                data = line[6:]
                out.append(data if data == "[DONE]" else orjson.loads(data))
    return r, out


def text_of(chunks: list[Any]) -> str:
    return "".join(c["delta"] for c in chunks if isinstance(c, dict)
                   and c["type"] == "text-delta")


BAD = [
    (b"{not json", 400, "malformed JSON"),
    (b"[1]", 400, "JSON object"),
    (b"{}", 400, "id"),
    (orjson.dumps(body("has space")), 400, "id"),
    (orjson.dumps({"id": "c1"}), 400, "no message"),
    (orjson.dumps({"id": "c1", "messages": [{"id": "a", "role": "assistant", "parts": []}]}),
     400, "user"),
    (orjson.dumps({"id": "c1", "message": {"id": "f", "role": "user", "parts": [
        {"type": "file", "url": "data:,x", "mediaType": "text/plain"}]}}), 400, "file"),
    (orjson.dumps(body("c1", "   ")), 400, "empty"),
    (orjson.dumps(body("c1", "x" * 40_000)), 413, "limit"),
    (orjson.dumps(body("c1", messageId="u0")), 400, "editing"),
    (orjson.dumps(body("c1", trigger="resume-stream")), 400, "trigger"),
    (orjson.dumps({"id": "c1", "trigger": "regenerate-message"}), 404, "not found"),
    (orjson.dumps({"id": "c1", "messages": "nope"}), 400, "messages"),
]


async def test_bad_requests_are_refused_and_change_nothing(alice: User) -> None:
    before = await row_counts(alice.srv)
    for raw, status, words in BAD:
        r = await alice.http.post(API, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == status, (raw, r.text)
        err = r.json()["error"]
        assert words.lower() in err["message"].lower(), (raw, err)
    for path in ("bad id!/stream", "bad id!/messages"):
        assert (await alice.http.get(f"{API}/{path}")).status_code == 400
    assert (await alice.http.post(f"{API}/never-used/stop")).status_code == 404
    assert await row_counts(alice.srv) == before


async def test_a_chat_is_its_owners_only(alice: User, bob: User) -> None:
    r, chunks = await chunks_of(alice.http, "POST", API, json=body("shared-id"))
    assert r.status_code == 200 and chunks[-1] == "[DONE]"
    assert (await alice.http.get("/api/chats/shared-id")).json()["id"] == "shared-id"
    for method, url, json in [("POST", API, body("shared-id", "echo: mine now")),
                              ("GET", f"{API}/shared-id/stream", None),
                              ("GET", f"{API}/shared-id/messages", None),
                              ("POST", f"{API}/shared-id/stop", None)]:
        r = await bob.http.request(method, url, json=json)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", url
    assert len(await alice.messages("shared-id")) == 2


async def test_a_repeated_request_is_one_turn(alice: User) -> None:
    _, first = await chunks_of(alice.http, "POST", API, json=body("again", ui_id="same"))
    _, second = await chunks_of(alice.http, "POST", API, json=body("again", ui_id="same"))
    assert first[0]["messageId"] == second[0]["messageId"]
    assert text_of(first) == text_of(second) == "hi there"
    assert len(await alice.messages("again")) == 2
    r = await alice.http.post(API, json=body("again", "echo: other words", ui_id="same"))
    assert r.status_code == 400 and "another text" in r.json()["error"]["message"]


async def test_only_the_last_answer_is_regenerated(alice: User) -> None:
    await chunks_of(alice.http, "POST", API, json=body("regen", "echo: one", ui_id="q1"))
    _, second = await chunks_of(alice.http, "POST", API,
                                json=body("regen", "echo: two", ui_id="q2"))
    last_answer = second[0]["messageId"]
    for target in ("q2", last_answer, None):
        req = {"id": "regen", "trigger": "regenerate-message", "messageId": target}
        r, chunks = await chunks_of(alice.http, "POST", API, json=req)
        assert r.status_code == 200 and text_of(chunks) == "two", target
    r = await alice.http.post(API, json={"id": "regen", "trigger": "regenerate-message",
                                         "messageId": "q1"})
    assert r.status_code == 400 and "only the last answer" in r.json()["error"]["message"]


async def test_chatcast_clients_and_ai_sdk_streams_share_the_turn(alice: User) -> None:
    chat = await alice.new_chat()  # a chatcast chat: its id is an AI SDK chat id too
    async with await alice.ws() as tab:
        await tab.subscribe(chat)
        r, chunks = await chunks_of(alice.http, "POST", API,
                                    json=body(chat, "Tell me about fan-out"))
        start = chunks[0]
        done = await tab.wait_for("done", lambda e: e["gen"] == start["messageMetadata"]["gen"])
        assert done["message"]["id"] == start["messageId"]
        assert done["message"]["content"] == text_of(chunks)
        assert chunks[-2:] == [{"type": "finish", "finishReason": "stop"}, "[DONE]"]
        assert r.headers["x-vercel-ai-ui-message-stream"] == "v1"
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"

        # the reverse: a turn chatcast's client starts is resumable as a UI message stream
        ack = await tab.request({"type": "send", "chat": chat, "content": "And resume?"})
        r, resumed = await chunks_of(alice.http, "GET", f"{API}/{chat}/stream")
        assert r.status_code == 200
        assert resumed[0]["messageId"] == ack["assistant"]
        done = await tab.wait_for("done", lambda e: e["gen"] == ack["gen"])
        assert text_of(resumed) == done["message"]["content"]
    assert (await alice.http.get(f"{API}/{chat}/stream")).status_code == 204


async def test_history_as_ui_messages(alice: User) -> None:
    await chunks_of(alice.http, "POST", API, json=body("hist", "echo: first", ui_id="mine-1"))
    r = await alice.http.get(f"{API}/hist/messages")
    messages = r.json()["messages"]
    assert messages[0]["id"] == "mine-1"
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["parts"] == [{"type": "step-start"},
                                    {"type": "text", "text": "first", "state": "done"}]
    assert messages[1]["metadata"]["status"] == "completed"
    assert (await alice.http.get(f"{API}/never-used/messages")).json() == {
        "messages": [], "has_more": False}


@pytest.fixture(scope="module")
async def slow(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServerProcess]:
    """Slow tokens, fast heartbeats, tight limits (each test uses its own user)."""
    async for srv in module_server(tmp_path_factory, {
            "CHATCAST_DEMO_TOKENS_PER_S": "5", "CHATCAST_SSE_HEARTBEAT_S": "0.1",
            "CHATCAST_MESSAGES_PER_MINUTE": "2", "CHATCAST_MAX_SOCKETS_PER_USER": "1"}):
        yield srv


@pytest.fixture
async def slow_user(slow: ServerProcess) -> AsyncIterator[User]:
    async for user in make_user(slow):
        yield user


async def test_heartbeats_limits_and_stop(slow_user: User) -> None:
    http = slow_user.http
    async with http.stream("POST", API, json=body("slow", "Tell me a lot")) as r:
        lines = r.aiter_lines()
        seen: list[str] = []
        async for line in lines:
            seen.append(line)
            if line == ": heartbeat":
                break
        assert any(line.startswith("data: ") for line in seen)
        # the same per-minute limit as everywhere (send and regenerate each count one)
        r2 = await http.post(API, json=body("slow2", "echo: a"))
        assert r2.status_code == 200
        r3 = await http.post(API, json=body("slow3", "echo: b"))
        assert r3.status_code == 429 and int(r3.headers["retry-after"]) >= 1
        assert r3.json()["error"]["code"] == "rate_limited"
        stopped = await http.post(f"{API}/slow/stop")
        assert stopped.json()["status"] == "stopping"
        rest = [line async for line in lines]
    chunks = [orjson.loads(x[6:]) for x in rest if x.startswith("data: {")]
    assert chunks[-1] == {"type": "abort", "reason": "stopped"}
    assert rest[-2:] == ["data: [DONE]", ""] or rest[-1] == "data: [DONE]"
    [_, answer] = await slow_user.messages("slow")
    assert answer["status"] == "stopped"


async def test_origin_identity_and_socket_rules(slow_user: User, slow: ServerProcess) -> None:
    evil = {"Origin": "http://evil.example"}
    r = await slow_user.http.post(API, json=body("x1"), headers=evil)
    assert r.status_code == 403
    r = await slow_user.http.post(f"{API}/x1/stop", headers=evil)
    assert r.status_code == 403
    url = ai_ws_url(slow)
    with pytest.raises(InvalidStatus) as refused:
        await connect(url, origin=Origin("http://evil.example"), proxy=None,
                      additional_headers={"Cookie": slow_user.cookie})
    assert refused.value.response.status_code == 403
    # one socket per user here: /ws and /api/ai/ws share the count
    async with await WSClient.connect(slow.ws_url, cookie=slow_user.cookie), \
            await WSClient.connect(url, cookie=slow_user.cookie) as second:
        assert await second.wait_closed() == 4029


async def test_token_mode_refuses_without_credentials(server: ServerFactory) -> None:
    srv = await server(env={"CHATCAST_AUTH": "token"})
    async with httpx.AsyncClient(base_url=srv.url) as http:
        r = await http.post(API, json=body("t1"))
        assert r.status_code == 401
        token = create_token(srv, "alice")
        r = await http.post(API, json=body("t1"), headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
    url = ai_ws_url(srv)
    async with await WSClient.connect(url) as ws:
        assert await ws.wait_closed() == 4001


# -- the WebSocket transport's frames ---------------------------------------------------------

@contextlib.asynccontextmanager
async def ai_socket(user: User) -> AsyncIterator[ClientConnection]:
    """A raw WebSocket to the AI SDK endpoint with `user`'s cookie, to see its frames."""
    async with connect(ai_ws_url(user.srv), proxy=None,
                       additional_headers={"Cookie": user.cookie}) as ws:
        yield ws


def send_frame(rid: str, chat: str, text: str) -> dict[str, Any]:
    """WebSocketChatTransport's `send` of one user message."""
    return {"type": "send", "requestId": rid, **body(chat, text), "headers": {}, "body": {}}


async def frames_until(ws: ClientConnection, rid: str, last: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        frame = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        if frame.get("requestId") != rid:
            continue
        out.append(frame)
        if frame["type"] in (last, "error"):
            return out


async def test_websocket_frames(alice: User) -> None:
    async with ai_socket(alice) as ws:
        send = send_frame("r1", "wschat", "echo: one two three")
        await ws.send(orjson.dumps(send).decode())
        frames = await frames_until(ws, "r1", "end")
        assert frames[0] == {"type": "start", "requestId": "r1"}
        chunks = [f for f in frames if f["type"] == "chunk"]
        assert [f["sequence"] for f in chunks] == list(range(len(chunks)))
        assert text_of([f["chunk"] for f in chunks]) == "one two three"
        assert frames[-1] == {"type": "end", "requestId": "r1"}

        await ws.send(orjson.dumps({"type": "resume", "requestId": "r2", "id": "wschat",
                                    "headers": {}, "body": {}}).decode())
        assert await frames_until(ws, "r2", "no-active") == [
            {"type": "no-active", "requestId": "r2"}]
        # refusals answer the request; unreadable frames are ignored; the socket lives on
        await ws.send(orjson.dumps({**send, "requestId": "r3", "id": "bad id"}).decode())
        [err] = await frames_until(ws, "r3", "error")
        assert err["code"] == "bad_request" and "id" in err["errorText"]
        await ws.send(orjson.dumps({"type": "explode", "requestId": "r4"}).decode())
        [err] = await frames_until(ws, "r4", "error")
        assert err["code"] == "bad_request"
        await ws.send("{not json")
        await ws.send(orjson.dumps({"type": "abort", "requestId": "nobody"}).decode())
        await ws.send(orjson.dumps({**send, "requestId": "r5"}).decode())
        frames = await frames_until(ws, "r5", "end")
        assert frames[-1]["type"] == "end"
    assert len(await alice.messages("wschat")) == 2  # r5 repeated r1's message: one turn


async def test_websocket_abort_right_after_send_stops_it(alice: User) -> None:
    """An abort that comes while the send is still starting stops what it started."""
    async with ai_socket(alice) as ws:
        send = send_frame("a1", "wsabort", "Tell me a long story")
        await ws.send(orjson.dumps(send).decode())
        await ws.send(orjson.dumps({"type": "abort", "requestId": "a1"}).decode())
        for _ in range(200):
            msgs = await alice.messages("wsabort") if (await alice.http.get(
                "/api/chats/wsabort")).status_code == 200 else []
            if len(msgs) == 2 and msgs[1]["status"] != "streaming":
                break
            await asyncio.sleep(0.05)
        assert msgs[1]["status"] == "stopped"
