"""HTTP routes: REST for chats and history, the commands, health, metrics, OpenAPI."""

from __future__ import annotations

from typing import Annotated, TypeVar

from pydantic import BaseModel, ConfigDict, StringConstraints
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.schemas import SchemaGenerator

from chatcast.core.errors import BadRequest
from chatcast.core.protocol import Cursor, describe_validation
from chatcast.core.protocol import start as start_event
from chatcast.server import client_reports, commands, metrics
from chatcast.server.hub import Subscriber
from chatcast.server.responses import OrjsonResponse, json_body
from chatcast.server.services import Services, services, user_id
from chatcast.server.transports import poll, sse
from chatcast.store.models import chat_dict, generation_dict, message_dict

M = TypeVar("M", bound=BaseModel)
Title = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class ChatIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    title: Title | None = None
    provider: Name | None = None
    model: Name | None = None


class SendIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    content: str
    client_msg_id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None


class RegenerateIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    message: Name | None = None


async def _body(request: Request, model: type[M]) -> M:
    return await json_body(request, model, describe=describe_validation)


def _check_provider(svc: Services, body: ChatIn) -> None:
    if body.provider is not None and body.provider not in svc.registry.providers:
        raise BadRequest(f"provider {body.provider!r} is not configured")


# Chats -------------------------------------------------------------------------------

async def create_chat(request: Request) -> Response:
    """
    summary: Create a chat
    responses:
      201: {description: the chat}
    """
    svc, user = services(request), user_id(request)
    body = await _body(request, ChatIn)
    _check_provider(svc, body)
    chat = await svc.repo.create_chat(user, body.title, body.provider, body.model)
    return OrjsonResponse(chat_dict(chat), status_code=201)


async def list_chats(request: Request) -> Response:
    """
    summary: The caller's chats, most recently active first
    responses:
      200: {description: "{chats: [...]}"}
    """
    svc, user = services(request), user_id(request)
    return OrjsonResponse({"chats": [chat_dict(c) for c in await svc.repo.list_chats(user)]})


async def get_chat(request: Request) -> Response:
    """
    summary: One chat
    responses:
      200: {description: the chat}
      404: {description: not found (or another user's)}
    """
    svc, user = services(request), user_id(request)
    return OrjsonResponse(chat_dict(await svc.repo.get_chat(user, request.path_params["chat"])))


async def patch_chat(request: Request) -> Response:
    """
    summary: Rename a chat or pick its provider and model
    responses:
      200: {description: the chat}
    """
    svc, user = services(request), user_id(request)
    body = await _body(request, ChatIn)
    _check_provider(svc, body)
    changes = body.model_dump(exclude_unset=True)
    chat = await svc.repo.update_chat(user, request.path_params["chat"], changes)
    return OrjsonResponse(chat_dict(chat))


async def delete_chat(request: Request) -> Response:
    """
    summary: Delete a chat and its messages (refused while it is generating)
    responses:
      204: {description: deleted}
    """
    svc, user = services(request), user_id(request)
    await svc.repo.delete_chat(user, request.path_params["chat"])
    return Response(status_code=204)


async def list_messages(request: Request) -> Response:
    """
    summary: History, newest page first (`before` = a message id, `limit` ≤ 200)
    responses:
      200: {description: "{messages: [...oldest→newest], has_more}"}
    """
    svc, user = services(request), user_id(request)
    chat = request.path_params["chat"]
    await svc.repo.get_chat(user, chat)
    try:
        limit = max(1, min(int(request.query_params.get("limit", "50")), 200))
    except ValueError:
        raise BadRequest("limit must be an integer") from None
    msgs, has_more = await svc.repo.messages_page(chat, request.query_params.get("before"),
                                                  limit)
    return OrjsonResponse({"messages": [message_dict(m) for m in msgs], "has_more": has_more})


# Commands ----------------------------------------------------------------------------

async def post_message(request: Request) -> Response:
    """
    summary: Send a message; with `Accept text/event-stream` the answer streams back
    responses:
      202: {description: "{message, gen}"}
      409: {description: busy}
    """
    svc, user = services(request), user_id(request)
    chat = request.path_params["chat"]
    body = await _body(request, SendIn)
    wants_stream = "text/event-stream" in request.headers.get("accept", "")
    if not wants_stream:
        result = await commands.send(svc, user, chat, body.content, body.client_msg_id)
        return OrjsonResponse(result, status_code=202)
    await svc.repo.get_chat(user, chat)
    sub: Subscriber = svc.subscriber("sse")
    result = await commands.send(svc, user, chat, body.content, body.client_msg_id)
    gen = await svc.repo.generation(result["gen"])
    assert gen is not None
    await svc.hub.subscribe(sub, chat, Cursor(gen=gen.id, seq=0))
    first = start_event(chat, gen.id, gen.message_id, gen.provider, gen.model)
    return sse.one_shot(svc, sub, first, gen.id)


