"""Bad input gets a clear error, leaves the socket usable where the protocol says so, and
changes nothing in the database (RELIABILITY.md rows 9-12, 16)."""

from __future__ import annotations

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from tests.helpers.clients import Poller, SSEClient, WSClient
from tests.helpers.server import ServerProcess
from tests.integration.conftest import User, row_counts

BAD_FRAMES = [
    ("{not json", "bad_request", "malformed JSON"),
    ("[1, 2]", "bad_request", "JSON object"),
    ('{"rid": "a"}', "bad_request", "type"),
    ('{"type": "explode", "rid": "b"}', "unknown_type", "explode"),
    ('{"type": "send", "rid": "c"}', "bad_request", "chat"),
    ('{"type": "send", "chat": 42, "content": "x", "rid": "d"}', "bad_request", "chat"),
    ('{"type": "send", "chat": "abc", "content": ["x"], "rid": "e"}', "bad_request", "content"),
    ('{"type": "subscribe", "chat": "abc", "cursor": {"gen": "g", "seq": -1}, "rid": "f"}',
     "bad_request", "seq"),
    ('{"type": "subscribe", "chat": "../etc/passwd", "rid": "g"}', "bad_request", "chat"),
    ('{"type": "stop", "rid": "h"}', "bad_request", "gen"),
    ('{"type": "send", "chat": "abc", "content": "   ", "rid": "i"}', "bad_request", "empty"),
]


async def test_bad_frames_answer_errors_and_change_nothing(alice: User) -> None:
    chat = await alice.new_chat()
    before = await row_counts(alice.srv)
    async with await alice.ws() as ws:
        await ws.subscribe(chat)
        for raw, code, words in BAD_FRAMES:
            await ws.send_raw(raw)
            err = await ws.wait_for("error")
            assert err["code"] == code, (raw, err)
            assert words.lower() in err["message"].lower(), (raw, err)
            assert err["retryable"] is False
        # rid is echoed when it could be read
        await ws.send_raw('{"type": "explode", "rid": "echo-me"}')
        assert (await ws.wait_for("error"))["rid"] == "echo-me"
        # empty and over-long content on a real chat
        empty = await ws.request({"type": "send", "chat": chat, "content": "  \n "})
        assert empty["code"] == "bad_request"
        huge = await ws.request({"type": "send", "chat": chat, "content": "x" * 40_000})
        assert huge["code"] == "too_large"
        # the socket is still usable, and the chat too
        assert (await ws.request({"type": "ping"}))["type"] == "pong"
    assert await row_counts(alice.srv) == before


async def test_frame_over_64k_closes_1009_and_server_is_fine(alice: User) -> None:
    async with await alice.ws() as ws:
        await ws.send_raw('{"type": "ping", "pad": "' + "x" * 70_000 + '"}')
        assert await ws.wait_closed() == 1009
    async with await alice.ws() as ws:  # a new socket works
        assert (await ws.request({"type": "ping"}))["type"] == "pong"


async def test_foreign_origin_is_refused(srv: ServerProcess) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await WSClient.connect(srv.ws_url, origin="https://evil.example")
    assert refused.value.response.status_code == 403
    # no Origin at all (a non-browser client) is allowed
    async with await WSClient.connect(srv.ws_url, origin=None) as ws:
        assert (await ws.request({"type": "ping"}))["type"] == "pong"


