"""What clients report: errors they hit (a message that would not render, a malformed frame
they skipped) and engagement the server cannot see (copy, reconnects, transport
fallbacks). Both are rate-limited per user, bounded in size, logged with their context and
counted in /metrics. Nothing here changes any chat."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal, get_args

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.requests import Request
from starlette.responses import Response

from chatcast.core.errors import RateLimited, TooLarge
from chatcast.server import metrics
from chatcast.server.logs import redact
from chatcast.server.responses import json_body
from chatcast.server.services import Services, services, user_id

log = logging.getLogger("chatcast.client")

MAX_BODY_BYTES = 8 * 1024
MAX_DETAIL_CHARS = 2000
ErrorKind = Literal["render_error", "malformed_frame", "script_error"]
EventName = Literal["copy", "reconnect", "transport_fallback"]
for _kind in get_args(ErrorKind):  # counted from 0 (see metrics._init)
    metrics.CLIENT_ERRORS.labels(_kind)
ChatId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class ClientErrorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: ErrorKind
    message: Annotated[str, StringConstraints(max_length=1000)]
    detail: dict[str, Any] | str | None = None
    chat_id: ChatId | None = None


class ClientEventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event: EventName
    transport: Literal["ws", "sse", "poll"] | None = None
    chat_id: ChatId | None = None
    detail: dict[str, Any] | str | None = Field(default=None)


async def _read(request: Request, model: type[ClientErrorIn] | type[ClientEventIn],
                svc: Services, user: str) -> Any:
    if len(await request.body()) > MAX_BODY_BYTES:  # read once: Starlette keeps it
        raise TooLarge(f"a report is at most {MAX_BODY_BYTES} bytes")
    body = await json_body(request, model)
    per_minute = svc.settings.client_reports_per_minute
    if per_minute > 0:
        wait = await svc.limits.take(f"reports:{user}", per_minute / 60, max(per_minute, 1))
        if wait > 0:
            metrics.RATE_LIMITED.labels("client_reports").inc()
            raise RateLimited(wait)
    return body


def _detail(detail: dict[str, Any] | str | None) -> str | None:
    if detail is None:
        return None
    text = detail if isinstance(detail, str) else orjson.dumps(detail, default=str).decode()
    return redact(text[:MAX_DETAIL_CHARS])


def _context(request: Request, user: str, chat: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"user": user,
                           "user_agent": request.headers.get("user-agent", "")[:200]}
    if chat is not None:
        out["chat"] = chat
    return out


async def post_client_error(request: Request) -> Response:
    """
    summary: Report a client-side error (a message that failed to render, a skipped frame)
    responses:
      202: {description: logged and counted}
      429: {description: too many reports}
    """
    svc, user = services(request), user_id(request)
    body: ClientErrorIn = await _read(request, ClientErrorIn, svc, user)
    metrics.CLIENT_ERRORS.labels(body.kind).inc()
    log.warning("client error", extra={"kind": body.kind, "error": redact(body.message),
                                       "detail": _detail(body.detail),
                                       **_context(request, user, body.chat_id)})
    return Response(status_code=202)


async def post_client_event(request: Request) -> Response:
    """
    summary: Report what a user did that only the client sees (copy, reconnect, fallback)
    responses:
      202: {description: counted}
      429: {description: too many reports}
    """
    svc, user = services(request), user_id(request)
    body: ClientEventIn = await _read(request, ClientEventIn, svc, user)
    metrics.USER_ACTIONS.labels(body.event).inc()
    extra = {"event": body.event, **_context(request, user, body.chat_id)}
    if body.transport is not None:
        extra["transport"] = body.transport
    if body.detail is not None:
        extra["detail"] = _detail(body.detail)
    log.info("client event", extra=extra)
    return Response(status_code=202)
