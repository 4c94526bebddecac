"""HTTP keep-alive (CHATCAST_HTTP_KEEPALIVE_S, default 75 s). uvicorn's own default (5 s)
equals the keep-alive expiry of httpx (5 s): a client reusing a connection idle for just
under 5 s sent its request as the server closed it and got "Server disconnected without
sending a response". And a backend behind a load balancer must keep idle connections longer
than the balancer (AWS ALB: 60 s)."""

from __future__ import annotations

import asyncio

import httpx

from tests.conftest import ServerFactory
from tests.helpers.server import ServerProcess

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: chatcast\r\n\r\n"


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """One request on an open connection; the response head ("" if the server closed)."""
    writer.write(REQUEST)
    await writer.drain()
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    except asyncio.IncompleteReadError as exc:
        return exc.partial
    except ConnectionResetError:
        return b""
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    await reader.readexactly(length)
    return head


async def _same_connection_after(srv: ServerProcess, idle_s: float) -> bytes:
    """The second response on one connection left idle `idle_s` after the first."""
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    try:
        assert (await _get(reader, writer)).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(idle_s)
        return await _get(reader, writer)
    finally:
        writer.close()


async def _httpx_reuse(srv: ServerProcess, idle_s: float) -> None:
    """httpx's defaults (keep-alive expiry 5 s): reuse after `idle_s`, just under it."""
    async with httpx.AsyncClient(base_url=srv.url) as http:
        assert (await http.get("/healthz")).status_code == 200
        await asyncio.sleep(idle_s)
        assert (await http.get("/healthz")).status_code == 200


async def test_idle_connections_outlive_client_expiry(server: ServerFactory) -> None:
    srv = await server()
    second, *_ = await asyncio.gather(
        _same_connection_after(srv, 6.0),
        *(_httpx_reuse(srv, idle) for idle in (4.9, 4.95, 4.99)))
    assert isinstance(second, bytes)
    assert second.startswith(b"HTTP/1.1 200"), "the server closed an idle connection at 5 s"


async def test_the_keepalive_setting_is_used(server: ServerFactory) -> None:
    srv = await server(env={"CHATCAST_HTTP_KEEPALIVE_S": "1"})
    assert await _same_connection_after(srv, 3.0) == b"", "kept open past the setting"
