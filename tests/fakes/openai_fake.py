"""A fake OpenAI API, streaming and not, speaking the real wire formats:

- Chat Completions (`POST /v1/chat/completions`): SSE `data: {chat.completion.chunk}` lines,
  a usage chunk with `choices: []` when `stream_options.include_usage` is set, then
  `data: [DONE]`. Reasoning comes in the dialect of the server it stands for
  (`Reply.dialect`, see `reasoning_delta`).
- Responses (`POST /v1/responses`): SSE `event: <type>` / `data: {event}` pairs, reasoning
  summaries as `response.reasoning_summary_text.delta`, usage in `response.completed`."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes import FakeServer, RecordedRequest, Reply, ScriptedStream

# What a careless error path would leak; tests assert it never reaches a user.
LEAKY_SECRET = "sk-fake-0123456789abcdef"

_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", "invalid_value", "Invalid value for 'messages'."),
    401: ("invalid_request_error", "invalid_api_key",
          f"Incorrect API key provided: {LEAKY_SECRET}."),
    403: ("invalid_request_error", "unsupported_country_region_territory",
          "Country, region, or territory not supported."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
}


def app(server: FakeServer) -> Starlette:
    def chat_stream(body: dict[str, Any], recorded: RecordedRequest, reply: Reply,
                    model: str) -> Response:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return ScriptedStream(server, recorded, stream_events(reply, model, include_usage),
                              reply.end, sse({"error": {
                                  "message": f"Internal error (key {LEAKY_SECRET})",
                                  "type": "server_error", "param": None, "code": None}}))

    def responses_stream(body: dict[str, Any], recorded: RecordedRequest, reply: Reply,
                         model: str) -> Response:
        error = {"type": "error", "code": "server_error",
                 "message": f"Internal error (key {LEAKY_SECRET})", "param": None,
                 "sequence_number": 999}
        return ScriptedStream(server, recorded, response_events(reply, model), reply.end,
                              _named(error))

    return Starlette(routes=[
        Route("/v1/chat/completions", _endpoint(server, completion, chat_stream),
              methods=["POST"]),
        Route("/v1/responses", _endpoint(
            server, lambda reply, model: _response(reply, model, "completed", output=True),
            responses_stream), methods=["POST"])])


def _endpoint(server: FakeServer, whole: Callable[[Reply, str], dict[str, Any]],
              streamed: Callable[[dict[str, Any], RecordedRequest, Reply, str], Response],
              ) -> Callable[[Request], Awaitable[Response]]:
    """What both APIs do alike: record the request, answer a scripted error status as the
    API's error, and otherwise answer in one body (`whole`) or as the API's stream
    (`streamed`), as the request's `stream` asks."""
    async def endpoint(request: Request) -> Response:
        body = await request.json()
        streaming = bool(body.get("stream"))
        recorded = server.record(request, body, streaming=streaming)
        reply = server.next_reply()
        if reply.status != 200:
            recorded.end("complete")
            return error_response(reply)
        model = str(body.get("model", "gpt-fake"))
        if not streaming:
            recorded.end("complete")
            return JSONResponse(whole(reply, model))
        return streamed(body, recorded, reply, model)
    return endpoint


def sse(data: Any) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def _usage(reply: Reply) -> dict[str, Any]:
    output = len(reply.chunks) + len(reply.reasoning)
    usage: dict[str, Any] = {"prompt_tokens": reply.input_tokens, "completion_tokens": output,
                             "total_tokens": reply.input_tokens + output}
    if reply.reasoning:
        usage["completion_tokens_details"] = {"reasoning_tokens": len(reply.reasoning)}
    return usage


def reasoning_delta(dialect: str, text: str) -> dict[str, Any]:
    """One chunk of reasoning as each kind of server sends it:
    reasoning — `delta.reasoning` (vLLM >= 0.10, Ollama /v1);
    reasoning_content — `delta.reasoning_content` (DeepSeek, llama.cpp, LM Studio);
    both — the two fields mirrored, same text (vLLM in transition);
    openrouter — `reasoning` repeated in `reasoning_details[]`, with `content: ""`."""
    if dialect == "reasoning":
        return {"role": "assistant", "content": None, "reasoning": text}
    if dialect == "reasoning_content":
        return {"role": "assistant", "content": None, "reasoning_content": text}
    if dialect == "both":
        return {"content": None, "reasoning": text, "reasoning_content": text}
    if dialect == "openrouter":
        return {"role": "assistant", "content": "", "reasoning": text, "reasoning_details": [
            {"type": "reasoning.text", "text": text, "format": "unknown", "index": 0}]}
    raise ValueError(f"unknown dialect {dialect!r}")


