"""OpenAI chat completions, and any server speaking that API (vLLM, Ollama, LM Studio,
llama.cpp) when a base URL is set; OpenAI's Responses API as an opt-in wire. Built on the
official SDK with its retries off: chatcast retries in one place, `Registry.stream`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal

import openai
from openai import AsyncOpenAI, omit
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletionMessageParam

from chatcast.providers import openai_responses as responses
from chatcast.providers.base import ChatMessage, Chunk, ProviderFailure, StreamParams, Usage
from chatcast.providers.think import ThinkSplitter, ThinkTags, model_starts_open
from chatcast.providers.upstream import (
    parse_retry_after,
    status_failure,
    stream_error_failure,
    transport_failure,
)

log = logging.getLogger("chatcast.providers")

DEFAULT_MODEL = "gpt-4o-mini"
Wire = Literal["chat", "responses"]
DEFAULT_THINK_TAGS = ThinkTags()


class OpenAIProvider:
    """One `AsyncOpenAI` client (one connection pool) per process.

    `wire="chat"` (default) speaks Chat Completions, which every compatible server has; their
    reasoning comes in `delta.reasoning` / `delta.reasoning_content` / `reasoning_details`,
    or inline between think tags (`think_tags`). `wire="responses"` speaks OpenAI's Responses
    API, the only one of OpenAI's own where reasoning models show their reasoning (a summary,
    asked for with `reasoning_summary`)."""

    name = "openai"

    def __init__(self, *, api_key: str | None = None, base_url: str | None = None,
                 default_model: str = DEFAULT_MODEL, connect_timeout_s: float = 10.0,
                 idle_timeout_s: float = 60.0, wire: Wire = "chat",
                 think_tags: ThinkTags | None = DEFAULT_THINK_TAGS, think_open_models: str = "",
                 reasoning_summary: str | None = "auto",
                 reasoning_effort: str | None = None) -> None:
        self.default_model = default_model
        self._compatible = base_url is not None and "api.openai.com" not in base_url
        self.label = "The OpenAI-compatible server" if self._compatible else "OpenAI"
        self.wire = wire
        self.think_tags = think_tags
        self.think_open_models = think_open_models
        self.reasoning_summary = reasoning_summary or None
        self.reasoning_effort = reasoning_effort or None
        self._client = AsyncOpenAI(
            api_key=api_key or "unused",  # local servers take no key; the SDK insists on one
            base_url=base_url,
            max_retries=0,
            # The read timeout is a backstop; the idle timeout proper is `guarded`'s.
            timeout=openai.Timeout(connect=connect_timeout_s, read=idle_timeout_s + 5,
                                   write=connect_timeout_s, pool=connect_timeout_s),
        )
        if wire == "responses":
            responses.warm_up()
            _ = self._client.responses  # the SDK imports this resource on first use (~0.5 s)

    def stream(self, messages: list[ChatMessage], *, model: str,
               params: StreamParams) -> AsyncIterator[Chunk]:
        if self.wire == "responses":
            return responses.stream(self._client, messages, model=model,
                                    options=self._responses_options(params),
                                    failure=self._failure, label=self.label)
        return self._stream_chat(messages, model=model, params=params)

    async def _stream_chat(self, messages: list[ChatMessage], *, model: str,
                           params: StreamParams) -> AsyncIterator[Chunk]:
        flowed = False
        usage: Usage | None = None
        splitter = self._splitter(model)
        try:
            response = await self._client.chat.completions.create(
                model=model, messages=[_wire(m) for m in messages], stream=True,
                stream_options={"include_usage": True}, **self._options(params))
            # Leaving this block in any way (end, error, cancellation) closes the response.
            async with response:
                async for event in response:
                    if event.usage is not None:
                        usage = _usage(event.usage)
                    for choice in event.choices:
                        reasoning = delta_reasoning(choice.delta.model_extra)
                        text = choice.delta.content or ""
                        if splitter is not None and text:
                            inline, text = splitter.feed(text)
                            reasoning += inline
                        if text or reasoning:
                            flowed = True
                            yield Chunk(text=text, reasoning=reasoning)
        except openai.OpenAIError as exc:
            raise self._failure(exc, flowed=flowed) from exc
        if splitter is not None:
            reasoning, text = splitter.flush()
            self._note_lone_close(splitter, model)
            if text or reasoning:
                yield Chunk(text=text, reasoning=reasoning)
        if usage is not None:
            yield Chunk(usage=usage)

    async def complete(self, messages: list[ChatMessage], *, model: str,
                       params: StreamParams) -> list[Chunk]:
        """The whole answer from one non-streaming request: its reasoning and text, then
        its usage."""
        if self.wire == "responses":
            return await responses.complete(self._client, messages, model=model,
                                            options=self._responses_options(params),
                                            failure=self._failure)
        try:
            completion = await self._client.chat.completions.create(
                model=model, messages=[_wire(m) for m in messages], stream=False,
                **self._options(params))
        except openai.OpenAIError as exc:
            raise self._failure(exc, flowed=False) from exc
        text = "".join(c.message.content or "" for c in completion.choices)
        reasoning = "".join(delta_reasoning(c.message.model_extra) for c in completion.choices)
        splitter = self._splitter(model)
        if splitter is not None:
            inline, text = splitter.feed(text)
            rest_reasoning, rest_text = splitter.flush()
            reasoning, text = reasoning + inline + rest_reasoning, text + rest_text
            self._note_lone_close(splitter, model)
        chunks = [Chunk(text=text, reasoning=reasoning)] if text or reasoning else []
        if completion.usage is not None:
            chunks.append(Chunk(usage=_usage(completion.usage)))
        return chunks

    async def aclose(self) -> None:
        await self._client.close()

    def _splitter(self, model: str) -> ThinkSplitter | None:
        if self.think_tags is None:
            return None
        return ThinkSplitter(self.think_tags,
                             starts_open=model_starts_open(self.think_open_models, model))

    def _note_lone_close(self, splitter: ThinkSplitter, model: str) -> None:
        if splitter.lone_close:
            log.warning("the model wrote a closing think tag without an opening one; its "
                        "reasoning was shown as answer text (name the model in "
                        "CHATCAST_THINK_OPEN_MODELS)", extra={"model": model})

    def _responses_options(self, params: StreamParams) -> dict[str, Any]:
        options: dict[str, Any] = {
            "temperature": omit if params.temperature is None else params.temperature,
            "max_output_tokens": omit if params.max_tokens is None else params.max_tokens,
        }
        reasoning: dict[str, str] = {}
        if self.reasoning_summary:
            reasoning["summary"] = self.reasoning_summary
        if self.reasoning_effort:
            reasoning["effort"] = self.reasoning_effort
        if reasoning:
            options["reasoning"] = reasoning
        if params.extra:
            options["extra_body"] = params.extra
        return options

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


# Where OpenAI-compatible servers put reasoning: `reasoning` (vLLM >= 0.10, Ollama's /v1,
# OpenRouter) or `reasoning_content` (DeepSeek, llama.cpp, LM Studio, older vLLM). Some send
# both with the same text, and OpenRouter repeats it in `reasoning_details`: the first
# non-empty one is the chunk's reasoning, the others are never added to it.
_REASONING_FIELDS = ("reasoning", "reasoning_content")


def delta_reasoning(extra: Mapping[str, Any] | None) -> str:
    """The reasoning of one chunk's delta (or one message), from the fields the SDK does not
    know (`model_extra`)."""
    if not extra:
        return ""
    for key in _REASONING_FIELDS:
        value = extra.get(key)
        if isinstance(value, str) and value:
            return value
    details = extra.get("reasoning_details")
    if isinstance(details, list):
        return "".join(_detail_text(d) for d in details)
    return ""


def _detail_text(detail: object) -> str:
    """Readable text of one OpenRouter `reasoning_details` entry; encrypted and unknown
    types have none."""
    if not isinstance(detail, dict):
        return ""
    kind = detail.get("type")
    value = detail.get("text") if kind == "reasoning.text" else \
        detail.get("summary") if kind == "reasoning.summary" else None
    return value if isinstance(value, str) else ""


def _usage(usage: CompletionUsage) -> Usage:
    details = usage.completion_tokens_details
    reasoning = details.reasoning_tokens if details is not None else None
    return Usage(usage.prompt_tokens, usage.completion_tokens, reasoning)
