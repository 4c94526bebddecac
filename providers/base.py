"""The Provider role: an async iterator of chunks of answer text and of reasoning (and, last,
usage; anywhere, metadata for the answer message), closed on cancel."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one call. `output_tokens` counts everything the model produced, reasoning
    included; `reasoning_tokens` is the reasoning's share, where the provider reports it."""

    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int | None = None

    def as_dict(self) -> dict[str, int]:
        out = {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}
        if self.reasoning_tokens is not None:
            out["reasoning_tokens"] = self.reasoning_tokens
        return out


@dataclass(frozen=True, slots=True)
class Chunk:
    """Some answer text and/or reasoning (the model's visible thinking, kept apart from the
    answer) or, once at the end, the usage of the whole call. `at` is the wall time the first
    of its output arrived (chunks that queued up are merged into one; a merged chunk may hold
    both parts, each in the order it came). `metadata` (e.g. `{"sources": [...]}`) is merged
    into the answer message's metadata, key by key, the later value winning."""

    text: str = ""
    usage: Usage | None = None
    at: float | None = None
    reasoning: str = ""
    metadata: Mapping[str, Any] | None = None

    @property
    def output(self) -> bool:
        """Whether the chunk carries anything a user sees (text or reasoning)."""
        return bool(self.text or self.reasoning)


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
    """Base of provider errors. `message` is safe to show a user (no keys, no raw bodies).
    `idle` is set when the provider sent nothing for the idle timeout."""

    idle: bool = False

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
