"""Protocol clients for tests, one per transport, sharing one receiving API.

Every client keeps all received events in `received`, feeds each to an `Assembler` of its
chat (`client.assembler(chat)`), and offers `recv()` / `wait_for(type, pred)` with timeouts.
Events skipped by `wait_for` stay queued for later `recv()` calls, so no event is lost.
"""

# Test helpers take `timeout=` with a default on purpose: every wait in a test must be
# bounded, and a helper's own deadline gives a better message than an outer asyncio.timeout.

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any, Self
from urllib.parse import urlsplit

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

from tests.helpers.assemble import Assembler

Predicate = Callable[[dict[str, Any]], bool]
DEFAULT_TIMEOUT = 10.0


class StreamClosed(Exception):
    """The server ended the stream (WS close, SSE EOF)."""


class EventStream:
    """Buffering, waiting and assembling common to the WS, SSE and long-poll clients."""

    def __init__(self, assemblers: dict[str, Assembler] | None = None) -> None:
        self.received: list[dict[str, Any]] = []
        self.assemblers: dict[str, Assembler] = assemblers if assemblers is not None else {}
        self._pending: deque[dict[str, Any]] = deque()

    async def _read(self, timeout: float) -> dict[str, Any]:
        """Next event from the transport; TimeoutError / StreamClosed."""
        raise NotImplementedError

    def _accept(self, event: dict[str, Any]) -> None:
        self.received.append(event)
        chat = event.get("chat")
        if isinstance(chat, str):
            self.assembler(chat).apply(event)
        self._pending.append(event)

    def assembler(self, chat: str) -> Assembler:
        """The assembler of `chat`, fed with every event of it this client received."""
        if chat not in self.assemblers:
            self.assemblers[chat] = Assembler(chat)
        return self.assemblers[chat]

    async def recv(self, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """The next event not yet returned (raises TimeoutError)."""
        if self._pending:
            return self._pending.popleft()
        self._accept(await self._read(timeout))
        return self._pending.popleft()

    async def wait_for(self, type: str | None = None, pred: Predicate | None = None, *,
                       timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """The first queued or arriving event of `type` (any if None) matching `pred`.
        Events passed over stay queued for `recv()`."""
        def match(e: dict[str, Any]) -> bool:
            return (type is None or e.get("type") == type) and (pred is None or pred(e))

        for event in self._pending:
            if match(event):
                self._pending.remove(event)
                return event
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"no {type or 'event'} matching within {timeout}s; "
                                   f"last received: {self.received[-3:]}")
            event = await self._read(left)
            self._accept(event)
            if match(event):
                self._pending.pop()
                return event

    async def wait_done(self, gen: str, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for the `done` of `gen` and check it with the chat's assembler."""
        done = await self.wait_for("done", lambda e: e.get("gen") == gen, timeout=timeout)
        self.assembler(str(done["chat"])).check_done(done)
        return done

    def drain(self) -> list[dict[str, Any]]:
        """Return and forget every queued event."""
        out = list(self._pending)
        self._pending.clear()
        return out


# -- WebSocket ------------------------------------------------------------------------------

_rids = itertools.count(1)


class WSClient(EventStream):
    """`async with await WSClient.connect(srv.ws_url, cookie=...) as ws:`"""

    def __init__(self, conn: ClientConnection,
                 assemblers: dict[str, Assembler] | None = None) -> None:
        super().__init__(assemblers)
        self.conn = conn

    @classmethod
    async def connect(cls, url: str, *, cookie: str | None = None, origin: str | None = "",
                      token: str | None = None, headers: Mapping[str, str] | None = None,
                      assemblers: dict[str, Assembler] | None = None,
                      open_timeout: float = 10.0) -> WSClient:
        """Open a socket. `cookie` is a Cookie header value (see `cookie_header`); `origin`
        defaults to the server's own http origin, None sends none; `assemblers` lets a
        reconnecting client continue the previous client's assembled state."""
        extra = dict(headers or {})
        if cookie:
            extra["Cookie"] = cookie
        if token:
            extra["Authorization"] = f"Bearer {token}"
        if origin == "":
            parts = urlsplit(url)
            origin = f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}"
        conn = await connect(url, additional_headers=extra, proxy=None,
                             origin=Origin(origin) if origin else None,
                             open_timeout=open_timeout, max_size=2**22)
        return cls(conn, assemblers)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def set_cookies(self) -> dict[str, str]:
        """Cookies the 101 response set (name → value)."""
        response = self.conn.response
        jar: SimpleCookie = SimpleCookie()
        if response is not None:
            for raw in response.headers.get_all("Set-Cookie"):
                jar.load(raw)
        return {name: morsel.value for name, morsel in jar.items()}

    async def send(self, obj: Mapping[str, Any]) -> None:
        await self.conn.send(orjson.dumps(dict(obj)).decode())

    async def send_raw(self, text: str | bytes) -> None:
        await self.conn.send(text)

    async def request(self, obj: Mapping[str, Any], *,
                      timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """Send with a fresh `rid`; return the reply echoing it (`ack`, `error`, `pong`)."""
        rid = str(obj.get("rid") or f"r{next(_rids)}")
        await self.send({**obj, "rid": rid})
        return await self.wait_for(None, lambda e: e.get("rid") == rid, timeout=timeout)

    async def subscribe(self, chat: str, cursor: Mapping[str, Any] | None = None, *,
                        timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        req: dict[str, Any] = {"type": "subscribe", "chat": chat}
        if cursor is not None:
            req["cursor"] = dict(cursor)
        return await self.request(req, timeout=timeout)

    async def _read(self, timeout: float) -> dict[str, Any]:
        try:
            raw = await asyncio.wait_for(self.conn.recv(), timeout)
        except ConnectionClosed as exc:
            raise StreamClosed(f"websocket closed: {exc}") from exc
        obj = orjson.loads(raw)
        assert isinstance(obj, dict), f"frame is not a JSON object: {raw!r}"
        return obj

    @property
    def close_code(self) -> int | None:
        return self.conn.close_code

    async def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> int | None:
        """Read (and keep) events until the server closes; return the close code."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                self._accept(await self._read(max(deadline - loop.time(), 0.001)))
            except StreamClosed:
                return self.conn.close_code

    async def close(self, code: int = 1000) -> None:
        await self.conn.close(code)


def cookie_header(http: httpx.AsyncClient | httpx.Client) -> str:
    """The Cookie header a browser would send, from an httpx client's jar."""
    return "; ".join(f"{c.name}={c.value}" for c in http.cookies.jar)


# -- Server-Sent Events ---------------------------------------------------------------------


@dataclass(slots=True)
class SSEMessage:
    event: str = "message"
    data: str = ""
    id: str | None = None

    def json(self) -> dict[str, Any]:
        obj = orjson.loads(self.data)
        assert isinstance(obj, dict)
        return obj


@dataclass(slots=True)
class SSEParser:
    """Line-by-line parser of `text/event-stream` (the WHATWG algorithm, minus BOM)."""

    last_event_id: str | None = None
    retry_ms: int | None = None
    comments: int = 0
    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _has_data: bool = False

    def feed_line(self, line: str) -> SSEMessage | None:
        """Give one line without its line ending; returns a message at each blank line."""
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            self.comments += 1
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> SSEMessage | None:
        if not self._has_data:
            self._event = ""
            return None
        msg = SSEMessage(self._event or "message", "\n".join(self._data), self.last_event_id)
        self._event, self._data, self._has_data = "", [], False
        return msg


class SSEClient(EventStream):
    """`async with SSEClient(http, f"/api/chats/{chat}/events") as sse:` — `http` is an
    `httpx.AsyncClient` (with base_url and cookies). Checks that each frame's `event:` is its
    data's type and that deltas/dones carry `id: gen:seq`."""

    def __init__(self, http: httpx.AsyncClient, url: str, *, last_event_id: str | None = None,
                 params: Mapping[str, str] | None = None,
                 headers: Mapping[str, str] | None = None,
                 assemblers: dict[str, Assembler] | None = None) -> None:
        super().__init__(assemblers)
        self.http, self.url = http, url
        self.params = dict(params or {})
        self.headers = {"Accept": "text/event-stream", **(headers or {})}
        if last_event_id is not None:
            self.headers["Last-Event-ID"] = last_event_id
        self.parser = SSEParser(last_event_id=last_event_id)
        self.messages: list[SSEMessage] = []
        self.problems: list[str] = []
        self.response: httpx.Response | None = None
        self._queue: asyncio.Queue[SSEMessage | None] = asyncio.Queue()
        self._stack = AsyncExitStack()
        self._reader: asyncio.Task[None] | None = None

    @property
    def last_event_id(self) -> str | None:
        return self.parser.last_event_id

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def open(self) -> Self:
        """Send the request and start reading; raises on a non-2xx status."""
        self.response = await self._stack.enter_async_context(self.http.stream(
            "GET", self.url, params=self.params, headers=self.headers,
            timeout=httpx.Timeout(10.0, read=None)))
        if self.response.is_error:
            await self.response.aread()
            await self.aclose()
            self.response.raise_for_status()
        self._reader = asyncio.create_task(self._pump(self.response))
        return self

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await self._reader
            self._reader = None
        await self._stack.aclose()

    async def _pump(self, response: httpx.Response) -> None:
        try:
            async for line in response.aiter_lines():
                msg = self.parser.feed_line(line.rstrip("\r\n"))
                if msg is not None:
                    self._queue.put_nowait(msg)
        finally:
            self._queue.put_nowait(None)  # end of stream

    async def _read(self, timeout: float) -> dict[str, Any]:
        msg = await asyncio.wait_for(self._queue.get(), timeout)
        if msg is None:
            self._queue.put_nowait(None)  # stay closed for later reads
            raise StreamClosed("SSE stream ended")
        self.messages.append(msg)
        event = msg.json()
        if msg.event != event.get("type"):
            self.problems.append(f"event: {msg.event} carries a {event.get('type')}")
        if event.get("type") in ("delta", "done"):
            want = f"{event.get('gen')}:{event.get('seq')}"
            if msg.id != want:
                self.problems.append(f"{event['type']} has id {msg.id!r}, expected {want!r}")
        return event


# -- Long-poll --------------------------------------------------------------------------------


class Poller(EventStream):
    """`GET /api/chats/{chat}/poll?cursor=…&wait=…` in a loop; the returned cursor is passed
    back unchanged, as docs/protocol.md requires."""

    def __init__(self, http: httpx.AsyncClient, chat: str, *, wait: float = 25.0,
                 cursor: str | None = None,
                 assemblers: dict[str, Assembler] | None = None) -> None:
        super().__init__(assemblers)
        self.http, self.chat, self.wait, self.cursor = http, chat, wait, cursor
        self.polls = 0
        self._inbox: deque[dict[str, Any]] = deque()  # fetched, not yet handed out

    async def poll(self, wait: float | None = None) -> list[dict[str, Any]]:
        """One request; returns its events (also queued for `recv`, and assembled)."""
        events = [*self._inbox, *await self._fetch(wait)]
        self._inbox.clear()
        for event in events:
            self._accept(event)
        return events

    async def _fetch(self, wait: float | None) -> list[dict[str, Any]]:
        wait = self.wait if wait is None else wait
        params: dict[str, str] = {"wait": f"{wait:g}"}
        if self.cursor is not None:
            params["cursor"] = self.cursor
        response = await self.http.get(f"/api/chats/{self.chat}/poll", params=params,
                                       timeout=wait + 10.0)
        response.raise_for_status()
        body = response.json()
        self.polls += 1
        self.cursor = body.get("cursor", self.cursor)
        return list(body.get("events") or [])

    async def _read(self, timeout: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._inbox:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"no event from polling within {timeout}s")
            self._inbox.extend(await self._fetch(min(self.wait, max(left, 0.1))))
        return self._inbox.popleft()
