"""WebSocket transport: `GET /ws`, protocol v1, many chats multiplexed on one socket."""

from __future__ import annotations

import asyncio
import logging

from starlette import types as asgi
from starlette.websockets import WebSocket, WebSocketDisconnect

from chatcast.core import protocol
from chatcast.core.codes import Close, Code
from chatcast.core.errors import BadRequest, ChatcastError
from chatcast.core.protocol import (
    Continue,
    Ping,
    Regenerate,
    Request,
    Send,
    Stop,
    Subscribe,
    Unsubscribe,
)
from chatcast.server import commands, metrics
from chatcast.server.asgi_internals import frame_writer, release_handshake
from chatcast.server.hub import Subscriber
from chatcast.server.services import Services, services
from chatcast.server.transports.admission import admit_websocket, read_frames, release

log = logging.getLogger("chatcast.ws")

CLOSE_TIMEOUT_S = 5.0
_count_frame = metrics.FRAMES_SENT.labels("ws").inc  # one bound method for every socket


async def ws_endpoint(ws: WebSocket, send: asgi.Send | None = None) -> None:
    """One client connection. `send` is the server's own ASGI send when the caller has it
    (WebSocketFastPath); frames then skip the layers in between."""
    svc = services(ws)
    user = await admit_websocket(ws, svc)
    if user is None:
        return
    sub = svc.subscriber("ws")
    svc.hub.attach(sub)
    metrics.CLIENTS.labels("ws").inc()
    release_handshake(ws, send)
    try:
        async with asyncio.TaskGroup() as tg:
            writer = tg.create_task(_write(ws, sub, send))
            sub.on_overflow = writer.cancel  # even a writer blocked on an unread socket
            if send is not None:
                sub.direct = frame_writer(send, sub, _count_frame)
            closing = await _read_frames(ws, sub, svc, user)
            writer.cancel()
        if closing is not None:  # the writer is gone: nothing else sends on the socket
            await ws.close(*closing)
    except* (WebSocketDisconnect, SlowConsumer):
        pass
    finally:
        release(svc, user)
        svc.hub.drop(sub)
        metrics.CLIENTS.labels("ws").dec()


class SlowConsumer(Exception):
    """The client did not read its close frame in time: drop the connection."""


PATH = "/ws"


class WebSocketFastPath:
    """Wraps the app: a WebSocket to `/ws` goes straight to its endpoint, with the server's
    own `send`. The app's layers do nothing for such a WebSocket (it authenticates in its
    own handshake) but each keeps a coroutine alive for the socket's whole life and wraps
    every frame written; skipping them saves memory per idle socket and time per frame.
    Everything else (HTTP, lifespan) goes on through the app."""

    def __init__(self, app: asgi.ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive,
                       send: asgi.Send) -> None:
        if scope["type"] == "websocket" and \
                scope["path"].removeprefix(scope.get("root_path", "")) == PATH:
            await ws_endpoint(WebSocket(scope, receive, send), send)
        else:
            await self.app(scope, receive, send)


async def _write(ws: WebSocket, sub: Subscriber, send: asgi.Send | None) -> None:
    frames = metrics.FRAMES_SENT.labels("ws")
    try:
        while not sub.overflowed:
            batch = await sub.next_batch()
            if sub.stalled is not None:
                stalled, sub.stalled = sub.stalled, None
                await stalled
                frames.inc()
            for event in batch:
                if send is not None:
                    await send({"type": "websocket.send", "text": event.text()})
                else:
                    await ws.send_text(event.text())
            frames.inc(len(batch))
            if sub.close_code is not None:
                await ws.close(sub.close_code, "server shutting down: reconnect")
                return
    except OSError:  # the server's own send: the client is gone
        raise WebSocketDisconnect(1006) from None
    except asyncio.CancelledError:
        if not sub.overflowed:
            raise
        current = asyncio.current_task()
        if current is not None:
            current.uncancel()  # our own cancel, from the overflow: handled below
    # The outbox overflowed (and was freed): close with 4008, or drop the connection if even
    # the close frame cannot go out because the client reads nothing.
    log.warning("slow consumer closed", extra={"transport": "ws"})
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await ws.close(Close.SLOW_CONSUMER, "slow consumer: resume from your cursor")
    except TimeoutError:
        raise SlowConsumer() from None
    except RuntimeError:  # a close frame had already gone out (e.g. shutting down)
        raise SlowConsumer() from None


async def _read_frames(ws: WebSocket, sub: Subscriber, svc: Services,
                       user: str) -> tuple[int, str] | None:
    return await read_frames(ws, svc, idle=lambda: not sub.chats, user=user,
                             idle_reason="idle: no frames and no subscriptions",
                             handle=lambda raw: _answer(raw, sub, svc, user))


async def _answer(raw: str | bytes, sub: Subscriber, svc: Services, user: str) -> None:
    """One request frame: its reply (or error) goes to the socket's outbox."""
    rid: str | None = None
    try:
        req = protocol.parse_request(raw)
        rid = req.rid
        reply = await _handle(req, sub, svc, user)
    except ChatcastError as exc:
        sub.push(protocol.error(exc, getattr(exc, "rid", None) or rid))
        return
    except Exception:
        log.exception("request failed")
        sub.push(protocol.error(ChatcastError("internal error", code=Code.INTERNAL), rid))
        return
    sub.push(reply)


async def _handle(req: Request, sub: Subscriber, svc: Services, user: str) -> protocol.Event:
    match req:
        case Ping():
            return protocol.pong(req.rid)
        case Subscribe():
            await svc.repo.get_chat(user, req.chat)
            if req.chat not in sub.chats and \
                    len(sub.chats) >= svc.settings.max_subscriptions_per_socket:
                raise BadRequest(f"at most {svc.settings.max_subscriptions_per_socket} "
                                 "subscriptions per socket")
            svc.hub.unsubscribe(sub, req.chat)
            await svc.hub.subscribe(sub, req.chat, req.cursor)
            return protocol.ack(req.rid, chat=req.chat)
        case Unsubscribe():
            svc.hub.unsubscribe(sub, req.chat)
            return protocol.ack(req.rid, chat=req.chat)
        case Send():
            result = await commands.send(svc, user, req.chat, req.content, req.client_msg_id)
            return protocol.ack(req.rid, **result)
        case Stop():
            return protocol.ack(req.rid, **await commands.stop(svc, user, req.gen, req.chat))
        case Regenerate():
            result = await commands.regenerate(svc, user, req.chat, req.message)
            return protocol.ack(req.rid, **result)
        case Continue():
            return protocol.ack(req.rid, **await commands.continue_(svc, user, req.gen))
    raise BadRequest("unsupported request")  # pragma: no cover - the parser rejects it


