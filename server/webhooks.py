"""The outgoing webhook: every answer that ends is POSTed, signed, to `CHATCAST_WEBHOOK_URL`,
for a back end in another process or language.

Delivery never blocks a stream: an ended answer is put on a bounded in-memory queue (when it
is full, the delivery is dropped and counted) and one background task sends the queue in
order. Each delivery is retried with backoff (`chatcast.core.retry`) on a connection error,
a timeout, a 408/429 or a 5xx, up to `CHATCAST_WEBHOOK_MAX_ATTEMPTS` tries; another 4xx is
a refusal and not retried. So delivery is at least once: a receiver may see one delivery
twice (a response lost after it was processed) and must deduplicate by the
`X-Chatcast-Delivery` header, the generation id. The queue lives in the process: on
shutdown it is drained for `CHATCAST_SHUTDOWN_GRACE_S` at most, and what is still queued
after that (or when the process dies) is lost, logged with the generation ids.

Every request carries:

- `X-Chatcast-Event`: `answer.completed`, `answer.stopped`, `answer.interrupted` or
  `answer.error`;
- `X-Chatcast-Delivery`: the generation id (the idempotency key);
- `X-Chatcast-Timestamp`: Unix seconds when the request was signed (each retry signs anew);
- `X-Chatcast-Signature`: `v1=` + hex HMAC-SHA256 with the secret over
  `"{timestamp}.{body}"` (body as sent, bytes).

`verify` checks the last two for a receiver (constant-time compare, timestamp within a
tolerance, against replay).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Mapping
from typing import Any

import httpx
import orjson

from chatcast.core.retry import Backoff, retry

log = logging.getLogger("chatcast.webhooks")

EVENT_HEADER = "X-Chatcast-Event"
DELIVERY_HEADER = "X-Chatcast-Delivery"
TIMESTAMP_HEADER = "X-Chatcast-Timestamp"
SIGNATURE_HEADER = "X-Chatcast-Signature"
SCHEME = "v1"
#: A receiver accepts a signature this many seconds old at most (and as far in the future).
DEFAULT_TOLERANCE_S = 300.0
QUEUE_MAX = 10_000


class WebhookVerificationError(ValueError):
    """A webhook request that is not chatcast's (bad or missing signature) or too old."""


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The `X-Chatcast-Signature` value for `body` signed at `timestamp`."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"{SCHEME}={mac.hexdigest()}"


def verify(body: bytes, headers: Mapping[str, str], secret: str, *,
           tolerance_s: float = DEFAULT_TOLERANCE_S, now: float | None = None) -> dict[str, Any]:
    """The event of a webhook request, after checking that chatcast signed exactly this
    `body` with `secret` (the raw request body, before any JSON parsing) less than
    `tolerance_s` ago. `headers` is the request's headers (any case-insensitive mapping, or
    a dict with the header names as sent). Raises WebhookVerificationError."""
    lookup = {k.lower(): v for k, v in headers.items()}
    stamp = lookup.get(TIMESTAMP_HEADER.lower())
    given = lookup.get(SIGNATURE_HEADER.lower())
    if not stamp or not given:
        raise WebhookVerificationError("missing signature or timestamp header")
    try:
        signed_at = float(stamp)
    except ValueError:
        raise WebhookVerificationError("malformed timestamp") from None
    if abs((time.time() if now is None else now) - signed_at) > tolerance_s:
        raise WebhookVerificationError("timestamp outside the tolerance (replayed or clock "
                                       "skew)")
    expected = signature(secret, stamp, body)
    # A header may carry several signatures (a secret being rotated): any one may match.
    if not any(hmac.compare_digest(expected, part.strip()) for part in given.split(",")):
        raise WebhookVerificationError("signature does not match")
    try:
        event: dict[str, Any] = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise WebhookVerificationError("body is not JSON") from None
    return event


