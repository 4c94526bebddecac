"""Google Gemini through `google-genai` (the successor of the deprecated
`google-generativeai`). The SDK's HTTP transport is pinned to our own `httpx.AsyncClient`:
left to itself the SDK switches to aiohttp whenever aiohttp is importable, which changes its
exceptions and timeouts and adds hidden retries on connection errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextvars import ContextVar
from typing import Any

import httpx
from google import genai
from google.genai import errors, types

from chatcast.providers.base import (
    ChatMessage,
    Chunk,
    ProviderError,
    ProviderFailure,
    ProviderStreamBroken,
    StreamParams,
    Usage,
)
from chatcast.providers.upstream import (
    parse_duration,
    parse_retry_after,
    status_failure,
    stream_error_failure,
    transport_failure,
)

DEFAULT_MODEL = "gemini-2.5-flash"
LABEL = "Gemini"
# Finish reasons meaning the model refused or was stopped, rather than done.
_REFUSALS = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
             "IMAGE_SAFETY"}


# The HTTP responses opened by the stream running in the current task. The SDK's nested
# generators do not close their response when the outer one is closed at a `yield` (only
# cancellation inside them does), so `GeminiProvider.stream` closes them itself.
_opened: ContextVar[list[httpx.Response] | None] = ContextVar("gemini_opened", default=None)


async def _track(response: httpx.Response) -> None:
    opened = _opened.get()
    if opened is not None:
        opened.append(response)


class PinnedTimeouts(httpx.AsyncBaseTransport):
    """An httpx transport that applies its own timeouts to every request. The SDK sends each
    request with `timeout=None` unless `HttpOptions.timeout` is set, and setting that also
    sends `X-Server-Timeout`, a deadline for the whole (possibly long) answer."""

    def __init__(self, timeout: httpx.Timeout,
                 inner: httpx.AsyncBaseTransport | None = None) -> None:
        self._timeout = timeout.as_dict()
        self._inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.extensions["timeout"] = self._timeout
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class GeminiProvider:
    """One `genai.Client` and one httpx connection pool per process."""

    name = "gemini"
    label = LABEL

    def __init__(self, *, api_key: str, base_url: str | None = None,
                 default_model: str = DEFAULT_MODEL, connect_timeout_s: float = 10.0,
                 idle_timeout_s: float = 60.0, include_thoughts: bool = True,
                 thinking_budget: int | None = None) -> None:
        self.default_model = default_model
        self.include_thoughts = include_thoughts
        self.thinking_budget = thinking_budget
        timeout = httpx.Timeout(connect=connect_timeout_s, read=idle_timeout_s + 5,
                                write=connect_timeout_s, pool=connect_timeout_s)
        self._http = httpx.AsyncClient(transport=PinnedTimeouts(timeout),
                                       event_hooks={"response": [_track]})
        self._client = genai.Client(api_key=api_key, http_options=types.HttpOptions(
            base_url=base_url,
            httpx_async_client=self._http,  # also what keeps the SDK off aiohttp
            retry_options=None,  # no SDK retries: chatcast retries in one place
        ))

    async def stream(self, messages: list[ChatMessage], *, model: str,
                     params: StreamParams) -> AsyncIterator[Chunk]:
        flowed = False
        usage: Usage | None = None
        # Set in the task consuming this generator (with `guarded`, its own pump task).
        opened: list[httpx.Response] = []
        _opened.set(opened)
        try:
            responses = await self._client.aio.models.generate_content_stream(
                model=model, contents=_contents(messages), config=self._config(messages, params))
            async for response in responses:
                usage = _usage(response) or usage
                for thought, text in _parts(response):
                    flowed = True
                    yield Chunk(reasoning=text) if thought else Chunk(text=text)
                _check_refusal(response, flowed=flowed)
        except (errors.APIError, errors.UnknownApiResponseError, httpx.HTTPError) as exc:
            raise _failure(exc, flowed=flowed) from exc
        finally:
            for http_response in opened:
                await http_response.aclose()
        if usage is not None:
            yield Chunk(usage=usage)

    async def complete(self, messages: list[ChatMessage], *, model: str,
                       params: StreamParams) -> list[Chunk]:
        """The whole answer from one non-streaming request: its thoughts and text, then its
        usage."""
        try:
            response = await self._client.aio.models.generate_content(
                model=model, contents=_contents(messages), config=self._config(messages, params))
        except (errors.APIError, errors.UnknownApiResponseError, httpx.HTTPError) as exc:
            raise _failure(exc, flowed=False) from exc
        _check_refusal(response, flowed=False)
        parts = _parts(response)
        text = "".join(t for thought, t in parts if not thought)
        reasoning = "".join(t for thought, t in parts if thought)
        chunks = [Chunk(text=text, reasoning=reasoning)] if text or reasoning else []
        usage = _usage(response)
        if usage is not None:
            chunks.append(Chunk(usage=usage))
        return chunks

    async def aclose(self) -> None:
        await self._client.aio.aclose()
        self._client.close()
        await self._http.aclose()

    def _config(self, messages: list[ChatMessage],
                params: StreamParams) -> types.GenerateContentConfig:
        system = "\n\n".join(m.content for m in messages if m.role == "system")
        thinking = None
        if self.include_thoughts or self.thinking_budget is not None:
            thinking = types.ThinkingConfig(include_thoughts=self.include_thoughts or None,
                                            thinking_budget=self.thinking_budget)
        return types.GenerateContentConfig(
            system_instruction=system or None,
            temperature=params.temperature,
            max_output_tokens=params.max_tokens,
            thinking_config=thinking,
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        )


def _contents(messages: list[ChatMessage]) -> list[types.Content]:
    return [types.Content(role="model" if m.role == "assistant" else "user",
                          parts=[types.Part(text=m.content)])
            for m in messages if m.role != "system"]


def _parts(response: types.GenerateContentResponse) -> list[tuple[bool, str]]:
    """(is a thought, text) of each text part of a response. Thought summaries (parts with
    `thought: true`) are the answer's reasoning, never its text."""
    if not response.candidates:
        return []
    content = response.candidates[0].content
    if content is None or not content.parts:
        return []
    return [(bool(p.thought), p.text) for p in content.parts if p.text]


