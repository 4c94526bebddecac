"""OpenAI chat completions, and any server speaking that API (vLLM, Ollama, LM Studio,
llama.cpp) when a base URL is set. Built on the official SDK with its retries off: chatcast
retries in one place, `Registry.stream`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
from openai import AsyncOpenAI, omit
from openai.types.chat import ChatCompletionMessageParam

from providers.base import ChatMessage, Chunk, ProviderFailure, StreamParams, Usage
from providers.upstream import (
    parse_retry_after,
    status_failure,
    stream_error_failure,
    transport_failure,
)

DEFAULT_MODEL = "gpt-4o-mini"


class OpenAIProvider:
    """One `AsyncOpenAI` client (one connection pool) per process."""

    name = "openai"

    def __init__(self, *, api_key: str | None = None, base_url: str | None = None,
                 default_model: str = DEFAULT_MODEL, connect_timeout_s: float = 10.0,
                 idle_timeout_s: float = 60.0) -> None:
        self.default_model = default_model
        self._compatible = base_url is not None and "api.openai.com" not in base_url
        self.label = "The OpenAI-compatible server" if self._compatible else "OpenAI"
        self._client = AsyncOpenAI(
            api_key=api_key or "unused",  # local servers take no key; the SDK insists on one
            base_url=base_url,
            max_retries=0,
            # The read timeout is a backstop; the idle timeout proper is `guarded`'s.
            timeout=openai.Timeout(connect=connect_timeout_s, read=idle_timeout_s + 5,
                                   write=connect_timeout_s, pool=connect_timeout_s),
        )

    async def stream(self, messages: list[ChatMessage], *, model: str,
                     params: StreamParams) -> AsyncIterator[Chunk]:
        flowed = False
        usage: Usage | None = None
        try:
            response = await self._client.chat.completions.create(
                model=model, messages=[_wire(m) for m in messages], stream=True,
                stream_options={"include_usage": True}, **self._options(params))
            # Leaving this block in any way (end, error, cancellation) closes the response.
            async with response:
                async for event in response:
                    if event.usage is not None:
                        usage = Usage(event.usage.prompt_tokens, event.usage.completion_tokens)
                    for choice in event.choices:
                        text = choice.delta.content
                        if text:
                            flowed = True
                            yield Chunk(text=text)
        except openai.OpenAIError as exc:
            raise self._failure(exc, flowed=flowed) from exc
        if usage is not None:
            yield Chunk(usage=usage)

    async def complete(self, messages: list[ChatMessage], *, model: str,
                       params: StreamParams) -> list[Chunk]:
        """The whole answer from one non-streaming request: its text, then its usage."""
        try:
            completion = await self._client.chat.completions.create(
                model=model, messages=[_wire(m) for m in messages], stream=False,
                **self._options(params))
        except openai.OpenAIError as exc:
            raise self._failure(exc, flowed=False) from exc
        text = "".join(c.message.content or "" for c in completion.choices)
        chunks = [Chunk(text=text)] if text else []
        if completion.usage is not None:
            chunks.append(Chunk(usage=Usage(completion.usage.prompt_tokens,
                                            completion.usage.completion_tokens)))
        return chunks

    async def aclose(self) -> None:
        await self._client.close()

    def _options(self, params: StreamParams) -> dict[str, Any]:
        options: dict[str, Any] = {
            "temperature": omit if params.temperature is None else params.temperature,
        }
        if params.max_tokens is not None:
            # OpenAI's newer models only take max_completion_tokens; compatible servers
            # reliably understand only max_tokens.
            key = "max_tokens" if self._compatible else "max_completion_tokens"
            options[key] = params.max_tokens
        if params.extra:
            options["extra_body"] = params.extra
        return options

    def _failure(self, exc: openai.OpenAIError, *, flowed: bool) -> ProviderFailure:
        if isinstance(exc, openai.APIStatusError):
            return status_failure(self.label, exc.status_code, flowed=flowed, code=exc.code,
                                  retry_after=parse_retry_after(exc.response.headers))
        if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
            return transport_failure(self.label, flowed=flowed,
                                     timeout=isinstance(exc, openai.APITimeoutError))
        code = exc.code if isinstance(exc, openai.APIError) else None  # an error event
        return stream_error_failure(self.label, flowed=flowed, code=code)


def _wire(message: ChatMessage) -> ChatCompletionMessageParam:
    if message.role == "system":
        return {"role": "system", "content": message.content}
    if message.role == "assistant":
        return {"role": "assistant", "content": message.content}
    return {"role": "user", "content": message.content}
