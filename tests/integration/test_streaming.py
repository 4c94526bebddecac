"""One process, real uvicorn: fan-out to every tab, resume without loss or duplicates over all
three transports, stop from any tab, generations that outlive their sockets."""

from __future__ import annotations

import asyncio

import httpx

from tests.conftest import ServerFactory
from tests.helpers.assemble import Assembler, digest
from tests.helpers.clients import Poller, SSEClient, WSClient
from tests.helpers.server import ServerProcess
from tests.integration.conftest import User, make_user, sql_message


async def test_two_tabs_one_cookie_both_stream_identical_text(alice: User) -> None:
    chat = await alice.new_chat()
    async with await alice.ws() as tab1, await alice.ws() as tab2:
        for tab in (tab1, tab2):
            ack = await tab.subscribe(chat)
            assert ack["type"] == "ack"
        ack = await tab1.request({"type": "send", "chat": chat, "content": "hello, tabs",
                                  "client_msg_id": "m1"})
        assert ack["type"] == "ack", ack
        gen = ack["gen"]
        # The user message reaches the other tab as `message`.
        msg = await tab2.wait_for("message", lambda e: e["message"]["role"] == "user")
        assert msg["message"]["content"] == "hello, tabs"
        await tab2.wait_for("start", lambda e: e["gen"] == gen)
        done1, done2 = await asyncio.gather(tab1.wait_done(gen), tab2.wait_done(gen))
    assert done1["status"] == done2["status"] == "completed"
    text1 = tab1.assembler(chat).check_done(done1)
    text2 = tab2.assembler(chat).check_done(done2)
    assert text1 == text2 and len(text1) > 200
    assert sum(1 for e in tab2.received if e["type"] == "delta") > 5  # it really streamed
    content, status = await sql_message(alice.srv, ack["assistant"])
    assert (content, status) == (text1, "complete")
    assert digest(content) == (done1["length"], done1["sha256"])


async def test_ws_reconnect_with_cursor_gets_exactly_the_rest(slow_srv: ServerProcess) -> None:
    async for alice in make_user(slow_srv):
        chat = await alice.new_chat()
        tab = await alice.ws()
        await tab.subscribe(chat)
        gen = (await tab.request({"type": "send", "chat": chat, "content": "resume me"}))["gen"]
        for _ in range(8):
            await tab.wait_for("delta")
        await tab.close()
        cursor = tab.assembler(chat).cursor
        assert cursor is not None and cursor.gen == gen and cursor.seq >= 8
        await asyncio.sleep(0.5)  # more text is produced while nobody listens
        again = await WSClient.connect(slow_srv.ws_url, cookie=alice.cookie,
                                       assemblers=tab.assemblers)
        async with again:
            await again.subscribe(chat, cursor.as_dict())
            first = await again.wait_for("delta")
            # The missed chunks may arrive merged into one frame (seq = its last chunk);
            # the assembler proves there is no hole and no duplicate.
            assert first["seq"] > cursor.seq
            done = await again.wait_done(gen)
        assert not any(e["type"] == "snapshot" for e in again.received)
        text = again.assembler(chat).check_done(done)
        assert (await sql_message(slow_srv, done["message"]["id"]))[0] == text


async def test_sse_last_event_id_resumes_exactly(slow_srv: ServerProcess) -> None:
    async for alice in make_user(slow_srv):
        chat = await alice.new_chat()
        url = f"/api/chats/{chat}/events"
        first = SSEClient(alice.http, url)
        async with first:
            snap = await first.wait_for("snapshot")
            assert snap["active"] is None
            r = await alice.http.post(f"/api/chats/{chat}/messages",
                                      json={"content": "stream over sse"})
            assert r.status_code == 202, r.text
            gen = r.json()["gen"]
            for _ in range(6):
                await first.wait_for("delta")
        last_id = first.last_event_id
        assert last_id is not None and last_id.startswith(gen + ":")
        await asyncio.sleep(0.4)
        second = SSEClient(alice.http, url, last_event_id=last_id, assemblers=first.assemblers)
        async with second:
            done = await second.wait_done(gen)
        assert not first.problems and not second.problems
        assert not any(e["type"] == "snapshot" for e in second.received)
        second.assembler(chat).check_done(done)


