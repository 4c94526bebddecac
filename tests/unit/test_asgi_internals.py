"""The reaches into uvicorn's internals hold on the uvicorn chatcast requires: on a real
websockets-sansio connection the direct write path is taken (not silently the ASGI one), and
pyproject.toml's floor is the release that has everything it reads."""

from __future__ import annotations

import asyncio
import contextlib
import re
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn
import websockets
from starlette import types as asgi
from starlette.websockets import WebSocket

from chatcast.core import protocol
from chatcast.server import asgi_internals
from tests.helpers.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


class _Owner:
    direct: asgi_internals.FrameWriter | None = None


def test_pyproject_requires_the_uvicorn_that_has_everything_read() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floor = next(d for d in deps if d.startswith("uvicorn"))
    found = re.search(r">=([\d.]+)", floor)
    assert found is not None, floor
    assert tuple(int(p) for p in found.group(1).split(".")) == asgi_internals.MIN_UVICORN
    assert asgi_internals.direct_writes_supported(asgi_internals.SANSIO_WS)
    assert not asgi_internals.direct_writes_supported("websockets")


async def test_a_real_sansio_connection_takes_the_direct_write_path() -> None:
    paths: list[str] = []
    written: list[int] = []

    async def app(scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        assert scope["type"] == "websocket"
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        paths.append("direct" if asgi_internals.sansio_protocol(send) is not None else "asgi")
        owner = _Owner()
        write = asgi_internals.frame_writer(send, owner, lambda: written.append(1))
        for seq in (1, 2, 3):
            assert write(protocol.delta("c", "g", seq, f"t{seq}")) is None  # did not suspend
        assert owner.direct is None and len(written) == 3
        while (await receive())["type"] != "websocket.disconnect":
            pass

    async with _serving(app) as port, websockets.connect(f"ws://127.0.0.1:{port}/ws") as client:
        frames: list[Any] = [orjson.loads(await client.recv()) for _ in range(3)]
    assert [f["text"] for f in frames] == ["t1", "t2", "t3"]
    assert paths == ["direct"]


async def test_an_accepted_sansio_connection_keeps_lean_state_and_no_handshake() -> None:
    """After accept, the connection's receive queue and `writable` event are the lean ones
    (with what was queued), its handshake request and response are gone and the request's
    headers emptied; reading, writing and closing go on as before."""
    seen: dict[str, Any] = {}

    async def app(scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        proto: Any = send.__self__  # type: ignore[attr-defined]
        request = proto.request
        await asyncio.sleep(0.2)  # the client's first frame is queued meanwhile
        ws = WebSocket(scope, receive, send)
        asgi_internals.release_handshake(ws, send)
        seen.update(queue=type(proto.queue), writable=type(proto.writable),
                    queued=proto.queue.qsize(), request=proto.request,
                    response=proto.response, headers=len(request.headers))
        while (msg := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": msg["text"].upper()})
            if msg["text"] == "bye":
                await send({"type": "websocket.close", "code": 1000})

    async with _serving(app) as port, websockets.connect(f"ws://127.0.0.1:{port}/ws") as client:
        await client.send("first")
        assert await client.recv() == "FIRST"
        await client.send("bye")
        assert await client.recv() == "BYE"
        await client.wait_closed()
    assert seen == {"queue": asgi_internals.LeanQueue, "writable": asgi_internals.LeanEvent,
                    "queued": 1, "request": None, "response": None, "headers": 0}


async def test_lean_queue_wakes_getters_in_order_and_survives_a_cancelled_one() -> None:
    queue = asgi_internals.LeanQueue()
    first = asyncio.create_task(queue.get())
    cancelled = asyncio.create_task(queue.get())
    third = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    queue.put_nowait("a")
    queue.put_nowait("b")
    assert await first == "a" and await third == "b" and cancelled.cancelled()
    assert queue.empty() and queue.qsize() == 0
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()
    queue.put_nowait("c")
    assert queue.get_nowait() == "c"


async def test_lean_queue_hands_an_item_on_when_its_woken_getter_is_cancelled() -> None:
    queue = asgi_internals.LeanQueue()
    woken = asyncio.create_task(queue.get())
    other = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("x")  # wakes `woken`, which is cancelled before it runs
    woken.cancel()
    assert await other == "x"


async def test_lean_event_wakes_every_waiter_and_clears() -> None:
    event = asgi_internals.LeanEvent()
    assert not event.is_set()
    waiters = [asyncio.create_task(event.wait()) for _ in range(3)]
    gone = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    event.set()
    assert await asyncio.gather(*waiters) == [True, True, True] and gone.cancelled()
    assert event.is_set() and await event.wait()
    event.clear()
    assert not event.is_set()
    late = asyncio.create_task(event.wait())
    await asyncio.sleep(0.01)
    assert not late.done()
    event.set()
    assert await late


@contextlib.asynccontextmanager
async def _serving(app: asgi.ASGIApp) -> AsyncIterator[int]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, ws=asgi_internals.SANSIO_WS,
                            lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
                await asyncio.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
