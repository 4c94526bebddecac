"""The test kit checks itself: assembler, SSE parsing, clients, redis-server and server
process helpers, against small stand-ins (so a broken helper fails here, not as a
mysterious server failure)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.server import ServerConnection, serve

from chatcast.core import protocol
from tests.helpers.assemble import Assembler, Cursor
from tests.helpers.clients import SSEClient, SSEParser, WSClient
from tests.helpers.redis_server import RedisServer
from tests.helpers.server import ServerFailed, ServerProcess

CHAT, GEN = "chat1", "gen1"


def final(text: str, gen: str = GEN, seq: int = 4, mid: str = "m1") -> dict[str, Any]:
    msg = {"id": mid, "chat": CHAT, "role": "assistant", "content": text, "gen": gen,
           "status": "complete"}
    return protocol.done(CHAT, gen, seq, "completed", msg).data


def stream(texts: list[str], mid: str = "m1", gen: str = GEN) -> list[dict[str, Any]]:
    events = [protocol.start(CHAT, gen, mid, "demo", "demo-1").data]
    events += [protocol.delta(CHAT, gen, i + 1, t).data for i, t in enumerate(texts)]
    events.append(final("".join(texts), gen, len(texts) + 1, mid))
    return events


# -- Assembler ------------------------------------------------------------------------------


def test_assembler_accepts_an_exact_stream() -> None:
    asm = Assembler(CHAT).feed(stream(["Hel", "lo", " 🌍"]))
    assert asm.check_done(gen=GEN) == "Hello 🌍"
    assert asm.cursor == Cursor(GEN, 4)


def test_assembler_accepts_merged_frames() -> None:
    events = [protocol.start(CHAT, GEN, "m1", "demo", "d").data,
              protocol.delta(CHAT, GEN, 2, "ab").data,  # chunks 1+2 merged
              protocol.delta(CHAT, GEN, 5, "cde").data, final("abcde", seq=6)]
    assert Assembler().feed(events).check_done(events[-1]) == "abcde"


def test_assembler_rejects_a_repeated_delta() -> None:
    events = stream(["a", "b", "c"])
    events.insert(3, events[2])  # delta seq 2 again
    asm = Assembler(CHAT).feed(events)
    assert len(asm.duplicates) == 1
    assert asm.text(GEN) == "abc"
    with pytest.raises(AssertionError, match="duplicate"):
        asm.check_done(gen=GEN)
    with pytest.raises(AssertionError, match="not above cursor"):
        Assembler(CHAT, strict=True).feed(events)


def test_assembler_detects_a_lost_chunk() -> None:
    events = stream(["a", "b", "c"])
    del events[2]
    with pytest.raises(AssertionError, match="differs"):
        Assembler(CHAT).feed(events).check_done(gen=GEN)


def test_assembler_resumes_from_a_snapshot() -> None:
    snap = protocol.snapshot(CHAT, [{"id": "u1", "role": "user", "content": "hi"}],
                             {"gen": GEN, "message": "m1", "seq": 2, "content": "ab"}).data
    asm = Assembler(CHAT).feed([snap, protocol.delta(CHAT, GEN, 2, "b").data,
                                protocol.delta(CHAT, GEN, 3, "c").data, final("abc")])
    assert len(asm.duplicates) == 1  # seq 2 was in the snapshot
    asm.duplicates.clear()
    asm.problems.clear()
    assert asm.check_done(gen=GEN) == "abc"


def test_assembler_appends_a_continue_generation_to_its_message() -> None:
    first = stream(["par", "tial"], gen="g1")
    first[-1] = protocol.done(CHAT, "g1", 3, "interrupted",
                              {"id": "m1", "content": "partial"}).data
    cont = stream([" and", " more"], gen="g2")
    cont[-1] = final("partial and more", gen="g2", seq=3)
    asm = Assembler(CHAT).feed(first + cont)
    assert asm.check_done(gen="g1") == "partial"
    assert asm.check_done(gen="g2") == "partial and more"


def test_assembler_flags_deltas_of_unknown_generations_and_ignores_other_chats() -> None:
    asm = Assembler(CHAT)
    asm.apply(protocol.delta("other", GEN, 1, "x"))
    assert asm.problems == []
    asm.apply(protocol.delta(CHAT, GEN, 1, "x"))
    assert asm.problems and "before any start" in asm.problems[0]


def test_assembler_checks_the_digest() -> None:
    events = stream(["a", "b"])
    events[-1]["sha256"] = "0" * 64
    with pytest.raises(AssertionError, match="sha256"):
        Assembler(CHAT).feed(events).check_done(gen=GEN)


# -- SSE --------------------------------------------------------------------------------------


def test_sse_parser() -> None:
    parser = SSEParser()
    lines = ["retry: 2000", ": heartbeat", "event: delta", "id: g:1", 'data: {"a":', "data: 1}",
             "", "", "data: plain", ""]
    msgs = [m for line in lines if (m := parser.feed_line(line)) is not None]
    assert [(m.event, m.data, m.id) for m in msgs] == [
        ("delta", '{"a":\n1}', "g:1"), ("message", "plain", "g:1")]
    assert parser.retry_ms == 2000 and parser.comments == 1


async def test_sse_client_reads_events_and_checks_ids() -> None:
    events = stream(["x", "y"])
    body = b"retry: 2000\r\n\r\n: hi\r\n\r\n" + b"".join(
        protocol.sse_frame(protocol.Event(e)) for e in events)
    seen: dict[str, str] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.update(request.headers)
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    transport = httpx.MockTransport(handler)
    async with (httpx.AsyncClient(transport=transport, base_url="http://t") as http,
                SSEClient(http, "/events", last_event_id="g0:3") as sse):
        done = await sse.wait_done(GEN)
        assert done["type"] == "done"
        assert [e["type"] for e in sse.drain()] == ["start", "delta", "delta"]
    assert seen["last-event-id"] == "g0:3"
    assert sse.problems == [] and sse.last_event_id == f"{GEN}:3"


# -- WebSocket --------------------------------------------------------------------------------


async def test_ws_client_waits_requests_and_assembles() -> None:
    headers: dict[str, str] = {}

    async def handler(conn: ServerConnection) -> None:
        assert conn.request is not None
        headers.update(conn.request.headers)
        req = protocol.parse_request(await conn.recv())
        await conn.send(protocol.ack(req.rid, gen=GEN).encode().decode())
        for event in stream(["one ", "two"]):
            await conn.send(protocol.Event(event).encode().decode())
        await conn.close(4008)

    async with serve(handler, "127.0.0.1", 0) as ws_server:
        port = next(iter(ws_server.sockets)).getsockname()[1]
        async with await WSClient.connect(f"ws://127.0.0.1:{port}/ws",
                                          cookie="chatcast_session=abc") as ws:
            ack = await ws.request({"type": "send", "chat": CHAT, "content": "hi"})
            assert ack["type"] == "ack" and ack["gen"] == GEN
            await ws.wait_done(GEN)
            assert ws.assembler(CHAT).text(GEN) == "one two"
            assert await ws.wait_closed() == 4008
    assert headers["cookie"] == "chatcast_session=abc"
    assert headers["origin"] == f"http://127.0.0.1:{port}"


# -- processes --------------------------------------------------------------------------------


async def test_redis_server_kill_and_restart(redis_server: Callable[[], RedisServer]) -> None:
    server: RedisServer = redis_server()
    client = aioredis.from_url(server.url)
    try:
        await client.set("k", "v")
        server.kill()
        with pytest.raises(aioredis.ConnectionError):
            await client.get("k")
        server.restart()
        assert await client.get("k") is None  # nothing persisted
    finally:
        await client.aclose()


STAND_IN = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"ok")
print("stand-in listening", flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


async def test_server_process_lifecycle(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path, command=[sys.executable, "-c", STAND_IN, "{port}"],
                         migrate=False, env={"EXTRA": "1"})
    await proc.start()
    try:
        async with httpx.AsyncClient(trust_env=False) as http:
            assert (await http.get(f"{proc.url}/healthz")).text == "ok"
        assert "stand-in listening" in proc.logs()
        proc.kill(signal.SIGKILL)
        assert await proc.wait_async() == -signal.SIGKILL
        port = proc.port
        await proc.restart()
        assert proc.port == port and proc.returncode is None
        proc.terminate()
        assert proc.wait() == -signal.SIGTERM
    finally:
        await proc.stop()


async def test_server_process_reports_an_early_exit(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path, command=[sys.executable, "-c", "print('boom'); exit(3)"],
                         migrate=False)
    with pytest.raises(ServerFailed, match="boom"):
        await proc.start()