async def test_cross_site_post_is_refused(alice: User) -> None:
    before = await row_counts(alice.srv)
    r = await alice.http.post("/api/chats", json={}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert await row_counts(alice.srv) == before


async def test_another_users_chat_and_generation_are_not_found(alice: User, bob: User) -> None:
    chat = await alice.new_chat()
    async with await alice.ws() as tab:
        await tab.subscribe(chat)
        ack = await tab.request({"type": "send", "chat": chat, "content": "mine"})
        gen = ack["gen"]
        await tab.wait_done(gen)
    before = await row_counts(alice.srv)
    async with await bob.ws() as ws:
        for req in ({"type": "subscribe", "chat": chat},
                    {"type": "subscribe", "chat": chat, "cursor": {"gen": gen, "seq": 0}},
                    {"type": "send", "chat": chat, "content": "hijack"},
                    {"type": "stop", "gen": gen},
                    {"type": "stop", "chat": chat},
                    {"type": "regenerate", "chat": chat},
                    {"type": "continue", "gen": gen}):
            err = await ws.request(req)
            assert err["type"] == "error" and err["code"] == "not_found", (req, err)
            assert "mine" not in str(err)
        assert not [e for e in ws.received if e["type"] in ("snapshot", "delta", "done")]
    for method, url in (("GET", f"/api/generations/{gen}"),
                        ("POST", f"/api/generations/{gen}/stop"),
                        ("POST", f"/api/generations/{gen}/continue"),
                        ("POST", f"/api/chats/{chat}/regenerate"),
                        ("PATCH", f"/api/chats/{chat}"),
                        ("DELETE", f"/api/chats/{chat}")):
        r = await bob.http.request(method, url, json={} if method != "GET" else None)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (url, r.text)
    assert await row_counts(alice.srv) == before


async def test_bogus_cursors_get_a_snapshot(alice: User, bob: User) -> None:
    chat = await alice.new_chat()
    other = await alice.new_chat()
    async with await alice.ws() as tab:
        await tab.subscribe(other)
        other_gen = (await tab.request({"type": "send", "chat": other, "content": "x"}))["gen"]
        await tab.wait_done(other_gen)
    bob_chat = await bob.new_chat()
    async with await bob.ws() as tab:
        await tab.subscribe(bob_chat)
        bob_gen = (await tab.request({"type": "send", "chat": bob_chat, "content": "y"}))["gen"]
        await tab.wait_done(bob_gen)
    cursors = [{"gen": "nosuchgeneration", "seq": 3},   # unknown
               {"gen": other_gen, "seq": 1},            # another chat's generation
               {"gen": bob_gen, "seq": 1},              # another user's generation
               {"gen": "-", "seq": 0}]                  # "never generated" on a chat that has
    async with await alice.ws() as ws:
        for cursor in cursors:
            ack = await ws.subscribe(chat if cursor["gen"] != "-" else other, cursor)
            assert ack["type"] == "ack", ack
            snap = await ws.wait_for("snapshot")
            assert "y" not in [m["content"] for m in snap["messages"]]
    async with SSEClient(alice.http, f"/api/chats/{chat}/events",
                         last_event_id="garbage-without-colon") as sse:
        assert (await sse.wait_for("snapshot"))["chat"] == chat
    poller = Poller(alice.http, chat, cursor="nosuch:12", wait=1)
    assert [e["type"] for e in await poller.poll()] == ["snapshot"]


async def test_http_bad_bodies(alice: User) -> None:
    chat = await alice.new_chat()
    before = await row_counts(alice.srv)
    cases = [
        (b"{oops", 400, "bad_request"),
        (b"[]", 400, "bad_request"),
        (b'{"content": 5}', 400, "bad_request"),
        (b'{"content": "hi", "unexpected": 1}', 400, "bad_request"),
        (('{"content": "' + "x" * 40_000 + '"}').encode(), 413, "too_large"),
    ]
    for body, status, code in cases:
        r = await alice.http.post(f"/api/chats/{chat}/messages", content=body,
                                  headers={"Content-Type": "application/json"})
        assert r.status_code == status, (body[:40], r.text)
        assert r.json()["error"]["code"] == code
    r = await alice.http.get(f"/api/chats/{chat}/poll", params={"wait": "soon", "cursor": "-:0"})
    assert r.status_code == 400
    r = await alice.http.post("/api/chats", json={"provider": "nonexistent"})
    assert r.status_code == 400 and "not configured" in r.json()["error"]["message"]
    assert await row_counts(alice.srv) == before


async def test_send_is_idempotent_by_client_msg_id(alice: User) -> None:
    chat = await alice.new_chat()
    async with await alice.ws() as ws:
        await ws.subscribe(chat)
        first = await ws.request({"type": "send", "chat": chat, "content": "once",
                                  "client_msg_id": "same"})
        again = await ws.request({"type": "send", "chat": chat, "content": "once",
                                  "client_msg_id": "same"})
        assert first["type"] == again["type"] == "ack"
        assert first["gen"] == again["gen"] and first["message"]["id"] == again["message"]["id"]
        await ws.wait_done(first["gen"])
        # after it finished, the same id still answers the same result
        third = await ws.request({"type": "send", "chat": chat, "content": "once",
                                  "client_msg_id": "same"})
        assert third["gen"] == first["gen"]
    counts = await row_counts(alice.srv)
    assert counts["generation"] == 1 and counts["message"] == 2


async def test_unauthenticated_http_client_gets_a_fresh_identity(srv: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=srv.url) as http:
        r = await http.get("/api/chats")
        assert r.status_code == 200 and r.json() == {"chats": []}
        assert "chatcast_session" in r.headers["set-cookie"]
        assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=Lax" in r.headers["set-cookie"]
    async with httpx.AsyncClient(base_url=srv.url,
                                 cookies={"chatcast_session": "forged.value"}) as http:
        r = await http.get("/api/chats")
        assert "chatcast_session" in r.headers.get("set-cookie", "")  # forged → new user
