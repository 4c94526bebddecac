"""Everything chatcast reads or changes inside uvicorn and Starlette, in one place.

None of it is public API of those projects, so each reach is guarded here: it is taken only
when the object looks exactly as expected, and otherwise chatcast does what any ASGI app
does. What is reached:

- uvicorn's websockets-sansio protocol object behind the server's own ASGI `send` (its
  `__self__`): the state its send consults before writing a frame (`SANSIO_STATE`), to
  write an event's JSON bytes from the producer's task without the ASGI message, the
  coroutine and a str -> bytes copy per socket; the handshake request/response it keeps for
  the connection's whole life, dropped once accepted (and the request's headers emptied:
  the sans-I/O parser's frame holds the request too); its receive queue and `writable`
  event, swapped once accepted for `LeanQueue` and `LeanEvent` (what it uses of them,
  without their four deques: ~3 KiB per idle socket).
- Starlette's per-connection caches of parsed headers and cookies (`_headers`, `_cookies`).
- a send coroutine stepped by hand (`Resumed`), so a write that did not suspend costs no
  task, and one that did is finished by the socket's writer task.
- `uvicorn.Server.shutdown` (to close chatcast's own clients first, see `lifecycle.py`) and
  the module-level name uvicorn's multiprocess supervisor builds each worker's server by.

`MIN_UVICORN` is the first uvicorn whose websockets-sansio protocol has all of
`SANSIO_STATE` (`disconnected` came in 0.52.1); `pyproject.toml` requires it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Protocol, cast

import uvicorn
from starlette import types as asgi
from starlette.websockets import WebSocket
from uvicorn.supervisors import multiprocess
from websockets.datastructures import Headers

from chatcast.core.protocol import Event
from chatcast.server import lifecycle

log = logging.getLogger("chatcast.ws")

MIN_UVICORN = (0, 52, 1)
#: uvicorn's `ws=` option whose protocol object chatcast can write to directly.
SANSIO_WS = "websockets-sansio"
#: What uvicorn's websockets-sansio send consults before writing a frame.
SANSIO_STATE = ("conn", "transport", "writable", "handshake_complete", "close_sent",
                "disconnected", "initial_response")

#: A frame writer: writes now and returns None, or returns what finishes the write.
FrameWriter = Callable[[Event], Awaitable[None] | None]

_reported = False  # the write path of this process was logged


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def direct_writes_supported(ws_impl: str) -> bool:
    """Whether sockets served with uvicorn's `ws=ws_impl` get direct writes."""
    return ws_impl == SANSIO_WS and _version(uvicorn.__version__) >= MIN_UVICORN


def sansio_protocol(send: asgi.Send | None) -> Any | None:
    """The websockets-sansio protocol object behind the server's own `send`, if it is one
    (it has every attribute its send consults); else None."""
    protocol = getattr(send, "__self__", None)
    if protocol is None or not all(hasattr(protocol, name) for name in SANSIO_STATE):
        return None
    return protocol


def describe_write_path(ws_impl: str) -> str:
    if direct_writes_supported(ws_impl):
        return f"direct (uvicorn {uvicorn.__version__}, {SANSIO_WS})"
    return f"ASGI send (uvicorn {uvicorn.__version__}, ws={ws_impl})"


def _report(direct: bool) -> None:
    global _reported
    if _reported:
        return
    _reported = True
    if direct:
        log.info("websocket write path: direct on uvicorn's %s protocol", SANSIO_WS)
    else:
        log.warning("websocket write path: ASGI send (the server's send is not uvicorn %s's "
                    "%s protocol); every frame takes the slower path",
                    ".".join(map(str, MIN_UVICORN)), SANSIO_WS)


class DirectWrites(Protocol):
    """Who holds the writer: it is told the connection is gone by losing it."""

    direct: FrameWriter | None


def frame_writer(send: asgi.Send, owner: DirectWrites,
                 on_written: Callable[[], None]) -> FrameWriter:
    """`write(event)` sends an event as one text frame from the calling task. The server's send
    completes without suspending unless the socket pushes back; then the started write is
    returned for the writer task to finish (the same coroutine, resumed: nothing is written
    twice or reordered). If the connection turns out to be gone, `owner.direct` is cleared
    (its reader sees the disconnect); `on_written` is called for each frame written here.

    On uvicorn's websockets-sansio protocol, a socket that is open and writable gets the
    frame the way that send would write it (the sans-I/O connection frames the event's JSON
    bytes, the transport writes them). Any other state, or another server, takes the ASGI path."""
    protocol: Any = sansio_protocol(send)
    fast = protocol is not None
    _report(fast)

    def write(event: Event) -> Awaitable[None] | None:
        if fast and protocol.handshake_complete and not protocol.close_sent \
                and not protocol.disconnected and protocol.initial_response is None \
                and protocol.writable.is_set():
            try:
                protocol.conn.send_text(event.encode())
                protocol.transport.write(b"".join(protocol.conn.data_to_send()))
            except Exception:
                owner.direct = None
                return None
            on_written()
            return None
        # An `async def` send, as every server has: a coroutine we may step ourselves.
        coro = cast(Coroutine[Any, Any, None], send({"type": "websocket.send",
                                                     "text": event.text()}))
        try:
            yielded = coro.send(None)
        except StopIteration:
            on_written()
            return None
        except Exception:
            owner.direct = None
            return None
        return Resumed(coro, yielded)

    return write


