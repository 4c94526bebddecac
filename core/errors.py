"""The ChatcastError hierarchy: every refusal carries a protocol code and `retryable`."""

from __future__ import annotations

from typing import Any

from chatcast.core.codes import CODES, Code


class ChatcastError(Exception):
    """A request refused with a protocol error code. Transports turn it into a frame or body."""

    code: Code = Code.INTERNAL

    def __init__(self, message: str, *, code: Code | None = None, **extra: Any) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.extra = extra

    @property
    def retryable(self) -> bool:
        return CODES[self.code].retryable

    @property
    def http_status(self) -> int:
        return CODES[self.code].http_status

    def body(self) -> dict[str, Any]:
        return {"code": str(self.code), "message": self.message, "retryable": self.retryable,
                **self.extra}


class BadRequest(ChatcastError):
    code = Code.BAD_REQUEST


class UnknownType(ChatcastError):
    code = Code.UNKNOWN_TYPE


class NotFound(ChatcastError):
    code = Code.NOT_FOUND

    def __init__(self, what: str = "chat") -> None:
        super().__init__(f"{what} not found")


class TooLarge(ChatcastError):
    code = Code.TOO_LARGE


class Busy(ChatcastError):
    code = Code.BUSY

    def __init__(self) -> None:
        super().__init__("this chat is already generating an answer; stop it or wait")


class RateLimited(ChatcastError):
    code = Code.RATE_LIMITED

    def __init__(self, retry_after: float) -> None:
        super().__init__("rate limited", retry_after=round(retry_after, 3))


class TooManyGenerations(ChatcastError):
    code = Code.TOO_MANY_GENERATIONS


class Unauthorized(ChatcastError):
    code = Code.UNAUTHORIZED


#: Seconds a client should wait before retrying a request refused for storage_unavailable.
STORAGE_RETRY_AFTER_S = 2


class StorageUnavailable(ChatcastError):
    """The database cannot be reached (down, restarting, connections lost). Nothing was
    half-written: the request may be repeated as is (`retry_after` seconds later); a
    generation already under way is not affected (its end is saved when the database is
    back)."""

    code = Code.STORAGE_UNAVAILABLE

    def __init__(self, message: str = "the database is unavailable; try again shortly") -> None:
        super().__init__(message, retry_after=STORAGE_RETRY_AFTER_S)
