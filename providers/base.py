"""The Provider role: an async iterator of text chunks (and, last, usage), closed on cancel."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}


@dataclass(frozen=True, slots=True)
class Chunk:
    """Either some text or, once at the end, the usage of the whole call. `at` is the wall
    time the first of its text arrived (chunks that queued up are merged into one)."""

    text: str = ""
    usage: Usage | None = None
    at: float | None = None


@dataclass(slots=True)
class StreamParams:
    temperature: float | None = None
    max_tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Provider(Protocol):
    """A model API. `stream` must close its upstream connection when the consuming task is
    cancelled (a stop stops the spend), and raise the errors below, never SDK exceptions."""

    name: str
    default_model: str

    def stream(self, messages: list[ChatMessage], *, model: str,
               params: StreamParams) -> AsyncIterator[Chunk]: ...

    async def aclose(self) -> None: ...


class ProviderFailure(Exception):
    """Base of provider errors. `message` is safe to show a user (no keys, no raw bodies)."""

    def __init__(self, message: str, *, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after


class ProviderUnavailable(ProviderFailure):
    """Retryable before the first token: 429, 5xx, connect errors, timeouts."""


class ProviderError(ProviderFailure):
    """Not retryable: 4xx, bad key, refused content."""


class ProviderStreamBroken(ProviderFailure):
    """The stream failed after text had flowed; never restarted silently."""
