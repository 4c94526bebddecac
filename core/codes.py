"""Close codes and error codes of protocol v1: pure data, mirrored by clients/js/protocol.js."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum


class Close(IntEnum):
    """WebSocket close codes the server uses."""

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL = 1011
    UNAUTHORIZED = 4001
    SLOW_CONSUMER = 4008
    RATE_LIMITED = 4029


#: Whether a client should reconnect (with backoff) after each close code.
CLOSE_RETRYABLE: dict[int, bool] = {
    Close.NORMAL: False,
    Close.GOING_AWAY: True,
    Close.POLICY: False,
    Close.TOO_BIG: False,
    Close.INTERNAL: True,
    Close.UNAUTHORIZED: False,
    Close.SLOW_CONSUMER: True,
    Close.RATE_LIMITED: True,
}


class Code(StrEnum):
    """Error codes carried by `error` frames and JSON error bodies."""

    BAD_REQUEST = "bad_request"
    UNKNOWN_TYPE = "unknown_type"
    NOT_FOUND = "not_found"
    UNAUTHORIZED = "unauthorized"
    RATE_LIMITED = "rate_limited"
    TOO_MANY_GENERATIONS = "too_many_generations"
    BUSY = "busy"
    TOO_LARGE = "too_large"
    PROVIDER_ERROR = "provider_error"
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class CodeInfo:
    http_status: int
    retryable: bool


CODES: dict[Code, CodeInfo] = {
    Code.BAD_REQUEST: CodeInfo(400, False),
    Code.UNKNOWN_TYPE: CodeInfo(400, False),
    Code.NOT_FOUND: CodeInfo(404, False),
    Code.UNAUTHORIZED: CodeInfo(401, False),
    Code.RATE_LIMITED: CodeInfo(429, True),
    Code.TOO_MANY_GENERATIONS: CodeInfo(429, True),
    Code.BUSY: CodeInfo(409, True),
    Code.TOO_LARGE: CodeInfo(413, False),
    Code.PROVIDER_ERROR: CodeInfo(502, False),
    Code.PROVIDER_UNAVAILABLE: CodeInfo(503, True),
    Code.STORAGE_UNAVAILABLE: CodeInfo(503, True),
    Code.INTERNAL: CodeInfo(500, True),
}