class Refused(Exception):
    """The receiver answered with a status that is not worth retrying (a 4xx)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"webhook receiver answered {status}")
        self.status = status


class Retryable(Exception):
    """A failed attempt worth another: unreachable, a timeout, 408/429 or a 5xx."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Webhook:
    """The queue and its sender. `counted(outcome)` and `failed(reason)` are told of each
    delivery's outcome (`delivered`, `gave_up`, `refused`, `dropped`, `lost`) and each
    failed attempt (`unreachable`, `timeout`, `status_5xx`, …), for /metrics."""

    def __init__(self, url: str, secret: str, *, max_attempts: int, backoff: Backoff,
                 timeout_s: float, counted: Any = None, failed: Any = None,
                 queue_max: int = QUEUE_MAX) -> None:
        self.url = url
        self.secret = secret
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.timeout_s = timeout_s
        self._counted = counted or (lambda outcome: None)
        self._failed = failed or (lambda reason: None)
        self._queue: asyncio.Queue[tuple[str, str, bytes]] = asyncio.Queue(queue_max)
        self._http = httpx.AsyncClient(timeout=timeout_s, trust_env=False,
                                       headers={"User-Agent": "chatcast-webhook"})
        self._sender: asyncio.Task[None] | None = None
        self._current: str | None = None  # the delivery being sent

    def enqueue(self, event_type: str, delivery: str, payload: dict[str, Any]) -> None:
        """Queue one delivery; never waits."""
        body = orjson.dumps(payload)
        try:
            self._queue.put_nowait((event_type, delivery, body))
        except asyncio.QueueFull:
            self._counted("dropped")
            log.error("webhook queue full: delivery dropped", extra={"gen": delivery})
            return
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_all(),
                                                                  name="webhook-sender")

    async def _send_all(self) -> None:
        while not self._queue.empty():
            event_type, delivery, body = self._queue.get_nowait()
            self._current = delivery
            try:
                await self._deliver(event_type, delivery, body)
            finally:
                self._current = None
                self._queue.task_done()

    async def _deliver(self, event_type: str, delivery: str, body: bytes) -> None:
        async def attempt() -> None:
            stamp = str(int(time.time()))
            headers = {"Content-Type": "application/json", EVENT_HEADER: event_type,
                       DELIVERY_HEADER: delivery, TIMESTAMP_HEADER: stamp,
                       SIGNATURE_HEADER: signature(self.secret, stamp, body)}
            try:
                response = await self._http.post(self.url, content=body, headers=headers)
            except httpx.TimeoutException:
                raise Retryable("timeout") from None
            except httpx.TransportError:
                raise Retryable("unreachable") from None
            status = response.status_code
            if status < 300:
                return
            if status in (408, 429) or status >= 500:
                raise Retryable(f"status_{status // 100}xx")
            raise Refused(status)

        def retrying(number: int, exc: BaseException, pause: float) -> None:
            reason = exc.reason if isinstance(exc, Retryable) else type(exc).__name__
            self._failed(reason)
            log.warning("webhook delivery failed; retrying",
                        extra={"gen": delivery, "attempt": number, "reason": reason,
                               "pause_s": round(pause, 3)})

        try:
            await retry(attempt, retry_on=Retryable, backoff=self.backoff,
                        attempts=self.max_attempts, on_retry=retrying)
        except Retryable as exc:
            self._failed(exc.reason)
            self._counted("gave_up")
            log.error("webhook delivery given up", extra={"gen": delivery,
                                                          "attempts": self.max_attempts,
                                                          "reason": exc.reason})
        except Refused as exc:
            self._failed(f"status_{exc.status}")
            self._counted("refused")
            log.error("webhook delivery refused", extra={"gen": delivery,
                                                         "status": exc.status})
        else:
            self._counted("delivered")

    async def close(self, drain_s: float) -> None:
        """Send what is queued for `drain_s` at most, then give up on the rest (logged)."""
        current: str | None = None
        if self._sender is not None and not self._sender.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_s):
                    await asyncio.shield(self._sender)
            if not self._sender.done():
                current = self._current
                self._sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._sender
        lost = [current] if current is not None else []
        while not self._queue.empty():
            lost.append(self._queue.get_nowait()[1])
        if lost:
            for _ in lost:
                self._counted("lost")
            log.error("webhook deliveries lost at shutdown", extra={"generations": lost})
        await self._http.aclose()
