"""Server-Sent Events transport: `GET /api/chats/{chat}/events`, and the one-shot
`POST /api/chats/{chat}/messages` with `Accept: text/event-stream`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from starlette import types as asgi
from starlette.requests import Request
from starlette.responses import StreamingResponse

from chatcast.core import protocol
from chatcast.core.protocol import Event
from chatcast.server import metrics
from chatcast.server.hub import Subscriber
from chatcast.server.services import Services, services, user_id

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def events_endpoint(request: Request) -> StreamingResponse:
    """
    summary: The chat's events as Server-Sent Events (resume with Last-Event-ID or ?cursor=)
    responses:
      200: {description: "text/event-stream of protocol v1 events"}
    """
    svc, user = services(request), user_id(request)
    chat = request.path_params["chat"]
    await svc.repo.get_chat(user, chat)
    cursor = protocol.parse_cursor(request.headers.get("last-event-id")
                                   or request.query_params.get("cursor"))
    sub = svc.subscriber("sse")
    await svc.hub.subscribe(sub, chat, cursor)
    return _stream(svc, sub)


class SubscribedStream(StreamingResponse):
    """The events of a subscriber already registered in the hub. It leaves the hub when the
    response ends, however it ends: also when the client went away before the body was
    iterated at all (the body's own `finally` never runs then)."""

    def __init__(self, svc: Services, sub: Subscriber, body: AsyncIterator[bytes]) -> None:
        super().__init__(body, media_type="text/event-stream", headers=HEADERS)
        self.svc, self.sub = svc, sub

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive,
                       send: asgi.Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.svc.hub.drop(self.sub)


def one_shot(svc: Services, sub: Subscriber, first: Event, gen: str) -> SubscribedStream:
    """Stream one generation's events (already subscribed from its start), ending at done."""
    return _stream(svc, sub, first=first, until=lambda e: e.type == "done" and e.gen == gen,
                   only=lambda e: e.gen == gen)


def _stream(svc: Services, sub: Subscriber, *, first: Event | None = None,
            until: Callable[[Event], bool] | None = None,
            only: Callable[[Event], bool] | None = None) -> SubscribedStream:
    async def body() -> AsyncIterator[bytes]:
        frames = metrics.FRAMES_SENT.labels("sse")
        metrics.CLIENTS.labels("sse").inc()
        try:
            yield b"retry: 2000\n\n"
            if first is not None:
                yield protocol.sse_frame(first)
            while not svc.shutting_down.is_set():
                try:
                    async with asyncio.timeout(svc.settings.sse_heartbeat_s):
                        batch = await sub.next_batch()
                except TimeoutError:
                    yield b": heartbeat\n\n"
                    continue
                if sub.overflowed:
                    return  # the client reconnects with Last-Event-ID
                for event in batch:
                    if only is None or only(event):
                        yield protocol.sse_frame(event)
                        frames.inc()
                    if until is not None and until(event):
                        return
                if sub.close_code is not None:
                    return  # server shutting down: the client reconnects elsewhere
        finally:
            metrics.CLIENTS.labels("sse").dec()

    return SubscribedStream(svc, sub, body())

