"""A tab that stops reading while generations stream is coalesced, then given up on (4008)
once its bounded queue overflows; the other tab gets every token
and the generations go on (RELIABILITY.md row 14)."""

from __future__ import annotations

import asyncio
import base64
import os
import socket

from websockets.frames import Frame, Opcode

from tests.conftest import ServerFactory
from tests.helpers.clients import WSClient
from tests.integration.conftest import make_user

CHATS = 10
# Each answer echoes 300 KB, so the stalled tab falls behind by more than the kernel's
# socket buffers (a few MB on loopback) plus its 1 MiB outbox.
PROMPT = "echo:" + ("y" * 999 + " ") * 300


def open_stalled(port: int, cookie: str, chats: list[str]) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\nCookie: {cookie}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    for chat in chats:
        frame = Frame(Opcode.TEXT, f'{{"type": "subscribe", "chat": "{chat}"}}'.encode())
        sock.sendall(frame.serialize(mask=True))
    return sock


async def test_stalled_tab_is_closed_4008_others_unaffected(server: ServerFactory) -> None:
    srv = await server(env={"CHATCAST_DEMO_TOKENS_PER_S": "200",
                            "CHATCAST_MAX_MESSAGE_CHARS": "400000",
                            "CHATCAST_MAX_GENERATIONS_PER_USER": str(CHATS)})
    async for alice in make_user(srv):
        chats = [await alice.new_chat() for _ in range(CHATS)]
        # The stalled tab: a raw socket that completes the handshake, subscribes, and then
        # never reads again (a library client would keep reading into its own buffers).
        stalled = await asyncio.to_thread(open_stalled, srv.port, alice.cookie, chats)
        async with await WSClient.connect(srv.ws_url, cookie=alice.cookie) as healthy:
            for chat in chats:
                await healthy.subscribe(chat)
            gens = []
            for chat in chats:  # over HTTP: the prompt is larger than a WebSocket frame may be
                r = await alice.http.post(f"/api/chats/{chat}/messages", json={"content": PROMPT})
                assert r.status_code == 202, r.text
                gens.append((chat, r.json()["gen"]))
            for chat, gen in gens:
                done = await healthy.wait_done(gen, timeout=60)
                assert done["status"] == "completed"
                assert healthy.assembler(chat).check_done(done) == PROMPT[5:]
        # The server gave up on the stalled tab (it sends 4008 when the socket takes the
        # close frame, else drops it) and freed its queue; the benchmarks' slow-consumer
        # scenario shows a client that reads again receiving the 4008.
        stalled.close()
        assert "slow consumer closed" in srv.logs()
        metrics = (await alice.http.get("/metrics")).text
        assert "chatcast_slow_consumer_closes_total 1.0" in metrics
