"""The AI SDK's transports (`ai` 6.x and 7.x), on chatcast's commands and fan-out.

- `POST /api/ai/chat`: `DefaultChatTransport`'s request; the answer streams back as a UI
  message stream (Server-Sent Events).
- `GET /api/ai/chat/{id}/stream`: resume; 204 when nothing is generating, else the whole
  current message from its `start` (same `messageId`), then the live rest.
- `POST /api/ai/chat/{id}/stop`: stops the chat's generation for everyone.
- `GET /api/ai/chat/{id}/messages`: the chat's history as `UIMessage`s (for a reload).
- WebSocket `/api/ai/ws`: `WebSocketChatTransport` (ai >= 7.0.135); `abort` stops.

The AI SDK's chat id is the chatcast chat's id: the chat is created for the caller on first
use, and another user's chat is `not_found` like everywhere else. chatcast keeps the history
itself: a request's earlier messages are never read, only its new user message (what a
request does is in server/aisdk_turns.py; this module is its I/O).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from chatcast.core.codes import Close, Code
from chatcast.core.errors import BadRequest, ChatcastError
from chatcast.core.protocol import Cursor, Event, describe_validation
from chatcast.server import commands, metrics
from chatcast.server.aisdk_map import (
    DONE_LINE,
    HEADERS,
    HEARTBEAT,
    Chunk,
    Follow,
    sse,
)
from chatcast.server.aisdk_turns import (
    Turn,
    check_chat_id,
    history,
    parse_chat,
    start_turn,
    stop_chat,
)
from chatcast.server.hub import Subscriber
from chatcast.server.responses import OrjsonResponse
from chatcast.server.services import Services, services, user_id
from chatcast.server.transports.admission import admit_websocket, read_frames, release

log = logging.getLogger("chatcast.aisdk")

TRANSPORT = "aisdk"
#: Request header (also in a WebSocket frame's `headers`) of a client that understands
#: `finishReason: "interrupted"` (ai >= 7.0.149); others get "other".
INTERRUPTED_HEADER = "x-chatcast-finish-interrupted"
#: An aborted resume is a stop unless the same socket resumes the chat again at once: the
#: AI SDK aborts a resume it replaces (React's strict mode mounts `useChat` twice).
RESUME_SUPERSEDE_S = 1.0
WS_QUEUE_FRAMES = 256


def wants_interrupted(headers: Mapping[str, str]) -> bool:
    value = next((v for k, v in headers.items() if k.lower() == INTERRUPTED_HEADER), "")
    return value.strip().lower() in ("1", "true", "yes")


# -- following a generation -----------------------------------------------------------------

@dataclass
class Stream:
    """A subscription to a chat that follows one generation as UI message chunks."""

    svc: Services
    chat: str
    follow: Follow
    sub: Subscriber
    opening: list[Chunk]
    pending: list[Event] = field(default_factory=list)

    def first(self) -> list[Chunk]:
        """The opening chunks and whatever the subscription already brought."""
        out, self.opening = self.opening, []
        for event in self.pending:
            out += self.follow.feed(event.data)
        self.pending.clear()
        return out

    async def chunks(self) -> AsyncIterator[list[Chunk]]:
        """Each batch's chunks until the generation's end; [] after a heartbeat interval
        with nothing. Ends early (unfinished) when the server shuts down."""
        svc, fol = self.svc, self.follow
        try:
            while not fol.finished and not svc.shutting_down.is_set():
                try:
                    async with asyncio.timeout(svc.settings.sse_heartbeat_s):
                        batch = await self.sub.next_batch()
                except TimeoutError:
                    yield []
                    continue
                if self.sub.overflowed:
                    # Too slow a reader: pick up from this stream's own position.
                    await self._resubscribe()
                    continue
                out: list[Chunk] = []
                for event in batch:
                    out += fol.feed(event.data)
                if out:
                    yield out
                if self.sub.close_code is not None:
                    return
        finally:
            self.close()

    async def _resubscribe(self) -> None:
        self.svc.hub.drop(self.sub)
        self.sub = self.svc.subscriber(TRANSPORT)
        await self.svc.hub.subscribe(self.sub, self.chat,
                                     Cursor(gen=self.follow.gen, seq=self.follow.seq))

    def close(self) -> None:
        self.svc.hub.drop(self.sub)


async def follow_new(svc: Services, turn: Turn, interrupted: bool) -> Stream:
    """Follow a generation just started, from its beginning."""
    sub = svc.subscriber(TRANSPORT)
    await svc.hub.subscribe(sub, turn.chat, Cursor(gen=turn.gen, seq=0))
    fol = Follow(turn.gen, turn.message, turn.chat, turn.provider, turn.model, interrupted)
    return Stream(svc, turn.chat, fol, sub, fol.opening(), sub.drain())


async def follow_active(svc: Services, user: str, chat: str,
                        interrupted: bool) -> Stream | None:
    """Follow the chat's generation in progress from its message's start; None if none."""
    if await svc.repo.find_chat(user, check_chat_id(chat)) is None:
        return None  # a chat not used yet: nothing is generating in it
    if await svc.repo.active_generation(chat) is None:
        return None
    sub = svc.subscriber(TRANSPORT)
    await svc.hub.subscribe(sub, chat, None)  # first comes a snapshot: the whole message
    events = sub.drain()
    snap = next((e for e in events if e.type == "snapshot"), None)
    active = snap.data.get("active") if snap is not None else None
    if not active:
        svc.hub.drop(sub)
        return None
    fol = Follow(active["gen"], active["message"], chat, active.get("provider", ""),
                 active.get("model", ""), interrupted)
    opening = fol.opening(active.get("content", ""), active.get("reasoning", ""),
                          int(active.get("seq", 0)))
    return Stream(svc, chat, fol, sub, opening, [e for e in events if e is not snap])


# -- HTTP -----------------------------------------------------------------------------------

async def _json(request: Request) -> Any:
    raw = await request.body()
    try:
        return orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None


async def chat_endpoint(request: Request) -> Response:
    """
    summary: "AI SDK: send (or regenerate) and stream the answer as a UI message stream"
    responses:
      200: {description: "text/event-stream of UI message chunks"}
    """
    svc, user = services(request), user_id(request)
    req = parse_chat(await _json(request))
    turn = await start_turn(svc, user, req)
    stream = await follow_new(svc, turn, wants_interrupted(request.headers))
    return _sse_response(stream)


async def stream_endpoint(request: Request) -> Response:
    """
    summary: "AI SDK: resume the chat's answer in progress (204 when none)"
    responses:
      200: {description: "the whole current message, then the live rest"}
      204: {description: nothing is generating}
    """
    svc, user = services(request), user_id(request)
    stream = await follow_active(svc, user, request.path_params["chat"],
                                 wants_interrupted(request.headers))
    if stream is None:
        return Response(status_code=204)
    return _sse_response(stream)


async def stop_endpoint(request: Request) -> Response:
    """
    summary: "AI SDK: stop the chat's answer for everyone (idempotent)"
    responses:
      200: {description: "{gen, status}"}
    """
    svc, user = services(request), user_id(request)
    return OrjsonResponse(await stop_chat(svc, user, request.path_params["chat"]))


async def messages_endpoint(request: Request) -> Response:
    """
    summary: "AI SDK: the chat's history as UIMessages (newest page; `before`, `limit`)"
    responses:
      200: {description: "{messages: [UIMessage], has_more}"}
    """
    svc, user = services(request), user_id(request)
    try:
        limit = max(1, min(int(request.query_params.get("limit", "100")), 200))
    except ValueError:
        raise BadRequest("limit must be an integer") from None
    return OrjsonResponse(await history(svc, user, request.path_params["chat"],
                                        request.query_params.get("before"), limit))


class _UIStreamResponse(StreamingResponse):
    """A UI message stream whose subscription leaves the hub when the response ends, however
    it ends: also when the client went away before the body was iterated at all (the
    body's own `finally` never runs then)."""

    def __init__(self, stream: Stream, body: AsyncIterator[bytes]) -> None:
        super().__init__(body, media_type="text/event-stream", headers=HEADERS)
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.stream.close()


def _sse_response(stream: Stream) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        frames = metrics.FRAMES_SENT.labels(TRANSPORT)
        metrics.CLIENTS.labels(TRANSPORT).inc()
        try:
            first = stream.first()
            yield b"".join(sse(c) for c in first)
            frames.inc(len(first))
            async for chunks in stream.chunks():
                if not chunks:
                    yield HEARTBEAT
                    continue
                yield b"".join(sse(c) for c in chunks)
                frames.inc(len(chunks))
            if stream.follow.finished:
                yield DONE_LINE
        finally:
            stream.close()
            metrics.CLIENTS.labels(TRANSPORT).dec()

    return _UIStreamResponse(stream, body())


# -- WebSocket ------------------------------------------------------------------------------

class WsFrame(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["send", "resume", "abort"]
    requestId: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    headers: dict[str, str] = Field(default_factory=dict)


@dataclass
class _Request:
    kind: str
    chat: str
    task: asyncio.Task[None] | None = None
    gen: str | None = None  # the generation it follows, once known
    aborted: bool = False  # by the client, maybe before `gen` was known


_deferred: set[asyncio.Task[None]] = set()  # stops that outlive their socket


def _retrieve(task: asyncio.Future[Any]) -> None:
    """A start nobody waits for any more: its error is dealt with (logged), not lost."""
    if not task.cancelled() and (exc := task.exception()) is not None \
            and not isinstance(exc, ChatcastError):
        log.error("AI SDK websocket: a send failed after its socket closed", exc_info=exc)


async def ws_endpoint(ws: WebSocket) -> None:
    svc = services(ws)
    user = await admit_websocket(ws, svc)
    if user is None:
        return
    metrics.CLIENTS.labels(TRANSPORT).inc()
    try:
        await _WsConnection(ws, svc, user).run()
    finally:
        release(svc, user)
        metrics.CLIENTS.labels(TRANSPORT).dec()


class _WsConnection:
    def __init__(self, ws: WebSocket, svc: Services, user: str) -> None:
        self.ws, self.svc, self.user = ws, svc, user
        self.out: asyncio.Queue[dict[str, Any]] = asyncio.Queue(WS_QUEUE_FRAMES)
        self.requests: dict[str, _Request] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        writer = asyncio.create_task(self._write())
        closer = asyncio.create_task(self.svc.shutting_down.wait())
        reader = asyncio.create_task(self._read())
        try:
            done, _ = await asyncio.wait({writer, closer, reader},
                                         return_when=asyncio.FIRST_COMPLETED)
            closing: tuple[int, str] | None = None
            if closer in done:
                closing = (Close.GOING_AWAY, "server shutting down: reconnect")
            elif reader in done and not reader.cancelled() and reader.exception() is None:
                closing = reader.result()
        finally:
            for task in (writer, closer, reader, *self.tasks):
                task.cancel()
            await asyncio.gather(writer, closer, reader, *self.tasks, return_exceptions=True)
        if closing is not None:
            with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
                await self.ws.close(*closing)

    async def _write(self) -> None:
        frames = metrics.FRAMES_SENT.labels(TRANSPORT)
        with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
            while True:
                frame = await self.out.get()
                await self.ws.send_text(orjson.dumps(frame).decode())
                frames.inc()

    async def _read(self) -> tuple[int, str] | None:
        return await read_frames(self.ws, self.svc, idle=lambda: not self.requests,
                                 idle_reason="idle: no requests", handle=self._handle,
                                 user=self.user)

    def _handle(self, raw: str | bytes) -> None:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        rid = data.get("requestId") if isinstance(data, dict) else None
        try:
            frame = WsFrame.model_validate(data)
        except ValidationError as exc:
            if isinstance(rid, str):  # a frame without a requestId cannot be answered
                self._error(rid, BadRequest(describe_validation(exc) or "invalid frame"))
            else:
                log.info("AI SDK websocket: unreadable frame ignored")
            return
        if frame.type == "abort":
            self._abort(frame.requestId)
            return
        if frame.requestId in self.requests:
            self._error(frame.requestId, BadRequest("requestId is already in use"))
            return
        chat = data.get("id") if isinstance(data, dict) else None
        req = _Request(frame.type, chat if isinstance(chat, str) else "")
        self.requests[frame.requestId] = req
        interrupted = wants_interrupted(frame.headers)
        if frame.type == "send":
            coro = self._send(frame.requestId, req, data, interrupted)
        else:
            coro = self._resume(frame.requestId, req, interrupted)
        req.task = self._spawn(coro)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _error(self, rid: str, exc: ChatcastError) -> None:
        self.requests.pop(rid, None)
        self._put({"type": "error", "requestId": rid, "errorText": exc.message,
                   "code": str(exc.code)})

    def _put(self, frame: dict[str, Any]) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # the writer is stuck: socket closes
            self.out.put_nowait(frame)

    async def _send(self, rid: str, req: _Request, data: dict[str, Any],
                    interrupted: bool) -> None:
        async def begin() -> Stream | None:
            # A socket that closes now does not undo the send (the answer is the server's,
            # as over HTTP): the start finishes even if this request is cancelled.
            starting = asyncio.ensure_future(start_turn(self.svc, self.user, parse_chat(data)))
            starting.add_done_callback(_retrieve)
            turn = await asyncio.shield(starting)
            req.gen = turn.gen
            return await follow_new(self.svc, turn, interrupted)
        await self._serve(rid, req, begin)

    async def _resume(self, rid: str, req: _Request, interrupted: bool) -> None:
        async def begin() -> Stream | None:
            stream = await follow_active(self.svc, self.user, req.chat, interrupted)
            if stream is not None:
                req.gen = stream.follow.gen
            return stream
        await self._serve(rid, req, begin)

    async def _serve(self, rid: str, req: _Request,
                     begin: Callable[[], Any]) -> None:
        try:
            stream: Stream | None = await begin()
        except ChatcastError as exc:
            self._error(rid, exc)
            return
        except Exception:
            log.exception("AI SDK websocket request failed")
            self._error(rid, ChatcastError("internal error", code=Code.INTERNAL))
            return
        if req.aborted:  # while it started: stop what it started, send nothing
            if stream is not None:
                stream.close()
                self._stop(req)
            return
        if stream is None:
            self.requests.pop(rid, None)
            await self.out.put({"type": "no-active", "requestId": rid})
            return
        try:
            await self.out.put({"type": "start", "requestId": rid})
            sequence = 0
            for chunk in stream.first():
                await self.out.put({"type": "chunk", "requestId": rid, "sequence": sequence,
                                    "chunk": chunk})
                sequence += 1
            async for chunks in stream.chunks():
                for chunk in chunks:
                    await self.out.put({"type": "chunk", "requestId": rid,
                                        "sequence": sequence, "chunk": chunk})
                    sequence += 1
            if stream.follow.finished:
                await self.out.put({"type": "end", "requestId": rid})
        finally:
            stream.close()
            if self.requests.get(rid) is req:
                del self.requests[rid]

    def _abort(self, rid: str) -> None:
        """The client's `abort`: a real stop of the generation the request follows (once
        it is known: a request still starting stops what it started, in `_serve`)."""
        req = self.requests.pop(rid, None)
        if req is None:
            return
        req.aborted = True
        if req.gen is None:
            return
        if req.task is not None:
            req.task.cancel()
        self._stop(req)

    def _stop(self, req: _Request) -> None:
        assert req.gen is not None
        if req.kind == "send":
            self._stop_later(req.gen, 0.0)
        else:
            self._stop_later(req.gen, RESUME_SUPERSEDE_S, req.chat)

    def _stop_later(self, gen: str, after_s: float, chat: str | None = None) -> None:
        async def stop() -> None:
            if after_s:
                await asyncio.sleep(after_s)
                if any(r.chat == chat for r in self.requests.values()):
                    return  # resumed again on this socket: that abort only replaced it
            try:
                await commands.stop(self.svc, self.user, gen, None)
            except ChatcastError as exc:
                log.info("AI SDK abort: stop refused", extra={"gen": gen,
                                                              "reason": exc.message})
        task = asyncio.get_running_loop().create_task(stop())
        _deferred.add(task)
        task.add_done_callback(_deferred.discard)


ROUTES: list[BaseRoute] = [
    Route("/api/ai/chat", chat_endpoint, methods=["POST"]),
    Route("/api/ai/chat/{chat}/stream", stream_endpoint, methods=["GET"]),
    Route("/api/ai/chat/{chat}/stop", stop_endpoint, methods=["POST"]),
    Route("/api/ai/chat/{chat}/messages", messages_endpoint, methods=["GET"]),
    WebSocketRoute("/api/ai/ws", ws_endpoint),
]
