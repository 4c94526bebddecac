"""The Limits role: what must be counted or remembered across every process of a deployment.

- `take(key, per_s, burst)`: a token bucket per key (messages per minute per user). Returns 0
  when the call may go ahead, else the seconds until it may (`retry_after`).
- `issue_ticket` / `redeem_ticket`: short-lived, single-use tickets naming a user (for
  EventSource and WebSocket clients that cannot send an `Authorization` header). Only a
  hash of the ticket is stored.
- `lead(name, owner, ttl_s)`: a lock that its holder keeps by calling again before it
  expires, so a periodic job runs on one process of the deployment at a time.

`MemoryLimits` serves one process; `RedisLimits` shares everything through Redis.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

TICKET_PREFIX = "tk_"


def new_ticket() -> str:
    return TICKET_PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """sha256 of a high-entropy secret: what is stored instead of the secret itself."""
    return hashlib.sha256(secret.encode()).hexdigest()


class Limits(ABC):
    @abstractmethod
    async def take(self, key: str, per_s: float, burst: float) -> float:
        """Take one token from the bucket `key` (refilled at `per_s`, holding at most
        `burst`); 0 if there was one, else the seconds until there will be."""

    @abstractmethod
    async def issue_ticket(self, user_id: str, ttl_s: float) -> str:
        """A new ticket for `user_id`, valid once within `ttl_s`."""

    @abstractmethod
    async def redeem_ticket(self, ticket: str) -> str | None:
        """The ticket's user, once; None if unknown, used or expired."""

    @abstractmethod
    async def lead(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take or keep the lock `name` for `owner` for `ttl_s`; False if another holds it."""


@dataclass(slots=True)
class TokenBucket:
    """An in-process token bucket (e.g. frames per second of one socket)."""

    per_s: float
    burst: float
    tokens: float = -1.0
    at: float = field(default_factory=time.monotonic)

    def take(self, now: float | None = None) -> float:
        """0 if a token was taken, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        if self.tokens < 0:
            self.tokens = self.burst
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.per_s)
        self.at = now
        if self.tokens >= 1 - 1e-9:  # float drift must not refuse a whole token
            self.tokens = max(self.tokens - 1, 0.0)
            return 0.0
        return (1 - self.tokens) / self.per_s if self.per_s > 0 else float("inf")
