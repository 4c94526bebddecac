"""JSON responses and error rendering for HTTP, shared by the routes and the middleware."""

from __future__ import annotations

import math
from typing import Any

import orjson
from starlette.responses import JSONResponse, Response

from chatcast.core.codes import Code
from chatcast.core.errors import ChatcastError


class OrjsonResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(exc: ChatcastError) -> Response:
    """The JSON error body of a refusal, with its HTTP status (and Retry-After if any)."""
    response = OrjsonResponse({"error": exc.body()}, status_code=exc.http_status)
    retry_after = exc.extra.get("retry_after")
    if isinstance(retry_after, int | float):
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return response


def plain_error(code: Code, message: str, status: int) -> Response:
    """An error body for a refusal that is not a ChatcastError (a framework 404, CSRF)."""
    body = {"code": str(code), "message": message, "retryable": False}
    return OrjsonResponse({"error": body}, status_code=status)
