"""A minimal WebSocket client on a raw asyncio Protocol, for the load generator.

The `websockets` client costs tens of microseconds per received frame; one load-generator
core must take in more frames per second than one server core sends, so this client does
only what a benchmark needs: the HTTP upgrade, unmasked server frames (text, ping, close,
continuation), masked client text frames, and pong. Every received text frame is handed to
`on_text(payload, recv_time)` with the `time.time()` of the read that brought it.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time
from collections.abc import Callable

TextHandler = Callable[[bytes, float], None]

_MASK = b"\x00\x00\x00\x00"  # a zero key: the payload goes out unchanged (servers accept it)


class HandshakeFailed(RuntimeError):
    pass


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + _MASK + payload


class WSClient(asyncio.Protocol):
    def __init__(self, on_text: TextHandler) -> None:
        self.on_text = on_text
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._partial: bytearray | None = None
        self.open = False
        self.close_code: int | None = None
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    # asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self._buf
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[:end]).split(b"\r\n", 1)[0]
            del buf[:end + 4]
            if b" 101 " not in status + b" ":
                self._handshake.set_exception(HandshakeFailed(status.decode(errors="replace")))
                return
            self.open = True
            self._handshake.set_result(None)
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n, head = b1 & 0x7F, 2
            if n == 126:
                if size - pos < 4:
                    break
                n, head = struct.unpack_from("!H", buf, pos + 2)[0], 4
            elif n == 127:
                if size - pos < 10:
                    break
                n, head = struct.unpack_from("!Q", buf, pos + 2)[0], 10
            if size - pos < head + n:
                break
            payload = bytes(buf[pos + head:pos + head + n])
            pos += head + n
            self._on_frame(b0 & 0x80, b0 & 0x0F, payload, now)
        if pos:
            del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if not self._handshake.done():
            self._handshake.set_exception(HandshakeFailed(f"connection lost: {exc}"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)

    # Frames -------------------------------------------------------------------------------

    def _on_frame(self, fin: int, opcode: int, payload: bytes, now: float) -> None:
        if opcode == 0x1 or opcode == 0x0:
            if not fin or self._partial is not None:
                if self._partial is None:
                    self._partial = bytearray()
                self._partial += payload
                if not fin:
                    return
                payload, self._partial = bytes(self._partial), None
            self.on_text(payload, now)
        elif opcode == 0x9:  # ping
            self._write(_frame(0xA, payload))
        elif opcode == 0x8:  # close: echo it and hang up
            self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            self._write(_frame(0x8, payload[:2]))
            if self.transport is not None:
                self.transport.close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # API ----------------------------------------------------------------------------------

    def send(self, text: bytes) -> None:
        self._write(_frame(0x1, text))

    def pause(self) -> None:
        """Stop reading (a tab whose main thread hangs): the server's writes back up."""
        if self.transport is not None:
            self.transport.pause_reading()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._write(_frame(0x8, struct.pack("!H", 1000)))
            self.transport.close()


async def connect(host: str, port: int, path: str, on_text: TextHandler, *,
                  headers: dict[str, str] | None = None, rcvbuf: int | None = None,
                  limit_s: float = 30.0) -> WSClient:
    """Open a WebSocket; `rcvbuf` shrinks the socket's receive buffer (for slow consumers)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    async with asyncio.timeout(limit_s):
        await loop.sock_connect(sock, (host, port))
        _, client = await loop.create_connection(lambda: WSClient(on_text), sock=sock)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                 "Sec-WebSocket-Version: 13"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        assert client.transport is not None
        client.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await client._handshake
    return client