class Resumed:
    """Awaiting this continues a coroutine that was started (and suspended) elsewhere."""

    __slots__ = ("coro", "yielded")

    def __init__(self, coro: Coroutine[Any, Any, None], yielded: Any) -> None:
        self.coro, self.yielded = coro, yielded

    def __await__(self) -> Generator[Any, Any, None]:
        value = self.yielded
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                self.coro.close()
                raise
            except BaseException as exc:  # handed to the coroutine, as a task would
                try:
                    value = self.coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    value = self.coro.send(sent)
                except StopIteration:
                    return


def release_handshake(ws: WebSocket, send: asgi.Send | None) -> None:
    """After accept, drop what only the handshake read: uvicorn's request and response (with
    all their headers, ~4 KiB, kept for the connection's whole life) when the server is one
    we know does so, and Starlette's cached headers and cookies (parsed again if anything
    asks); and give the connection a lean receive queue and `writable` event."""
    protocol = getattr(send, "__self__", None)
    if protocol is not None and getattr(protocol, "handshake_complete", False):
        request = getattr(protocol, "request", None)
        headers: Any = getattr(request, "headers", None)
        if isinstance(headers, Headers):
            headers.clear()  # websockets' parser keeps the request in its frame
        for name in ("request", "response"):
            if getattr(protocol, name, None) is not None:
                setattr(protocol, name, None)
        _lean_sync(protocol)
    for cached in ("_headers", "_cookies"):
        vars(ws).pop(cached, None)


def _lean_sync(protocol: Any) -> None:
    """Swap uvicorn's asyncio.Queue and asyncio.Event of one connection for the lean ones,
    carrying their state, when nobody waits on them (so no waiter is left behind)."""
    queue = getattr(protocol, "queue", None)
    if type(queue) is asyncio.Queue and not getattr(queue, "_getters", True) \
            and not getattr(queue, "_putters", True):
        lean = LeanQueue()
        while not queue.empty():
            lean.put_nowait(queue.get_nowait())
        protocol.queue = lean
    writable = getattr(protocol, "writable", None)
    if type(writable) is asyncio.Event and not getattr(writable, "_waiters", True):
        event = LeanEvent()
        if writable.is_set():
            event.set()
        protocol.writable = event


class LeanQueue:
    """What uvicorn's WebSocket protocol uses of asyncio.Queue (`put_nowait`, `get`,
    `get_nowait`, `empty`, `qsize`; unbounded, first in first out, getters woken in order)
    in a list and the futures of waiting getters, made when one waits. asyncio.Queue holds
    four deques from the start (~3 KiB), for a socket that mostly has nothing queued."""

    __slots__ = ("_getters", "_items")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._getters: list[asyncio.Future[None]] | None = None

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        self._wake()

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.pop(0)

    async def get(self) -> Any:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(getter)
            try:
                await getter
            except BaseException:  # as asyncio.Queue.get does
                getter.cancel()
                if self._getters is not None and getter in self._getters:
                    self._getters.remove(getter)
                if self._items and not getter.cancelled():
                    self._wake()  # woken, then cancelled: the next getter takes the item
                raise
        return self._items.pop(0)

    def _wake(self) -> None:
        while self._getters:
            getter = self._getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                return


class LeanEvent:
    """asyncio.Event's `is_set`, `set`, `clear` and `wait`, with its waiters' list made
    only when someone waits (asyncio.Event holds a deque from the start)."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


class ChatcastServer(uvicorn.Server):
    """uvicorn's server, with chatcast's shutdown hooks run before its own shutdown (which
    would close WebSockets with 1012 and wait for endless SSE responses)."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await lifecycle.run_shutdown_hooks()
        await super().shutdown(sockets)


def run_workers(config: uvicorn.Config) -> None:
    """uvicorn's multiprocess supervisor, with a ChatcastServer in every worker (it builds
    each worker's server by this module-level name)."""
    multiprocess.Server = ChatcastServer  # type: ignore[attr-defined]
    multiprocess.Multiprocess(config, sockets=[config.bind_socket()]).run()
