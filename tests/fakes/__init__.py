"""Fake provider APIs for tests: real uvicorn servers on free ports speaking the real wire
formats (see openai_fake.py and gemini_fake.py), scripted per test, recording every request
and how and when each response ended (did the client hang up, and when)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import uvicorn
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

End = Literal["done", "error", "drop", "stall"]
Ending = Literal["complete", "client", "drop", "error"]


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted response: an HTTP error (`status` != 200), or a stream of `chunks`, each
    sent `delay_s` after the previous one, ending as `end` says:
    done — normally; error — with the API's in-stream error event; drop — the connection is
    cut without a proper end; stall — nothing more is sent and the socket stays open."""

    chunks: tuple[str, ...] = ("Hello", ",", " world", "!")
    delay_s: float = 0.0
    status: int = 200
    retry_after: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    end: End = "done"
    input_tokens: int = 7
    # Reasoning streamed before the text, in each fake's own dialect (`dialect`: for the
    # OpenAI fake, which delta field carries it — see openai_fake.reasoning_delta).
    reasoning: tuple[str, ...] = ()
    dialect: str = "reasoning"
    # Raw stream payloads played as they are instead of `reasoning` + `chunks` (one
    # `delta` object per chunk for OpenAI, one list of parts per response for Gemini, one
    # event object for the Responses API); `chunks` then only sizes the usage.
    raw: tuple[Any, ...] = ()

    @classmethod
    def text(cls, *chunks: str, delay_s: float = 0.0, end: End = "done") -> Reply:
        return cls(chunks=chunks, delay_s=delay_s, end=end)

    @classmethod
    def thinking(cls, reasoning: Sequence[str], chunks: Sequence[str], *,
                 dialect: str = "reasoning", delay_s: float = 0.0,
                 end: End = "done") -> Reply:
        """Reasoning, then the answer text."""
        return cls(chunks=tuple(chunks), reasoning=tuple(reasoning), dialect=dialect,
                   delay_s=delay_s, end=end)

    @classmethod
    def error(cls, status: int, *, retry_after: float | None = None,
              headers: Mapping[str, str] | None = None) -> Reply:
        return cls(chunks=(), status=status, retry_after=retry_after, headers=headers or {})


@dataclass(slots=True)
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any
    streaming: bool
    received_at: float = field(default_factory=time.monotonic)
    ended_at: float | None = None
    ended_by: Ending | None = None

    def end(self, how: Ending) -> None:
        """First call wins: how and when (time.monotonic) the response ended."""
        if self.ended_by is None:
            self.ended_at = time.monotonic()
            self.ended_by = how

    @property
    def disconnected(self) -> bool:
        """The client closed the connection before the response was complete."""
        return self.ended_by == "client"


class FakeServer:
    """A fake API on 127.0.0.1:<free port>, served by uvicorn in its own thread (and event
    loop, so a busy test loop cannot delay it). Use as a context manager."""

    def __init__(self, make_app: Callable[[FakeServer], ASGIApp]) -> None:
        self.requests: list[RecordedRequest] = []
        self.default = Reply()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: asyncio.Event | None = None  # created on the server's own loop
        self._replies: deque[Reply] = deque()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(make_app(self), log_level="critical", access_log=False,
                                lifespan="off", http="h11", timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=f"fake-api:{self.port}",
                                        daemon=True)

    def script(self, *replies: Reply, then: Reply | None = None) -> None:
        """Answer the next requests with `replies` in order, later ones with `then` (or the
        default reply)."""
        self._replies.extend(replies)
        if then is not None:
            self.default = then

    def next_reply(self) -> Reply:
        try:
            return self._replies.popleft()
        except IndexError:
            return self.default

    def record(self, request: Request, body: Any, *, streaming: bool) -> RecordedRequest:
        recorded = RecordedRequest(request.method, request.url.path, request.url.query,
                                   dict(request.headers), body, streaming)
        self.requests.append(recorded)
        return recorded

    async def wait_ended(self, index: int = -1, timeout_s: float = 5.0) -> RecordedRequest:
        """Wait (polling, from the test's loop) until request `index`'s response has ended."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.requests and self.requests[index].ended_by is not None:
                return self.requests[index]
            await asyncio.sleep(0.005)
        raise AssertionError(f"response {index} of {self.url} did not end in {timeout_s} s")

    def __enter__(self) -> FakeServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fake API server did not start")
            time.sleep(0.005)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._closing is not None:
            self._loop.call_soon_threadsafe(self._closing.set)  # ends stalled responses
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    async def stalled(self) -> None:
        """Wait, sending nothing, until the server shuts down (or the client hangs up)."""
        assert self._closing is not None
        await self._closing.wait()

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._closing = asyncio.Event()
        await self._server.serve(sockets=[self._sock])


class ScriptedStream(Response):
    """A streamed body played from `events` ((delay, bytes) pairs), ended as the reply says.
    It watches for the client hanging up and records when that happened."""

    def __init__(self, server: FakeServer, recorded: RecordedRequest,
                 events: Sequence[tuple[float, bytes]], end: End, error_event: bytes,
                 media_type: str = "text/event-stream") -> None:
        super().__init__(media_type=media_type, headers={"cache-control": "no-cache"})
        # A streamed body has no length: drop the `content-length: 0` of an empty Response.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.server = server
        self.recorded = recorded
        self.events = events
        self.end_mode = end
        self.error_event = error_event

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                self.recorded.end("client")
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            await self._play(send)
            tg.cancel_scope.cancel()
        if self.end_mode == "drop" and self.recorded.ended_by == "drop":
            # uvicorn closes the connection mid-body when the app fails after starting.
            raise ConnectionAbortedError("scripted drop")

    async def _play(self, send: Send) -> None:
        for delay, data in self.events:
            if delay > 0:
                await anyio.sleep(delay)
            await send({"type": "http.response.body", "body": data, "more_body": True})
        if self.end_mode == "stall":
            await self.server.stalled()
            return
        if self.end_mode == "drop":
            self.recorded.end("drop")
            return
        if self.end_mode == "error":
            await send({"type": "http.response.body", "body": self.error_event,
                        "more_body": True})
        self.recorded.end("error" if self.end_mode == "error" else "complete")
        await send({"type": "http.response.body", "body": b"", "more_body": False})
