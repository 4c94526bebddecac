"""OpenAI's Responses API (`POST /v1/responses`), the wire on which OpenAI's own reasoning
models show their reasoning: a summary streamed as `response.reasoning_summary_text.delta`
events, asked for with `reasoning={"summary": "auto"}` (Chat Completions gives none).
Used by `OpenAIProvider` when CHATCAST_OPENAI_WIRE=responses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import openai
from openai import AsyncOpenAI
from openai.types.responses import Response, ResponseInputParam, ResponseUsage

from chatcast.providers.base import ChatMessage, Chunk, ProviderFailure, Usage
from chatcast.providers.upstream import stream_error_failure

Failure = Callable[..., ProviderFailure]  # (exc, *, flowed) -> the chatcast error
# Raw reasoning text (open-weight models served behind a Responses API, e.g. gpt-oss on
# vLLM) and OpenAI's summaries: both are the answer's reasoning.
_REASONING_DELTAS = ("response.reasoning_summary_text.delta", "response.reasoning_text.delta")


async def stream(client: AsyncOpenAI, messages: list[ChatMessage], *, model: str,
                 options: dict[str, Any], failure: Failure,
                 label: str = "OpenAI") -> AsyncIterator[Chunk]:
    flowed = False
    usage: Usage | None = None
    part: tuple[str, int] | None = None  # (item, summary index) of the last reasoning
    try:
        events = await client.responses.create(model=model, input=_input(messages),
                                               stream=True, **options)
        async with events:  # leaving the block in any way closes the response
            async for event in events:
                kind = event.type
                if kind == "response.output_text.delta":
                    if event.delta:
                        flowed = True
                        yield Chunk(text=event.delta)
                elif kind in _REASONING_DELTAS:
                    if not event.delta:
                        continue
                    index = getattr(event, "summary_index", getattr(event, "content_index", 0))
                    here = (event.item_id, index)
                    # Summary parts are paragraphs of their own.
                    gap = "\n\n" if part is not None and here != part else ""
                    part = here
                    flowed = True
                    yield Chunk(reasoning=gap + event.delta)
                elif kind in ("response.completed", "response.incomplete"):
                    usage = _usage(event.response.usage) or usage
                elif kind == "response.failed":
                    error = event.response.error
                    raise stream_error_failure(label, flowed=flowed,
                                               code=error.code if error else None)
                elif kind == "error":
                    raise stream_error_failure(label, flowed=flowed, code=event.code)
    except openai.OpenAIError as exc:
        raise failure(exc, flowed=flowed) from exc
    if usage is not None:
        yield Chunk(usage=usage)


async def complete(client: AsyncOpenAI, messages: list[ChatMessage], *, model: str,
                   options: dict[str, Any], failure: Failure) -> list[Chunk]:
    try:
        response = await client.responses.create(model=model, input=_input(messages),
                                                 stream=False, **options)
    except openai.OpenAIError as exc:
        raise failure(exc, flowed=False) from exc
    text, reasoning = response.output_text, _summary(response)
    chunks = [Chunk(text=text, reasoning=reasoning)] if text or reasoning else []
    usage = _usage(response.usage)
    if usage is not None:
        chunks.append(Chunk(usage=usage))
    return chunks


def warm_up() -> None:
    """Build the SDK's Responses event types now. It does so lazily, on the first event it
    parses (measured: ~2 s of CPU, mostly at the first `response.completed`), which would
    stall the first answer of a process mid-stream. Best effort: it uses an SDK internal."""
    global _warmed
    if _warmed:
        return
    _warmed = True
    try:
        from openai._models import construct_type
        from openai.types.responses import ResponseStreamEvent
    except ImportError:
        return
    for event in ({"type": "response.output_text.delta", "sequence_number": 0, "delta": ""},
                  {"type": "response.completed", "sequence_number": 1, "response": {
                      "id": "", "object": "response", "created_at": 0, "model": "",
                      "status": "completed", "output": [{
                          "type": "message", "id": "", "role": "assistant",
                          "status": "completed", "content": [
                              {"type": "output_text", "text": "", "annotations": []}]}],
                      "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
                                "input_tokens_details": {"cached_tokens": 0},
                                "output_tokens_details": {"reasoning_tokens": 0}}}}):
        construct_type(type_=ResponseStreamEvent, value=event)


_warmed = False


def _input(messages: list[ChatMessage]) -> ResponseInputParam:
    return [{"role": m.role, "content": m.content} for m in messages]


def _summary(response: Response) -> str:
    return "\n\n".join(s.text for item in response.output if item.type == "reasoning"
                       for s in item.summary if s.text)


def _usage(usage: ResponseUsage | None) -> Usage | None:
    if usage is None:
        return None
    details = usage.output_tokens_details
    return Usage(usage.input_tokens, usage.output_tokens,
                 details.reasoning_tokens if details is not None else None)
