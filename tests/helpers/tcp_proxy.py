"""A TCP proxy in front of a chatcast server that a test can cut (`drop()`: every open
connection is closed at once, as a network outage or a dead NAT entry would), that can
corrupt what a WebSocket receives (`corrupt=(old, new)`: bytes replaced, same length, in the
server → client direction of WebSocket connections only, so the frames stay well-formed
and REST still tells the truth), or that refuses WebSocket upgrades (`refuse_websockets`,
see ws_block_proxy.py).

It runs its own event loop in a thread, so a test that blocks (a pseudo-terminal driven by
pexpect) does not stall it."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from types import TracebackType

_UPGRADE = re.compile(rb"^upgrade:\s*websocket\s*$", re.I | re.M)


class TcpProxy:
    def __init__(self, upstream_port: int, *, corrupt: tuple[bytes, bytes] | None = None,
                 refuse_websockets: bool = False, host: str = "127.0.0.1") -> None:
        if corrupt is not None and len(corrupt[0]) != len(corrupt[1]):
            raise ValueError("a corruption must keep the length (WebSocket framing)")
        self.upstream = (host, upstream_port)
        self.host = host
        self.port = 0
        self.corrupt = corrupt
        self.corrupted = 0  # replacements made
        self.refuse_websockets = refuse_websockets
        self.refused = 0  # WebSocket upgrades refused
        self.websockets = 0  # WebSocket connections seen
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("proxy did not start")
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.drop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def drop(self) -> int:
        """Cut every open connection (both sides); new ones are accepted as before.
        Returns how many connections were cut."""
        async def cut() -> int:
            writers = list(self._writers)
            for w in writers:
                with contextlib.suppress(Exception):
                    w.transport.abort()
            self._writers.clear()
            return len(writers) // 2

        return asyncio.run_coroutine_threadsafe(cut(), self._loop).result(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, self.host, 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            writer.close()
            return
        is_ws = bool(_UPGRADE.search(head))
        if is_ws and self.refuse_websockets:
            self.refused += 1
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self.websockets += is_ws
        self._writers |= {writer, up_writer}
        up_writer.write(head)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       corrupt: bool) -> None:
            try:
                while data := await src.read(65536):
                    if corrupt and self.corrupt and self.corrupt[0] in data:
                        self.corrupted += data.count(self.corrupt[0])
                        data = data.replace(*self.corrupt)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, is_ws))
        self._writers -= {writer, up_writer}