def stream_events(reply: Reply, model: str, include_usage: bool) -> list[tuple[float, bytes]]:
    events = [(0.0, sse(_chunk(model, {"role": "assistant", "content": ""})))]
    if reply.raw:
        events += [(reply.delay_s, sse(_chunk(model, delta))) for delta in reply.raw]
    else:
        events += [(reply.delay_s, sse(_chunk(model, reasoning_delta(reply.dialect, r))))
                   for r in reply.reasoning]
        events += [(reply.delay_s, sse(_chunk(model, {"content": text})))
                   for text in reply.chunks]
    if reply.end != "done":
        return events
    events.append((0.0, sse(_chunk(model, {}, "stop"))))
    if include_usage:
        usage_chunk = {**_chunk(model, {}), "choices": [], "usage": _usage(reply)}
        events.append((0.0, sse(usage_chunk)))
    events.append((0.0, sse("[DONE]")))
    return events


def completion(reply: Reply, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": "".join(reply.chunks)}
    if reply.reasoning:
        message["reasoning_content"] = "".join(reply.reasoning)
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": message}],
            "usage": _usage(reply)}


# -- Responses API ----------------------------------------------------------------------

def _named(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def _response(reply: Reply, model: str, status: str, *, output: bool) -> dict[str, Any]:
    items: list[dict[str, Any]] = []
    if output and reply.reasoning:
        items.append({"type": "reasoning", "id": "rs_fake", "summary": [
            {"type": "summary_text", "text": "".join(reply.reasoning)}]})
    if output:
        items.append({"type": "message", "id": "msg_fake", "role": "assistant",
                      "status": "completed", "content": [
                          {"type": "output_text", "text": "".join(reply.chunks),
                           "annotations": []}]})
    body: dict[str, Any] = {
        "id": "resp_fake", "object": "response", "created_at": int(time.time()),
        "model": model, "status": status, "output": items, "parallel_tool_calls": True,
        "tool_choice": "auto", "tools": [], "error": None, "incomplete_details": None,
        "usage": None}
    if status == "completed":
        output_tokens = len(reply.chunks) + len(reply.reasoning)
        body["usage"] = {"input_tokens": reply.input_tokens,
                         "input_tokens_details": {"cached_tokens": 0},
                         "output_tokens": output_tokens,
                         "output_tokens_details": {"reasoning_tokens": len(reply.reasoning)},
                         "total_tokens": reply.input_tokens + output_tokens}
    return body


def response_events(reply: Reply, model: str) -> list[tuple[float, bytes]]:
    """The event stream of one response: created, the reasoning summary (one part per
    blank-line paragraph of `reply.reasoning`), the output text, completed."""
    seq = iter(range(10_000))

    def event(kind: str, **fields: Any) -> bytes:
        return _named({"type": kind, "sequence_number": next(seq), **fields})

    out = [(0.0, event("response.created",
                       response=_response(reply, model, "in_progress", output=False)))]
    if reply.raw:
        out += [(reply.delay_s, event(raw["type"], **{k: v for k, v in raw.items()
                                                     if k != "type"}))
                for raw in reply.raw]
    else:
        if reply.reasoning:
            out.append((0.0, event("response.output_item.added", output_index=0, item={
                "type": "reasoning", "id": "rs_fake", "summary": []})))
        part = 0
        for piece in reply.reasoning:
            if piece == "\n\n":  # the fake's way of saying: next summary part
                part += 1
                continue
            out.append((reply.delay_s, event("response.reasoning_summary_text.delta",
                                             item_id="rs_fake", output_index=0,
                                             summary_index=part, delta=piece)))
        index = 1 if reply.reasoning else 0
        out.append((0.0, event("response.output_item.added", output_index=index, item={
            "type": "message", "id": "msg_fake", "role": "assistant", "status": "in_progress",
            "content": []})))
        out += [(reply.delay_s, event("response.output_text.delta", item_id="msg_fake",
                                      output_index=index, content_index=0, delta=text,
                                      logprobs=[]))
                for text in reply.chunks]
    if reply.end == "done":
        out.append((0.0, event("response.completed",
                               response=_response(reply, model, "completed", output=True))))
    return out


def error_response(reply: Reply) -> Response:
    kind, code, message = _ERRORS.get(reply.status, (
        "server_error", None, "The server had an error while processing your request."))
    headers = dict(reply.headers)
    if reply.retry_after is not None:
        headers["retry-after"] = f"{reply.retry_after:g}"
    return JSONResponse({"error": {"message": message, "type": kind, "param": None,
                                   "code": code}}, status_code=reply.status, headers=headers)
