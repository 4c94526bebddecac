"""SQLModel tables. Names in brackets are the original design's."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from chatcast.store.ids import iso, new_id, utcnow

MESSAGE_STATUSES = ("complete", "streaming", "stopped", "error", "interrupted")
GENERATION_STATUSES = ("active", "completed", "stopped", "error", "interrupted")
TERMINAL_TO_MESSAGE = {"completed": "complete", "stopped": "stopped", "error": "error",
                       "interrupted": "interrupted"}


class User(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    display_name: str = Field(default="anonymous", max_length=200)
    created_at: datetime = Field(default_factory=utcnow)


class ApiToken(SQLModel, table=True):
    """An API token (`Authorization: Bearer`). Only its sha256 is stored: the token itself
    is shown once, when it is created."""

    __tablename__ = "api_token"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    user_id: str = Field(foreign_key="user.id", max_length=64, index=True)
    name: str = Field(default="", max_length=200)
    token_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = Field(default_factory=utcnow)
    last_used_at: datetime | None = None


class Chat(SQLModel, table=True):
    __table_args__ = (Index("ix_chat_user_updated", "user_id", "updated_at"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    user_id: str = Field(foreign_key="user.id", max_length=64)
    title: str = Field(default="New chat", max_length=200)
    provider: str | None = Field(default=None, max_length=40)
    model: str | None = Field(default=None, max_length=200)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Message(SQLModel, table=True):
    # Idempotency of `send`: one user message per (chat, client_msg_id), enforced by SQL.
    __table_args__ = (
        UniqueConstraint("chat_id", "client_msg_id", name="uq_message_client_msg_id"),
        Index("ix_message_chat_id_id", "chat_id", "id"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    chat_id: str = Field(foreign_key="chat.id", max_length=64, ondelete="CASCADE")
    role: str = Field(max_length=16)
    content: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    status: str = Field(default="complete", max_length=16)
    generation_id: str | None = Field(default=None, max_length=64)  # [streaming_session_id]
    is_streaming: bool = False
    completed_at: datetime | None = None  # [stream_completed_at]
    provider: str | None = Field(default=None, max_length=40)
    model: str | None = Field(default=None, max_length=200)
    usage: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    # The answer's reasoning (the model's visible thinking), kept apart from its content.
    reasoning: str = Field(default="", sa_column=Column(Text, nullable=False, default="",
                                                        server_default=""))
    reasoning_started_at: datetime | None = None  # the first reasoning arrived
    reasoning_ended_at: datetime | None = None  # the first answer text did (or the end)
    client_msg_id: str | None = Field(default=None, max_length=128)
    created_at: datetime = Field(default_factory=utcnow)
    # e.g. {"cached": true, "cache": "hit", "cached_at": …} for an answer from the cache
    meta: dict[str, Any] | None = Field(default=None, sa_column=Column("metadata", JSON,
                                                                       nullable=True))


class Generation(SQLModel, table=True):  # [StreamingSession]
    # One active generation per chat, enforced by SQL (partial unique index), so two
    # processes racing to start one cannot both win.
    __table_args__ = (
        Index("uq_generation_one_active_per_chat", "chat_id", unique=True,
              sqlite_where=text("status = 'active'"),
              postgresql_where=text("status = 'active'")),
        Index("ix_generation_status", "status"),
        Index("ix_generation_chat_id_id", "chat_id", "id"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    chat_id: str = Field(foreign_key="chat.id", max_length=64, ondelete="CASCADE")
    message_id: str = Field(max_length=64)
    user_id: str = Field(max_length=64)
    status: str = Field(default="active", max_length=16)
    provider: str = Field(max_length=40)
    model: str = Field(max_length=200)
    last_seq: int = 0  # seq of the text checkpointed with the message content
    owner: str | None = Field(default=None, max_length=80)
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    meta: dict[str, Any] | None = Field(default=None, sa_column=Column("metadata", JSON,
                                                                       nullable=True))
    started_at: datetime = Field(default_factory=utcnow)
    completed_at: datetime | None = None


def message_dict(m: Message) -> dict[str, Any]:
    """A message as the protocol shows it."""
    return {
        "id": m.id, "chat": m.chat_id, "role": m.role, "content": m.content,
        "status": m.status, "gen": m.generation_id, "provider": m.provider, "model": m.model,
        "usage": m.usage, "reasoning": m.reasoning,
        "reasoning_started_at": iso(m.reasoning_started_at),
        "reasoning_ended_at": iso(m.reasoning_ended_at), "client_msg_id": m.client_msg_id,
        "metadata": m.meta,
        "created_at": iso(m.created_at), "completed_at": iso(m.completed_at),
    }


def chat_dict(c: Chat) -> dict[str, Any]:
    return {"id": c.id, "title": c.title, "provider": c.provider, "model": c.model,
            "created_at": iso(c.created_at), "updated_at": iso(c.updated_at)}


@dataclass(slots=True)
class Reasoning:
    """An answer's reasoning so far: its text, when it began and when it ended."""

    text: str = ""
    started_at: datetime | None = None
    ended_at: datetime | None = None

    @classmethod
    def of(cls, m: Message) -> Reasoning:
        return cls(m.reasoning, m.reasoning_started_at, m.reasoning_ended_at)

    def columns(self) -> dict[str, Any]:
        """The Message columns it is stored in."""
        return {"reasoning": self.text, "reasoning_started_at": self.started_at,
                "reasoning_ended_at": self.ended_at}


def generation_dict(g: Generation, content: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": g.id, "chat": g.chat_id, "message": g.message_id, "status": g.status,
        "provider": g.provider, "model": g.model, "seq": g.last_seq, "error": g.error,
        "metadata": g.meta, "started_at": iso(g.started_at), "completed_at": iso(g.completed_at),
    }
    if content is not None:
        out["content"] = content
    return out
