"""MemoryLimits: the Limits of a single process. Expired entries are swept as it is used."""

from __future__ import annotations

import time

from chatcast.server.limits.base import Limits, TokenBucket, digest, new_ticket

SWEEP_EVERY_S = 30.0


class MemoryLimits(Limits):
    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}
        self._tickets: dict[str, tuple[str, float]] = {}  # digest → (user, deadline)
        self._locks: dict[str, tuple[str, float]] = {}
        self._swept = time.monotonic()

    async def take(self, key: str, per_s: float, burst: float) -> float:
        self._maybe_sweep()
        bucket = self._buckets.get(key)
        if bucket is None or bucket.per_s != per_s or bucket.burst != burst:
            bucket = self._buckets[key] = TokenBucket(per_s, burst)
        return bucket.take()

    async def issue_ticket(self, user_id: str, ttl_s: float) -> str:
        self._maybe_sweep()
        ticket = new_ticket()
        self._tickets[digest(ticket)] = (user_id, time.monotonic() + ttl_s)
        return ticket

    async def redeem_ticket(self, ticket: str) -> str | None:
        entry = self._tickets.pop(digest(ticket), None)
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[0]

    async def lead(self, name: str, owner: str, ttl_s: float) -> bool:
        now = time.monotonic()
        holder = self._locks.get(name)
        if holder is not None and holder[0] != owner and holder[1] > now:
            return False
        self._locks[name] = (owner, now + ttl_s)
        return True

    def _maybe_sweep(self) -> None:
        """Forget expired tickets and full buckets (a full bucket equals a new one)."""
        now = time.monotonic()
        if now - self._swept < SWEEP_EVERY_S:
            return
        self._swept = now
        self._tickets = {k: v for k, v in self._tickets.items() if v[1] > now}
        self._buckets = {k: b for k, b in self._buckets.items()
                         if b.tokens + (now - b.at) * b.per_s < b.burst}