async def test_long_poll_cursor_resumes_exactly(slow_srv: ServerProcess) -> None:
    async for alice in make_user(slow_srv):
        chat = await alice.new_chat()
        poller = Poller(alice.http, chat, wait=5)
        events = await poller.poll()
        assert [e["type"] for e in events] == ["snapshot"]
        r = await alice.http.post(f"/api/chats/{chat}/messages", json={"content": "poll me"})
        gen = r.json()["gen"]
        done = await poller.wait_done(gen, timeout=60)
        poller.assembler(chat).check_done(done)
        assert poller.polls > 2
        # Polling again from the final cursor waits (nothing new) and returns nothing.
        assert await poller.poll(wait=0.3) == []


async def test_one_shot_post_streams_the_answer(alice: User) -> None:
    chat = await alice.new_chat()
    async with alice.http.stream("POST", f"/api/chats/{chat}/messages",
                                 json={"content": "curl me"},
                                 headers={"Accept": "text/event-stream"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        asm, done = Assembler(chat), None
        import orjson
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                event = orjson.loads(line[6:])
                asm.apply(event)
                if event["type"] == "done":
                    done = event
    assert done is not None and done["status"] == "completed"
    asm.check_done(done)


async def test_stop_from_another_tab_ends_it_for_everyone(slow_srv: ServerProcess) -> None:
    async for alice in make_user(slow_srv):
        chat = await alice.new_chat()
        async with await alice.ws() as tab_a, await alice.ws() as tab_b:
            await tab_a.subscribe(chat)
            await tab_b.subscribe(chat)
            gen = (await tab_a.request({"type": "send", "chat": chat,
                                        "content": "stop me"}))["gen"]
            for _ in range(4):
                await tab_a.wait_for("delta")
            ack = await tab_b.request({"type": "stop", "gen": gen})
            assert ack["type"] == "ack" and ack["gen"] == gen
            done_a = await tab_a.wait_done(gen)
            done_b = await tab_b.wait_done(gen)
            # stop is idempotent: a second stop acks the final status
            again = await tab_b.request({"type": "stop", "gen": gen})
            assert again["status"] == "stopped"
        assert done_a["status"] == done_b["status"] == "stopped"
        partial = tab_a.assembler(chat).check_done(done_a)
        assert partial and tab_b.assembler(chat).check_done(done_b) == partial
        assert await sql_message(slow_srv, done_a["message"]["id"]) == (partial, "stopped")


async def test_closing_every_socket_does_not_stop_the_generation(srv: ServerProcess) -> None:
    async for alice in make_user(srv):
        chat = await alice.new_chat()
        tab = await alice.ws()
        await tab.subscribe(chat)
        ack = await tab.request({"type": "send", "chat": chat, "content": "keep going"})
        await tab.wait_for("delta")
        await tab.close()
        gen = ack["gen"]
        for _ in range(100):
            g = (await alice.http.get(f"/api/generations/{gen}")).json()
            if g["status"] != "active":
                break
            await asyncio.sleep(0.1)
        assert g["status"] == "completed"
        content, status = await sql_message(srv, ack["assistant"])
        assert status == "complete" and content == g["content"] and len(content) > 200


async def test_busy_then_regenerate_and_continue(slow_srv: ServerProcess) -> None:
    async for alice in make_user(slow_srv):
        chat = await alice.new_chat()
        async with await alice.ws() as tab:
            await tab.subscribe(chat)
            gen = (await tab.request({"type": "send", "chat": chat, "content": "one"}))["gen"]
            busy = await tab.request({"type": "send", "chat": chat, "content": "two"})
            assert busy["type"] == "error" and busy["code"] == "busy" and busy["retryable"]
            await tab.wait_for("delta")
            await tab.request({"type": "stop", "chat": chat})
            stopped = await tab.wait_done(gen)
            partial = tab.assembler(chat).check_done(stopped)
            # continue appends to the same message and completes it
            cont = await tab.request({"type": "continue", "gen": gen})
            assert cont["type"] == "ack" and cont["assistant"] == stopped["message"]["id"]
            done = await tab.wait_done(cont["gen"])
            assert done["status"] == "completed"
            full = tab.assembler(chat).check_done(done)
            assert full.startswith(partial) and len(full) > len(partial)
            # regenerate makes a second answer to the same user message
            regen = await tab.request({"type": "regenerate", "chat": chat})
            assert regen["type"] == "ack"
            done2 = await tab.wait_done(regen["gen"])
            assert tab.assembler(chat).check_done(done2) == full  # the demo is deterministic
        # the model saw the conversation: the second answer's usage counts the history
        assert done2["usage"]["input_tokens"] >= 1


async def test_snapshot_mid_stream_then_live(slow_srv: ServerProcess) -> None:
    async for alice in make_user(slow_srv):
        chat = await alice.new_chat()
        async with await alice.ws() as tab:
            await tab.subscribe(chat)
            gen = (await tab.request({"type": "send", "chat": chat, "content": "join"}))["gen"]
            for _ in range(10):
                await tab.wait_for("delta")
            async with await alice.ws() as late:
                await late.subscribe(chat)  # no cursor: snapshot with the text so far
                snap = await late.wait_for("snapshot")
                assert snap["active"]["gen"] == gen and snap["active"]["seq"] >= 10
                done = await late.wait_done(gen)
            late.assembler(chat).check_done(done)


async def test_history_pages_and_chat_crud(alice: User) -> None:
    chat = await alice.new_chat()
    r = await alice.http.patch(f"/api/chats/{chat}", json={"title": "Renamed"})
    assert r.status_code == 200 and r.json()["title"] == "Renamed"
    chats = (await alice.http.get("/api/chats")).json()["chats"]
    assert [c["id"] for c in chats] == [chat]
    page = (await alice.http.get(f"/api/chats/{chat}/messages")).json()
    assert page == {"messages": [], "has_more": False}
    models = (await alice.http.get("/api/models")).json()["models"]
    assert any(m["provider"] == "demo" for m in models)
    assert (await alice.http.delete(f"/api/chats/{chat}")).status_code == 204
    assert (await alice.http.get(f"/api/chats/{chat}")).status_code == 404


async def test_health_ready_metrics_openapi(alice: User) -> None:
    http = alice.http
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    ready = await http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["store"] and ready.json()["bus"]
    chat = await alice.new_chat()
    async with await alice.ws() as tab:
        await tab.subscribe(chat)
        gen = (await tab.request({"type": "send", "chat": chat, "content": "count"}))["gen"]
        await tab.wait_done(gen)
        metrics = (await http.get("/metrics")).text
    for name in ("chatcast_active_generations", 'chatcast_connected_clients{transport="ws"}',
                 "chatcast_time_to_first_token_seconds_count",
                 'chatcast_frames_sent_total{transport="ws"}',
                 "chatcast_coalesced_deltas_total", "chatcast_slow_consumer_closes_total"):
        assert name in metrics, name
    spec = (await http.get("/openapi.json")).json()
    assert "/api/chats/{chat}/messages" in spec["paths"]
    index = await http.get("/")
    assert index.status_code == 200
    assert "script-src 'self'" in index.headers.get("content-security-policy", "")


async def test_chats_are_private(alice: User, bob: User) -> None:
    chat = await alice.new_chat()
    assert (await bob.http.get(f"/api/chats/{chat}")).status_code == 404
    r = await bob.http.post(f"/api/chats/{chat}/messages", json={"content": "hi"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert (await bob.http.get(f"/api/chats/{chat}/events")).status_code == 404
    assert (await bob.http.get(f"/api/chats/{chat}/poll")).status_code == 404
    assert [c["id"] for c in (await bob.http.get("/api/chats")).json()["chats"]] == []


async def test_ws_handshake_without_cookie_gets_one(srv: ServerProcess) -> None:
    async with await WSClient.connect(srv.ws_url) as ws:
        assert "chatcast_session" in ws.set_cookies
        assert (await ws.request({"type": "ping"}))["type"] == "pong"
    async with httpx.AsyncClient(base_url=srv.url) as http:
        assert (await http.get("/healthz")).status_code == 200


async def test_sse_heartbeats_and_headers(server: ServerFactory) -> None:
    srv = await server(env={"CHATCAST_SSE_HEARTBEAT_S": "0.2"})
    async for alice in make_user(srv):
        chat = await alice.new_chat()
        async with alice.http.stream("GET", f"/api/chats/{chat}/events") as r:
            assert r.headers["cache-control"] == "no-cache"
            assert r.headers["x-accel-buffering"] == "no"
            lines: list[str] = []
            async for line in r.aiter_lines():
                lines.append(line)
                if sum(1 for x in lines if x.startswith(":")) >= 2:
                    break
        assert "retry: 2000" in lines and "event: snapshot" in lines
