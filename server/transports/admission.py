"""Who may open a WebSocket (identity from the handshake, the per-user socket limit) and
what it may send (frames per second, the idle timeout): shared by every WebSocket route.

Refusals after the Origin check are sent as close frames after accepting (4001 without
valid credentials, 4029 over the socket limit), because a browser cannot see the HTTP status
of a refused handshake: it would only report 1006 and reconnect blindly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import orjson
from starlette.websockets import WebSocket

from chatcast.core.codes import Close
from chatcast.core.errors import ChatcastError, Unauthorized
from chatcast.server import metrics
from chatcast.server.auth import origin_allowed
from chatcast.server.limits import TokenBucket
from chatcast.server.services import Services

log = logging.getLogger("chatcast.ws")

#: When a client over the socket limit should try again (it may close another tab first).
SOCKETS_RETRY_AFTER_S = 10.0


def retry_after_reason(seconds: float) -> str:
    """The close reason of a 4029: `{"retry_after": s}` (read by clients/js/backoff.js)."""
    return orjson.dumps({"retry_after": round(seconds, 3)}).decode()


async def read_frames(ws: WebSocket, svc: Services, *, idle: Callable[[], bool], idle_reason: str,
                      handle: Callable[[str | bytes], Awaitable[None] | None],
                      user: str | None = None) -> tuple[int, str] | None:
    """Receive the socket's frames and `handle` each, in order, until it ends: None when the
    client went away, else the close (code, reason) to send — 1001 when `idle()` has held
    for the idle timeout with no frame (a socket that waits for nothing costs nothing and a
    real client reconnects when it needs to), 4029 over the frame rate."""
    settings = svc.settings
    bucket = TokenBucket(settings.ws_frames_per_s, settings.ws_frame_burst)
    while True:
        timeout = settings.ws_idle_timeout_s if settings.ws_idle_timeout_s > 0 and idle() \
            else None
        try:
            async with asyncio.timeout(timeout):
                message = await ws.receive()
        except TimeoutError:
            return Close.GOING_AWAY, idle_reason
        if message["type"] == "websocket.disconnect":
            return None
        wait = bucket.take()
        if wait > 0:
            log.warning("websocket rate limited", extra={"user": user})
            metrics.RATE_LIMITED.labels("frames").inc()
            return Close.RATE_LIMITED, retry_after_reason(max(wait, 1.0))
        raw = message.get("text")
        pending = handle(raw if raw is not None else message.get("bytes") or b"")
        if pending is not None:
            await pending


async def admit_websocket(ws: WebSocket, svc: Services) -> str | None:
    """The whole handshake policy of every WebSocket route: a shutting-down server answers
    1001 (reconnect elsewhere), a foreign Origin is refused before accepting (HTTP 403), then
    `admit`. Its user, or None if the socket was refused (and is already closed)."""
    if svc.shutting_down.is_set():
        await ws.close(Close.GOING_AWAY)
        return None
    if not origin_allowed(ws, svc.settings.allowed_origins):
        log.info("websocket refused: foreign origin", extra={"origin": ws.headers.get("origin")})
        await ws.close(Close.POLICY)  # before accept: the handshake is answered 403
        return None
    return await admit(ws, svc)


async def admit(ws: WebSocket, svc: Services) -> str | None:
    """Authenticate, count and accept the socket; its user, or None if it was refused.
    An admitted socket holds one of its user's slots until `release`."""
    try:
        who = await svc.auth.authenticate(ws, ticket_ok=True)
    except ChatcastError as exc:
        code = Close.UNAUTHORIZED if isinstance(exc, Unauthorized) else Close.INTERNAL
        log.info("websocket refused", extra={"code": int(code), "reason": exc.message})
        metrics.AUTH_REFUSED.inc()
        await ws.accept()
        await ws.close(code, exc.message)
        return None
    user = who.user_id
    open_now = svc.sockets.get(user, 0)
    if open_now >= svc.settings.max_sockets_per_user:
        log.info("websocket refused: too many sockets", extra={"user": user})
        metrics.RATE_LIMITED.labels("sockets").inc()
        await ws.accept()
        await ws.close(Close.RATE_LIMITED, retry_after_reason(SOCKETS_RETRY_AFTER_S))
        return None
    svc.sockets[user] = open_now + 1
    headers = None
    if who.is_new:
        cookie = svc.auth.cookies.cookie_header(user, secure=ws.url.scheme == "wss")
        headers = [(b"set-cookie", cookie)]
    try:
        await ws.accept(headers=headers)
    except BaseException:
        release(svc, user)
        raise
    return user


def release(svc: Services, user: str) -> None:
    left = svc.sockets.get(user, 0) - 1
    if left > 0:
        svc.sockets[user] = left
    else:
        svc.sockets.pop(user, None)
