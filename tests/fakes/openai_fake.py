"""A fake OpenAI chat-completions API (`POST /v1/chat/completions`), streaming and not,
speaking the real wire format: SSE `data: {chat.completion.chunk}` lines, a usage chunk with
`choices: []` when `stream_options.include_usage` is set, then `data: [DONE]`."""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes import FakeServer, Reply, ScriptedStream

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
    async def chat_completions(request: Request) -> Response:
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
            return JSONResponse(completion(reply, model))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return ScriptedStream(server, recorded, stream_events(reply, model, include_usage),
                              reply.end, sse({"error": {
                                  "message": f"Internal error (key {LEAKY_SECRET})",
                                  "type": "server_error", "param": None, "code": None}}))

    return Starlette(routes=[Route("/v1/chat/completions", chat_completions, methods=["POST"])])


def sse(data: Any) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def _usage(reply: Reply) -> dict[str, int]:
    output = len(reply.chunks)
    return {"prompt_tokens": reply.input_tokens, "completion_tokens": output,
            "total_tokens": reply.input_tokens + output}


def stream_events(reply: Reply, model: str, include_usage: bool) -> list[tuple[float, bytes]]:
    events = [(0.0, sse(_chunk(model, {"role": "assistant", "content": ""})))]
    events += [(reply.delay_s, sse(_chunk(model, {"content": text}))) for text in reply.chunks]
    if reply.end != "done":
        return events
    events.append((0.0, sse(_chunk(model, {}, "stop"))))
    if include_usage:
        usage_chunk = {**_chunk(model, {}), "choices": [], "usage": _usage(reply)}
        events.append((0.0, sse(usage_chunk)))
    events.append((0.0, sse("[DONE]")))
    return events


def completion(reply: Reply, model: str) -> dict[str, Any]:
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": "".join(reply.chunks)}}],
            "usage": _usage(reply)}


def error_response(reply: Reply) -> Response:
    kind, code, message = _ERRORS.get(reply.status, (
        "server_error", None, "The server had an error while processing your request."))
    headers = dict(reply.headers)
    if reply.retry_after is not None:
        headers["retry-after"] = f"{reply.retry_after:g}"
    return JSONResponse({"error": {"message": message, "type": kind, "param": None,
                                   "code": code}}, status_code=reply.status, headers=headers)
