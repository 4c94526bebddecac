"""JSON responses and error rendering for HTTP, shared by the routes and the middleware."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chatcast.core.codes import Code
from chatcast.core.errors import BadRequest, ChatcastError

M = TypeVar("M", bound=BaseModel)


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


def describe_fields(exc: ValidationError) -> str:
    """`kind: Input should be …; message: …` (the fields named, at most three)."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                     for err in exc.errors()[:3])


async def json_body(request: Request, model: type[M], *,
                    describe: Callable[[ValidationError], str] = describe_fields) -> M:
    """The request's JSON object body as `model` (an empty body is `{}`); anything else is a
    BadRequest that says what is wrong."""
    raw = await request.body()
    try:
        data = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(describe(exc)) from None