def _usage(response: types.GenerateContentResponse) -> Usage | None:
    meta = response.usage_metadata
    if meta is None:
        return None
    output = (meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0)
    return Usage(meta.prompt_token_count or 0, output, meta.thoughts_token_count)


def _check_refusal(response: types.GenerateContentResponse, *, flowed: bool) -> None:
    reason: str | None = None
    if response.prompt_feedback is not None and response.prompt_feedback.block_reason:
        reason = str(response.prompt_feedback.block_reason.value)
    elif response.candidates and response.candidates[0].finish_reason is not None:
        finish = str(response.candidates[0].finish_reason.value)
        reason = finish if finish in _REFUSALS else None
    if reason is None:
        return
    if flowed:
        raise ProviderStreamBroken(f"{LABEL} stopped the answer ({reason})")
    raise ProviderError(f"{LABEL} refused the request ({reason})")


def _failure(exc: Exception, *, flowed: bool) -> ProviderFailure:
    if isinstance(exc, errors.APIError) and isinstance(exc.code, int) and exc.code >= 400:
        headers = getattr(exc.response, "headers", None)
        retry_after = parse_retry_after(headers if isinstance(headers, Mapping) else None)
        if retry_after is None:
            retry_after = _retry_delay(exc.details)
        return status_failure(LABEL, exc.code, flowed=flowed, code=exc.status,
                              retry_after=retry_after)
    if isinstance(exc, httpx.HTTPError):
        return transport_failure(LABEL, flowed=flowed,
                                 timeout=isinstance(exc, httpx.TimeoutException))
    return stream_error_failure(LABEL, flowed=flowed)


def _retry_delay(body: Any) -> float | None:
    """`retryDelay` of the google.rpc.RetryInfo in an error body, which Gemini sends with
    429s instead of a Retry-After header."""
    error = body.get("error", body) if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            return parse_duration(detail.get("retryDelay"))
    return None
