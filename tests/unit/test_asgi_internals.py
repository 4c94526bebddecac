"""The reaches into uvicorn's internals hold on the uvicorn chatcast requires: on a real
websockets-sansio connection the direct write path is taken (not silently the ASGI one), and
pyproject.toml's floor is the release that has everything it reads."""

from __future__ import annotations

import asyncio
import re
import tomllib
from pathlib import Path
from typing import Any

import orjson
import uvicorn
import websockets
from starlette import types as asgi

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

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, ws=asgi_internals.SANSIO_WS,
                            lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
                await asyncio.sleep(0.01)
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as client:
            frames: list[Any] = [orjson.loads(await client.recv()) for _ in range(3)]
        assert [f["text"] for f in frames] == ["t1", "t2", "t3"]
        assert paths == ["direct"]
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
