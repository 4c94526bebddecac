"""Shared by the HTTP providers: which upstream failures are retryable, and messages that are
safe to show a user (a status and a short reason, never a key or an upstream body)."""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping

from chatcast.providers.base import (
    ProviderError,
    ProviderFailure,
    ProviderStreamBroken,
    ProviderUnavailable,
)

_REASONS = {
    400: "bad request",
    401: "authentication failed",
    403: "permission denied",
    404: "model or endpoint not found",
    408: "request timeout",
    409: "conflict",
    413: "request too large",
    422: "request not understood",
    429: "rate limited",
    500: "server error",
    502: "bad gateway",
    503: "service unavailable",
    504: "gateway timeout",
}

# Upstream error codes such as `context_length_exceeded` or `RESOURCE_EXHAUSTED` are useful
# and harmless; anything that does not look like such an identifier is dropped.
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


def is_retryable_status(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


def status_message(label: str, status: int, code: object = None) -> str:
    reason = _REASONS.get(status, "server error" if status >= 500 else "request refused")
    if isinstance(code, str) and _IDENTIFIER.fullmatch(code) and code.lower() != reason:
        reason = f"{reason}: {code}"
    return f"{label} returned {status} ({reason})"


def status_failure(label: str, status: int, *, flowed: bool, code: object = None,
                   retry_after: float | None = None) -> ProviderFailure:
    """The chatcast error for an HTTP error status from upstream."""
    message = status_message(label, status, code)
    if flowed:
        return ProviderStreamBroken(message, status=status)
    if is_retryable_status(status):
        return ProviderUnavailable(message, status=status, retry_after=retry_after)
    return ProviderError(message, status=status)


def transport_failure(label: str, *, flowed: bool, timeout: bool) -> ProviderFailure:
    """The chatcast error for a refused, dropped or timed-out connection."""
    if flowed:
        what = "timed out" if timeout else "dropped the connection"
        return ProviderStreamBroken(f"{label} {what} mid-answer")
    what = "timed out" if timeout else "could not be reached"
    return ProviderUnavailable(f"{label} {what}")


def stream_error_failure(label: str, *, flowed: bool, code: object = None) -> ProviderFailure:
    """The chatcast error for an error reported inside a stream that had begun with 200."""
    detail = f" ({code})" if isinstance(code, str) and _IDENTIFIER.fullmatch(code) else ""
    if flowed:
        return ProviderStreamBroken(f"{label} reported an error mid-answer{detail}")
    return ProviderUnavailable(f"{label} reported an error{detail}")


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    value = headers.get("retry-after")
    if value:
        parsed = email.utils.parsedate_tz(value)
        if parsed is not None:
            return max(0.0, email.utils.mktime_tz(parsed) - time.time())
    return None


def parse_duration(value: object) -> float | None:
    """A protobuf JSON duration such as "1.5s" (Google's RetryInfo.retryDelay) in seconds."""
    if isinstance(value, str) and value.endswith("s"):
        try:
            seconds = float(value[:-1])
        except ValueError:
            return None
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None
