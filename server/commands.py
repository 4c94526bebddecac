"""The commands every transport offers, in one place: validated, scoped by user, and turned
into the same result objects whether they came as a WebSocket frame or an HTTP request."""

from __future__ import annotations

from typing import Any

from chatcast.core.errors import RateLimited
from chatcast.core.protocol import check_content
from chatcast.server import metrics
from chatcast.server.services import Services
from chatcast.store.models import message_dict
from chatcast.store.repo import Started


def started_result(started: Started) -> dict[str, Any]:
    out: dict[str, Any] = {"gen": started.generation.id, "chat": started.chat.id,
                           "assistant": started.assistant.id}
    if started.user_message is not None:
        out["message"] = message_dict(started.user_message)
    return out


async def check_rate(svc: Services, user: str) -> None:
    """Messages per minute per user (send, regenerate and continue each count one): a token
    bucket holding a minute's worth, shared by every process when Redis is configured."""
    per_minute = svc.settings.messages_per_minute
    if per_minute <= 0:
        return
    wait = await svc.limits.take(f"msg:{user}", per_minute / 60, max(per_minute, 1))
    if wait > 0:
        metrics.RATE_LIMITED.labels("messages").inc()
        raise RateLimited(wait)


async def send(svc: Services, user: str, chat: str, content: str,
               client_msg_id: str | None) -> dict[str, Any]:
    check_content(content, svc.settings.max_message_chars)
    await check_rate(svc, user)
    result = started_result(await svc.runner.send(user, chat, content, client_msg_id))
    metrics.USER_ACTIONS.labels("send").inc()
    return result


async def stop(svc: Services, user: str, gen: str | None, chat: str | None) -> dict[str, Any]:
    g = await svc.runner.request_stop(user, gen, chat)
    metrics.USER_ACTIONS.labels("stop").inc()
    return {"gen": g.id, "status": "stopping" if g.status == "active" else g.status}


async def regenerate(svc: Services, user: str, chat: str,
                     message: str | None) -> dict[str, Any]:
    await check_rate(svc, user)
    result = started_result(await svc.runner.regenerate(user, chat, message))
    metrics.USER_ACTIONS.labels("regenerate").inc()
    return result


async def continue_(svc: Services, user: str, gen: str) -> dict[str, Any]:
    await check_rate(svc, user)
    result = started_result(await svc.runner.continue_(user, gen))
    metrics.USER_ACTIONS.labels("continue").inc()
    return result
