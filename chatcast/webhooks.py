"""Receiving chatcast's webhook (public API): check that a request is chatcast's, unchanged
and recent, and read its event.

    from chatcast.webhooks import WebhookVerificationError, verify

    body = await request.body()          # the raw bytes, before any JSON parsing
    try:
        event = verify(body, request.headers, secret=WEBHOOK_SECRET)
    except WebhookVerificationError:
        return Response(status_code=400)
    if already_seen(event["id"]):        # at least once: deduplicate by the generation id
        return Response(status_code=200)

The signature is `v1=` + hex HMAC-SHA256 with the secret over `"{timestamp}.{body}"`, in
`X-Chatcast-Signature`; the timestamp (Unix seconds) is `X-Chatcast-Timestamp`, and must be
within `tolerance_s` (default 300) of the receiver's clock, so a captured request cannot be
replayed later. A receiver in another language does the same three steps.
"""

from __future__ import annotations

from chatcast.server.webhooks import (
    DEFAULT_TOLERANCE_S,
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookVerificationError,
    signature,
    verify,
)

__all__ = ["DEFAULT_TOLERANCE_S", "DELIVERY_HEADER", "EVENT_HEADER", "SIGNATURE_HEADER",
           "TIMESTAMP_HEADER", "WebhookVerificationError", "signature", "verify"]
