"""What an AI SDK request does, whatever transport brought it: `DefaultChatTransport`'s
body (also a WebSocket `send` frame) read, its new user message sent through chatcast's
commands (or the last answer regenerated) in the chat of that id, made on first use; the
stop of a chat; its history as `UIMessage`s. chatcast keeps the history itself: a request's
earlier messages are never read, only its new user message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from chatcast.core.errors import BadRequest
from chatcast.core.protocol import check_content, describe_validation
from chatcast.server import commands
from chatcast.server.aisdk_map import ui_history
from chatcast.server.services import Services
from chatcast.store.models import message_dict

ChatId = Annotated[str, StringConstraints(min_length=1, max_length=64,
                                          pattern=r"^[A-Za-z0-9_-]+$")]
UiId = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class UIPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class UIMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: UiId | None = None
    role: str = "user"
    parts: list[UIPart] = Field(default_factory=list)


class ChatIn(BaseModel):
    """`DefaultChatTransport`'s body (the app's own `body` fields are ignored)."""

    model_config = ConfigDict(extra="ignore")
    id: ChatId
    messages: list[UIMessageIn] | None = None
    message: UIMessageIn | None = None  # apps that send only the last message
    trigger: Literal["submit-message", "regenerate-message"] = "submit-message"
    messageId: UiId | None = None  # the AI SDK's field names


def parse_chat(data: Any) -> ChatIn:
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    if "id" not in data:
        raise BadRequest("id: the AI SDK chat id is required")
    try:
        return ChatIn.model_validate(data)
    except ValidationError as exc:
        parts = []
        for err in exc.errors()[:3]:
            loc = ".".join(str(p) for p in err["loc"])
            parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
        raise BadRequest("; ".join(parts)) from None


def check_chat_id(chat: str) -> str:
    try:
        ChatIn.model_validate({"id": chat})
    except ValidationError as exc:
        raise BadRequest(f"chat id: {describe_validation(exc)}; use 1-64 letters, digits, "
                         "'_' or '-'") from None
    return chat


def _user_text(msg: UIMessageIn) -> str:
    if msg.role != "user":
        raise BadRequest(f"the last message must be the user's new message, not {msg.role!r}")
    if any(p.type == "file" for p in msg.parts):
        raise BadRequest("file parts are not supported: send text")
    return "\n".join(p.text for p in msg.parts if p.type == "text" and p.text is not None)


@dataclass(frozen=True, slots=True)
class Turn:
    """The generation that answers a request."""

    gen: str
    chat: str
    message: str  # the answer's message: the stream's `messageId`
    provider: str
    model: str


async def start_turn(svc: Services, user: str, req: ChatIn) -> Turn:
    """Send the request's new user message (or regenerate the last answer); the
    generation that answers it."""
    if req.trigger == "regenerate-message":
        await svc.repo.get_chat(user, req.id)
        await _check_regenerate_target(svc, req.id, req.messageId)
        result = await commands.regenerate(svc, user, req.id, None)
    else:
        msg = req.message or (req.messages[-1] if req.messages else None)
        if msg is None:
            raise BadRequest("no message: send `messages` (the last one is the new user "
                             "message) or `message`")
        if req.messageId is not None:
            raise BadRequest("editing a sent message is not supported: send a new one")
        content = check_content(_user_text(msg), svc.settings.max_message_chars)
        await svc.repo.ensure_chat(user, req.id)  # only for a request that can be sent
        result = await commands.send(svc, user, req.id, content, msg.id)
        sent = result.get("message")
        if sent is not None and sent["content"] != content:
            raise BadRequest(f"message {msg.id} was sent before with another text")
    gen = await svc.repo.generation(result["gen"])
    assert gen is not None
    return Turn(gen.id, gen.chat_id, gen.message_id, gen.provider, gen.model)


async def _check_regenerate_target(svc: Services, chat: str, target: str | None) -> None:
    """Only the last answer can be regenerated (chatcast's history stays one line): the
    target, if named, is the last user message or one of its answers."""
    if target is None:
        return
    rows, _ = await svc.repo.messages_page(chat, limit=20)
    last_user = max((i for i, m in enumerate(rows) if m.role == "user"), default=None)
    if last_user is not None:
        question = rows[last_user]
        allowed = {question.id, question.client_msg_id, *(m.id for m in rows[last_user + 1:])}
        if target in allowed:
            return
    raise BadRequest(f"message {target} cannot be regenerated: only the last answer can")


async def stop_chat(svc: Services, user: str, chat: str) -> dict[str, Any]:
    return await commands.stop(svc, user, None, check_chat_id(chat))


async def history(svc: Services, user: str, chat: str, before: str | None,
                  limit: int) -> dict[str, Any]:
    """A page of the chat's history as `UIMessage`s (empty for an id not used yet), the
    answer in progress with all its text so far (not only its last checkpoint)."""
    if await svc.repo.find_chat(user, check_chat_id(chat)) is None:
        return {"messages": [], "has_more": False}
    rows, has_more = await svc.repo.messages_page(chat, before, limit)
    out = [message_dict(m) for m in rows]
    if any(m["status"] == "streaming" for m in out):
        active = (await svc.replay.snapshot(chat)).data.get("active") or {}
        for m in out:
            if m["id"] == active.get("message"):
                m["content"] = active.get("content", m["content"])
                if "reasoning" in active:
                    m["reasoning"] = active["reasoning"]
    return {"messages": ui_history(out), "has_more": has_more}
