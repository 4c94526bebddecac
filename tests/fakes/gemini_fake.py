"""A fake Gemini API (`POST /{version}/models/{model}:streamGenerateContent?alt=sse` and
`:generateContent`) speaking the real wire format: SSE `data: {GenerateContentResponse}`
events, thought summaries as parts with `"thought": true` (before the answer's parts), usage
in `usageMetadata` (`thoughtsTokenCount` for the thoughts), no `[DONE]` (the stream ends at
EOF), errors as `{"error": {code, message, status, details}}` with a RetryInfo detail on
429."""

from __future__ import annotations

import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes import FakeServer, Reply, ScriptedStream

LEAKY_SECRET = "AIza-fake-0123456789abcdef"

_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
           404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE",
           504: "DEADLINE_EXCEEDED"}


def app(server: FakeServer) -> Starlette:
    async def models(request: Request) -> Response:
        model, _, method = request.path_params["model_and_method"].partition(":")
        body = await request.json()
        streaming = method == "streamGenerateContent"
        recorded = server.record(request, body, streaming=streaming)
        reply = server.next_reply()
        if reply.status != 200:
            recorded.end("complete")
            return error_response(reply)
        if method not in ("streamGenerateContent", "generateContent"):
            recorded.end("complete")
            return error_response(Reply.error(404))
        if not streaming:
            recorded.end("complete")
            parts: list[dict[str, Any]] = [{"text": "".join(reply.chunks)}]
            if reply.reasoning:
                parts.insert(0, {"text": "".join(reply.reasoning), "thought": True})
            return JSONResponse(_response(model, parts, reply, final=True))
        return ScriptedStream(server, recorded, stream_events(reply, model), reply.end,
                              sse(_error_body(500)))

    return Starlette(routes=[Route("/{version}/models/{model_and_method}", models,
                                   methods=["POST"])])


def sse(data: Any) -> bytes:
    return f"data: {json.dumps(data)}\r\n\r\n".encode()


def _response(model: str, parts: list[dict[str, Any]], reply: Reply, *, final: bool,
              index: int = 0) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    usage: dict[str, Any] = {"promptTokenCount": reply.input_tokens,
                             "totalTokenCount": reply.input_tokens + index}
    if final:
        thoughts = len(reply.reasoning)
        candidate["finishReason"] = "STOP"
        usage["candidatesTokenCount"] = len(reply.chunks)
        usage["totalTokenCount"] = reply.input_tokens + len(reply.chunks) + thoughts
        if thoughts:
            usage["thoughtsTokenCount"] = thoughts
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model,
            "responseId": "fake-response"}


def stream_events(reply: Reply, model: str) -> list[tuple[float, bytes]]:
    """One response per chunk: thoughts first, then text (or `reply.raw`, one list of parts
    per response); the last carries the finish reason and the whole usage."""
    responses: list[list[dict[str, Any]]] = list(reply.raw) if reply.raw else (
        [[{"text": t, "thought": True}] for t in reply.reasoning]
        + [[{"text": t}] for t in reply.chunks])
    last = len(responses) - 1
    return [(reply.delay_s, sse(_response(model, parts, reply, index=k,
                                          final=k == last and reply.end == "done")))
            for k, parts in enumerate(responses)]


def _error_body(status: int, retry_after: float | None = None) -> dict[str, Any]:
    details: list[dict[str, Any]] = []
    if retry_after is not None:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": f"{retry_after:g}s"})
    message = (f"API key not valid: {LEAKY_SECRET}" if status in (400, 401)
               else "An internal error has occurred.")
    return {"error": {"code": status, "message": message,
                      "status": _STATUS.get(status, "UNKNOWN"), "details": details}}


def error_response(reply: Reply) -> Response:
    return JSONResponse(_error_body(reply.status, reply.retry_after), status_code=reply.status,
                        headers=dict(reply.headers))
