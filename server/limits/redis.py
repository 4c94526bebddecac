"""RedisLimits: the Limits shared by every process on one Redis.

Token buckets are hashes `{prefix}rl:<key>` updated by a Lua script (one round trip, atomic,
Redis's clock so processes need not agree on time); tickets are keys `{prefix}ticket:<sha256>`
set with NX and a TTL and consumed with GETDEL; locks are keys set with NX PX and extended
by their holder. It uses the bus's command connection pool (no second pool per process).
When Redis cannot be reached, `take` lets the call through (the bus is down anyway and the
per-socket and SQL limits still hold) and the other calls raise BusUnavailable.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from chatcast.server.bus.base import BusUnavailable
from chatcast.server.bus.redis_internals import CLOSED_UNDER
from chatcast.server.limits.base import Limits, digest, new_ticket

log = logging.getLogger("chatcast.limits")

#: Redis cannot serve the call now (on a Redis Cluster also a connection redis-py closed
#: under the command during a failover: redis_internals.CLOSED_UNDER).
_DOWN = (RedisError, RedisClusterException, OSError, *CLOSED_UNDER)

# KEYS: bucket. ARGV: per second, burst. Returns milliseconds to wait (0 = token taken).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1]) / 1000
local burst = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) / rate) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate) + 1000)
return wait
"""

# KEYS: lock. ARGV: owner, ttl ms. Keep the lock if ours, else take it if free.
_LEAD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""


class RedisLimits(Limits):
    def __init__(self, client: Redis | RedisCluster, prefix: str = "cc:") -> None:
        self._redis = client
        self._prefix = prefix
        self._take = client.register_script(_TAKE)
        self._lead = client.register_script(_LEAD)

    async def take(self, key: str, per_s: float, burst: float) -> float:
        try:
            wait_ms = await self._take([f"{self._prefix}rl:{key}"], [per_s, burst])
        except _DOWN as exc:
            log.warning("rate limit not checked: Redis unavailable (%s)", exc.__class__.__name__)
            return 0.0
        return int(wait_ms) / 1000

    async def issue_ticket(self, user_id: str, ttl_s: float) -> str:
        ticket = new_ticket()
        ttl_ms = max(math.ceil(ttl_s * 1000), 1)
        await self._call(self._redis.set(self._ticket_key(ticket), user_id, nx=True, px=ttl_ms))
        return ticket

    async def redeem_ticket(self, ticket: str) -> str | None:
        user = await self._call(self._redis.getdel(self._ticket_key(ticket)))
        return user.decode() if isinstance(user, bytes) else user

    async def lead(self, name: str, owner: str, ttl_s: float) -> bool:
        ttl_ms = max(math.ceil(ttl_s * 1000), 1)
        return bool(await self._call(self._lead([f"{self._prefix}lock:{name}"],
                                                [owner, ttl_ms])))

    def _ticket_key(self, ticket: str) -> str:
        return f"{self._prefix}ticket:{digest(ticket)}"

    async def _call(self, command: Any) -> Any:
        try:
            return await command
        except _DOWN as exc:
            raise BusUnavailable(f"Redis unavailable: {exc.__class__.__name__}") from exc
