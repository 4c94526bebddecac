"""Both response caches behave alike: what the key covers, the TTL, the bound on entries (the
least recently used go first in memory, the oldest in Redis), and a Redis that cannot be
reached is a miss, never an error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from chatcast.providers import ChatMessage, StreamParams
from chatcast.server.cache import (
    CachedAnswer,
    MemoryCache,
    RedisCache,
    ResponseCache,
    cache_key,
    replay,
)
from tests.helpers.redis_server import RedisServer

HISTORY = [ChatMessage("system", "Be brief."), ChatMessage("user", "hi")]


def key(**changes: Any) -> str:
    args: dict[str, Any] = {"scope": "alice", "provider": "openai", "model": "m",
                            "messages": HISTORY, "system_prompt": "Be brief.",
                            "params": StreamParams(temperature=0)}
    args.update(changes)
    return cache_key(**args)


def test_the_key_covers_every_part_of_the_request() -> None:
    base = key()
    assert key() == base
    variants = [key(scope="bob"), key(provider="gemini"), key(model="m2"),
                key(system_prompt=None), key(params=StreamParams(temperature=0.5)),
                key(params=StreamParams(temperature=0, max_tokens=10)),
                key(messages=[*HISTORY, ChatMessage("assistant", "")]),
                key(messages=[HISTORY[0], ChatMessage("user", "hi ")]),
                key(messages=[ChatMessage("user", "hi")])]
    assert len({base, *variants}) == len(variants) + 1


@pytest.fixture(params=["memory", "redis"])
async def make(request: pytest.FixtureRequest, key_prefix: str
               ) -> AsyncIterator[Callable[[float, int], ResponseCache]]:
    clients: list[Redis] = []

    def build(ttl_s: float, max_entries: int) -> ResponseCache:
        if request.param == "memory":
            return MemoryCache(ttl_s, max_entries)
        client = Redis.from_url(request.getfixturevalue("redis_url"))
        clients.append(client)
        return RedisCache(client, ttl_s, max_entries, prefix=key_prefix)

    yield build
    for client in clients:
        await client.aclose()


def answer(text: str) -> CachedAnswer:
    return CachedAnswer(text, "openai", "m", {"input_tokens": 3, "output_tokens": 2}, 1.0)


async def test_get_put_bound_and_ttl(make: Callable[[float, int], ResponseCache]) -> None:
    cache = make(60, 2)
    assert await cache.get("a") is None
    await cache.put("a", answer("A"))
    assert await cache.get("a") == answer("A")
    await cache.put("b", answer("B"))
    await cache.put("c", answer("C"))  # over the bound: the first one goes
    assert await cache.get("a") is None
    assert await cache.get("b") == answer("B") and await cache.get("c") == answer("C")

    short = make(0.2, 10)
    await short.put("x", answer("X"))
    assert await short.get("x") == answer("X")
    await asyncio.sleep(0.3)  # a TTL is a duration: nothing to await but time
    assert await short.get("x") is None


async def test_an_unreachable_redis_is_a_miss(
        redis_server: Callable[[], RedisServer]) -> None:
    server = redis_server()
    client = Redis.from_url(server.url, socket_connect_timeout=1)
    cache = RedisCache(client, 60, 10)
    await cache.put("k", answer("K"))
    assert await cache.get("k") == answer("K")
    server.stop()
    try:
        await cache.put("k2", answer("lost"))  # logged, not raised
        assert await cache.get("k") is None
    finally:
        await client.aclose()


async def test_replay_at_once_and_paced() -> None:
    text = "word " * 2000 + "end"
    at_once = [c async for c in replay(answer(text), 0)]
    assert "".join(c.text for c in at_once) == text
    assert max(len(c.text) for c in at_once) <= 4096 and at_once[-1].usage is not None
    paced = [c async for c in replay(answer("one two  three\nfour"), 10_000)]
    assert [c.text for c in paced if c.text] == ["one", " two", "  three", "\nfour"]
    assert paced[-1].usage is not None and paced[-1].usage.output_tokens == 2


async def test_reasoning_is_kept_and_replayed_before_the_text(
        make: Callable[[float, int], ResponseCache]) -> None:
    cache = make(60, 10)
    thought = CachedAnswer("42.", "openai", "m", {"input_tokens": 3, "output_tokens": 9,
                                                  "reasoning_tokens": 7}, 1.0,
                           reasoning="Six times seven …")
    await cache.put("t", thought)
    got = await cache.get("t")
    assert got == thought
    for pace in (0, 10_000):
        chunks = [c async for c in replay(thought, pace)]
        parts = [("reasoning", c.reasoning) if c.reasoning else ("text", c.text)
                 for c in chunks if c.output]
        assert "".join(p for kind, p in parts if kind == "reasoning") == "Six times seven …"
        assert "".join(p for kind, p in parts if kind == "text") == "42."
        kinds = [kind for kind, _ in parts]
        assert kinds == sorted(kinds)  # every reasoning piece before the first text
        assert not any(c.reasoning and c.text for c in chunks)
        usage = chunks[-1].usage
        assert usage is not None and (usage.output_tokens, usage.reasoning_tokens) == (9, 7)
