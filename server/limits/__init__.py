"""The Limits role: rate limits, single-use tickets and deployment-wide locks, in memory for
one process or in Redis for many (see base.py)."""

from chatcast.server.limits.base import Limits, TokenBucket

__all__ = ["Limits", "TokenBucket"]
