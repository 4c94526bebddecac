"""WebSocket transport: `GET /ws`, protocol v1, many chats multiplexed on one socket."""

from __future__ import annotations

import asyncio
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect

from server import commands, metrics, protocol
from server.auth import origin_allowed
from server.codes import Close, Code
from server.errors import BadRequest, ChatcastError
from server.hub import Subscriber
from server.protocol import (
    Continue,
    Ping,
    Regenerate,
    Request,
    Send,
    Stop,
    Subscribe,
    Unsubscribe,
)
from server.services import Services, services

log = logging.getLogger("chatcast.ws")


async def ws_endpoint(ws: WebSocket) -> None:
    svc = services(ws)
    if svc.shutting_down.is_set():
        await ws.close(Close.GOING_AWAY)
        return
    if not origin_allowed(ws, svc.settings.allowed_origins):
        log.info("websocket refused: foreign origin", extra={"origin": ws.headers.get("origin")})
        await ws.close(Close.POLICY)  # before accept: the handshake is answered 403
        return
    user, is_new = svc.identity.resolve(ws)
    headers = None
    if is_new:
        secure = ws.url.scheme == "wss"
        headers = [(b"set-cookie", svc.identity.cookie_header(user, secure=secure))]
    await ws.accept(headers=headers)
    sub = svc.subscriber("ws")
    svc.hub.attach(sub)
    metrics.CLIENTS.labels("ws").inc()
    try:
        async with asyncio.TaskGroup() as tg:
            writer = tg.create_task(_write(ws, sub, svc))
            await _read(ws, sub, svc, user)
            writer.cancel()
    except* WebSocketDisconnect:
        pass
    finally:
        svc.hub.drop(sub)
        metrics.CLIENTS.labels("ws").dec()


async def _write(ws: WebSocket, sub: Subscriber, svc: Services) -> None:
    frames = metrics.FRAMES_SENT.labels("ws")
    while True:
        batch = await sub.next_batch()
        if sub.overflowed:
            log.warning("slow consumer closed", extra={"transport": "ws"})
            await ws.close(Close.SLOW_CONSUMER, "slow consumer: resume from your cursor")
            return
        for event in batch:
            await ws.send_text(event.text())
        frames.inc(len(batch))
        if sub.close_code is not None:
            await ws.close(sub.close_code, "server shutting down: reconnect")
            return


async def _read(ws: WebSocket, sub: Subscriber, svc: Services, user: str) -> None:
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        raw = message.get("text")
        if raw is None:
            raw = message.get("bytes") or b""
        rid: str | None = None
        try:
            req = protocol.parse_request(raw)
            rid = req.rid
            reply = await _handle(req, sub, svc, user)
        except ChatcastError as exc:
            sub.push(protocol.error(exc, getattr(exc, "rid", None) or rid))
            continue
        except Exception:
            log.exception("request failed")
            sub.push(protocol.error(ChatcastError("internal error", code=Code.INTERNAL), rid))
            continue
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


