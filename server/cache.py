"""The response cache: answers to identical requests, kept for a while.

A request is identical when the provider and model asked, the whole conversation sent (the
system prompt included), the system prompt setting and the parameters are; the key is the
sha256 of all of them together with the user (unless the cache is shared across users).
Only completed answers of the provider that was asked are stored (not fallbacks, not
cached answers), with their reasoning. Entries live `ttl_s` and at most `max_entries` are
kept (the oldest go).

`MemoryCache` serves one process; `RedisCache` shares the entries through Redis (keys
`{prefix}{cache}:<sha256>` and one sorted index, in one hash slot). A cache that cannot be
reached is a miss, never a failed answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from chatcast.providers import ChatMessage, Chunk, StreamParams, Usage

log = logging.getLogger("chatcast.cache")

#: Longer answers are not stored (a bound on one entry, on top of `max_entries`).
MAX_ANSWER_CHARS = 200_000
#: A cached answer sent at once goes out in pieces of at most this many characters.
PIECE_CHARS = 4096
_TOKEN = re.compile(r"\s*\S+|\s+")


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    text: str
    provider: str
    model: str
    usage: dict[str, Any] | None = None
    stored_at: float = 0.0
    reasoning: str = ""  # the model's visible thinking before `text`, replayed before it


def cache_key(*, scope: str, provider: str, model: str, messages: list[ChatMessage],
              system_prompt: str | None, params: StreamParams) -> str:
    """The key of one request; `scope` is the user id, or "*" for a cache shared by all."""
    material = {
        "v": 1, "scope": scope, "provider": provider, "model": model,
        "system_prompt": system_prompt,
        "messages": [[m.role, m.content] for m in messages],
        "params": asdict(params),
    }
    return hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()


class ResponseCache(ABC):
    def __init__(self, ttl_s: float, max_entries: int) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries

    @abstractmethod
    async def get(self, key: str) -> CachedAnswer | None:
        """The answer stored under `key`, if it is there and fresh."""

    @abstractmethod
    async def put(self, key: str, answer: CachedAnswer) -> None:
        """Store `answer` under `key` for `ttl_s`, dropping the oldest beyond the bound."""


class MemoryCache(ResponseCache):
    """Least recently used first out, in this process."""

    def __init__(self, ttl_s: float, max_entries: int) -> None:
        super().__init__(ttl_s, max_entries)
        self._entries: OrderedDict[str, tuple[float, CachedAnswer]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> CachedAnswer | None:
        found = self._entries.get(key)
        if found is None:
            return None
        expires, answer = found
        if time.monotonic() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return answer

    async def put(self, key: str, answer: CachedAnswer) -> None:
        self._entries[key] = (time.monotonic() + self.ttl_s, answer)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


# KEYS: index, entry. ARGV: value, ttl ms, max entries. The index scores entries by expiry
# (Redis's clock); expired and surplus (oldest first) entries are removed with it.
_PUT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[1], now + ttl, KEYS[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local surplus = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if surplus > 0 then
  local old = redis.call('ZPOPMIN', KEYS[1], surplus)
  for i = 1, #old, 2 do redis.call('DEL', old[i]) end
end
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
"""


class RedisCache(ResponseCache):
    """Entries shared by every process on one Redis (the bus's connection pool)."""

    def __init__(self, client: Any, ttl_s: float, max_entries: int,
                 prefix: str = "cc:") -> None:
        super().__init__(ttl_s, max_entries)
        self.client = client
        # One hash tag for every key: the script touches the index and entries together,
        # which a Redis Cluster allows only within one slot.
        self._prefix = f"{prefix}{{cache}}:"
        self._index = f"{self._prefix}index"
        self._put = client.register_script(_PUT)

    async def get(self, key: str) -> CachedAnswer | None:
        try:
            raw = await self.client.get(self._prefix + key)
        except Exception as exc:
            log.warning("response cache unreachable: a miss", extra={"error": str(exc)})
            return None
        if raw is None:
            return None
        try:
            data = orjson.loads(raw)
            return CachedAnswer(str(data["text"]), str(data["provider"]), str(data["model"]),
                                data.get("usage"), float(data.get("stored_at", 0.0)),
                                str(data.get("reasoning") or ""))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None

    async def put(self, key: str, answer: CachedAnswer) -> None:
        value = orjson.dumps(asdict(answer))
        try:
            await self._put(keys=[self._index, self._prefix + key],
                            args=[value, max(1, int(self.ttl_s * 1000)), self.max_entries])
        except Exception as exc:
            log.warning("response cache unreachable: answer not stored",
                        extra={"error": str(exc)})


async def replay(answer: CachedAnswer, tokens_per_s: float) -> AsyncIterator[Chunk]:
    """The chunks of a cached answer, its reasoning (if any) first and then its text: at once
    (`tokens_per_s` 0) or paced like a model, one word at a time; its usage last, as a
    provider gives it."""
    for reasoning, content in ((True, answer.reasoning), (False, answer.text)):
        pieces: list[str] = _TOKEN.findall(content) if tokens_per_s > 0 else \
            [content[i:i + PIECE_CHARS] for i in range(0, len(content), PIECE_CHARS)]
        for piece in pieces:
            yield Chunk(reasoning=piece) if reasoning else Chunk(text=piece)
            if tokens_per_s > 0:
                await asyncio.sleep(1 / tokens_per_s)
    if answer.usage:
        reasoning_tokens = answer.usage.get("reasoning_tokens")
        yield Chunk(usage=Usage(int(answer.usage.get("input_tokens", 0)),
                                int(answer.usage.get("output_tokens", 0)),
                                None if reasoning_tokens is None else int(reasoning_tokens)))


def make_cache(settings: Any, bus: Any) -> ResponseCache | None:
    """The cache the settings ask for: None when neither use is enabled; shared through
    Redis when the bus is Redis, else in this process."""
    if not (settings.cache or settings.cache_last_fallback):
        return None
    if bus.__class__.__name__ == "RedisBus":
        return RedisCache(bus.client, settings.cache_ttl_s, settings.cache_max_entries,
                          prefix=getattr(bus, "prefix", "cc:"))
    return MemoryCache(settings.cache_ttl_s, settings.cache_max_entries)