async def regenerate(request: Request) -> Response:
    """
    summary: A new answer to the last (or given) user message
    responses:
      202: {description: "{gen}"}
    """
    svc, user = services(request), user_id(request)
    body = await _body(request, RegenerateIn)
    result = await commands.regenerate(svc, user, request.path_params["chat"], body.message)
    return OrjsonResponse(result, status_code=202)


async def stop_generation(request: Request) -> Response:
    """
    summary: Stop a generation for everyone (idempotent)
    responses:
      200: {description: "{gen, status}"}
    """
    svc, user = services(request), user_id(request)
    return OrjsonResponse(await commands.stop(svc, user, request.path_params["gen"], None))


async def continue_generation(request: Request) -> Response:
    """
    summary: Continue a stopped, interrupted or failed answer from its partial text
    responses:
      202: {description: "{gen}"}
    """
    svc, user = services(request), user_id(request)
    result = await commands.continue_(svc, user, request.path_params["gen"])
    return OrjsonResponse(result, status_code=202)


async def get_generation(request: Request) -> Response:
    """
    summary: A generation's status, seq, content and reasoning so far
    responses:
      200: {description: "{status, seq, content, reasoning, ...}"}
    """
    svc, user = services(request), user_id(request)
    gen = await svc.repo.get_generation(user, request.path_params["gen"])
    msg = await svc.repo.get_message(gen.message_id)
    content, seq = (msg.content if msg else ""), gen.last_seq
    reasoning = msg.reasoning if msg else ""
    progress = svc.runner.progress(gen.id)
    if progress is not None:
        content, seq, reasoning = progress
    out = generation_dict(gen, content)
    out["seq"] = seq
    out["reasoning"] = reasoning
    return OrjsonResponse(out)


async def list_models(request: Request) -> Response:
    """
    summary: The configured providers and models
    responses:
      200: {description: "{models: [{provider, model, default}]}"}
    """
    return OrjsonResponse({"models": services(request).registry.models()})


async def create_ticket(request: Request) -> Response:
    """
    summary: A short-lived, single-use ticket for `?ticket=` on /ws and the SSE route
    responses:
      201: {description: "{ticket, expires_in}"}
    """
    svc, user = services(request), user_id(request)
    ticket = await svc.auth.issue_ticket(user)
    return OrjsonResponse({"ticket": ticket, "expires_in": int(svc.settings.ticket_ttl_s)},
                          status_code=201)


# Operations --------------------------------------------------------------------------

async def healthz(request: Request) -> Response:
    """
    summary: The process is up
    responses:
      200: {description: ok}
    """
    return OrjsonResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """
    summary: The store and the bus are reachable
    responses:
      200: {description: ready}
      503: {description: "not ready: the failing component is false"}
    """
    svc = services(request)
    checks = {"store": await svc.repo.ping(), "bus": await _bus_ok(svc)}
    svc.runner.outages.seen(store=checks["store"], bus=checks["bus"])
    ok = all(checks.values()) and not svc.shutting_down.is_set()
    return OrjsonResponse({"status": "ok" if ok else "unavailable", **checks},
                          status_code=200 if ok else 503)


async def _bus_ok(svc: Services) -> bool:
    try:
        return await svc.bus.ping()
    except Exception:
        return False


async def metrics_endpoint(request: Request) -> Response:
    return Response(metrics.render(), media_type="text/plain; version=0.0.4")


ROUTES = [
    Route("/healthz", healthz), Route("/readyz", readyz),
    Route("/metrics", metrics_endpoint, include_in_schema=False),
    Route("/api/models", list_models),
    Route("/api/tickets", create_ticket, methods=["POST"]),
    Route("/api/client-errors", client_reports.post_client_error, methods=["POST"]),
    Route("/api/client-events", client_reports.post_client_event, methods=["POST"]),
    Route("/api/chats", create_chat, methods=["POST"]),
    Route("/api/chats", list_chats, methods=["GET"]),
    Route("/api/chats/{chat}", get_chat, methods=["GET"]),
    Route("/api/chats/{chat}", patch_chat, methods=["PATCH"]),
    Route("/api/chats/{chat}", delete_chat, methods=["DELETE"]),
    Route("/api/chats/{chat}/messages", list_messages, methods=["GET"]),
    Route("/api/chats/{chat}/messages", post_message, methods=["POST"]),
    Route("/api/chats/{chat}/regenerate", regenerate, methods=["POST"]),
    Route("/api/chats/{chat}/events", sse.events_endpoint, methods=["GET"]),
    Route("/api/chats/{chat}/poll", poll.poll_endpoint, methods=["GET"]),
    Route("/api/generations/{gen}", get_generation, methods=["GET"]),
    Route("/api/generations/{gen}/stop", stop_generation, methods=["POST"]),
    Route("/api/generations/{gen}/continue", continue_generation, methods=["POST"]),
]

SCHEMAS = SchemaGenerator({"openapi": "3.0.0",
                           "info": {"title": "chatcast", "version": "1"}})
