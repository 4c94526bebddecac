"""One Limits suite for both backends. For Redis, `peer` is a second RedisLimits on its own
connection (another process), so the same tests prove that buckets, tickets and the cleanup
lock are shared across processes; for memory the peer is the same object (one process)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from chatcast.server.limits import Limits, TokenBucket
from chatcast.server.limits.memory import MemoryLimits
from chatcast.server.limits.redis import RedisLimits


@dataclass
class Pair:
    limits: Limits
    peer: Limits
    redis_keys: list[bytes] | None = None


@pytest.fixture(params=["memory", "redis", "cluster"])
async def pair(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[Pair]:
    if request.param == "memory":
        mem = MemoryLimits()
        yield Pair(mem, mem)
        return
    if request.param == "cluster":  # two clients seeded with different nodes: keys of every
        # shard (each bucket, ticket and lock is one key; they hash all over the slots)
        nodes = request.getfixturevalue("redis_cluster_session").nodes
        c1 = RedisCluster(host="127.0.0.1", port=nodes[0].port)
        c2 = RedisCluster(host="127.0.0.1", port=nodes[1].port)
        try:  # as the cluster bus does before first use (lazy set-up races in redis-py)
            await asyncio.gather(c1.initialize(), c2.initialize())
            yield Pair(RedisLimits(c1, prefix=key_prefix), RedisLimits(c2, prefix=key_prefix))
        finally:
            await c1.aclose()
            await c2.aclose()
        return
    url: str = request.getfixturevalue("redis_url")
    a, b = Redis.from_url(url), Redis.from_url(url)
    try:
        yield Pair(RedisLimits(a, prefix=key_prefix), RedisLimits(b, prefix=key_prefix))
    finally:
        await a.aclose()
        await b.aclose()


async def test_bucket_allows_a_burst_then_says_when(pair: Pair) -> None:
    results = [await (pair.limits if i % 2 else pair.peer).take("u1", 1.0, 5)
               for i in range(6)]
    assert results[:5] == [0, 0, 0, 0, 0]
    assert 0.5 < results[5] <= 1.0  # one token per second: about a second to wait
    assert await pair.limits.take("u2", 1.0, 5) == 0  # buckets are per key


async def test_bucket_refills(pair: Pair) -> None:
    # 2 per second: slow enough that a loaded machine does not refill between the takes
    for _ in range(2):
        assert await pair.limits.take("r", 2.0, 2) == 0
    assert await pair.peer.take("r", 2.0, 2) > 0
    await asyncio.sleep(1.1)  # two tokens back
    assert await pair.peer.take("r", 2.0, 2) == 0


async def test_parallel_takes_never_exceed_the_burst(pair: Pair) -> None:
    results = await asyncio.gather(*((pair.limits if i % 2 else pair.peer).take("p", 0.01, 10)
                                     for i in range(60)))
    assert sum(1 for r in results if r == 0) == 10


async def test_tickets_are_single_use(pair: Pair) -> None:
    ticket = await pair.limits.issue_ticket("alice", 30)
    assert ticket.startswith("tk_") and len(ticket) > 40
    redeemed = await asyncio.gather(pair.limits.redeem_ticket(ticket),
                                    pair.peer.redeem_ticket(ticket))
    assert sorted(redeemed, key=str) == [None, "alice"]
    assert await pair.peer.redeem_ticket(ticket) is None
    assert await pair.limits.redeem_ticket("tk_forged") is None


async def test_tickets_expire(pair: Pair) -> None:
    ticket = await pair.limits.issue_ticket("bob", 0.2)
    await asyncio.sleep(0.35)
    assert await pair.peer.redeem_ticket(ticket) is None


async def test_ticket_is_stored_hashed(redis_url: str, key_prefix: str) -> None:
    client = Redis.from_url(redis_url)
    try:
        ticket = await RedisLimits(client, prefix=key_prefix).issue_ticket("carol", 30)
        keys = [k.decode() async for k in client.scan_iter(f"{key_prefix}*")]
        assert keys and not any(ticket in k or ticket[3:] in k for k in keys)
    finally:
        await client.aclose()


async def test_cleanup_lock_has_one_holder_who_keeps_it(pair: Pair) -> None:
    if pair.limits is pair.peer:
        assert await pair.limits.lead("job", "me", 0.3)
        assert not await pair.limits.lead("job", "other", 0.3)
        return
    assert await pair.limits.lead("job", "a", 0.3)
    assert not await pair.peer.lead("job", "b", 0.3)
    await asyncio.sleep(0.2)
    assert await pair.limits.lead("job", "a", 0.3)  # the holder extends it
    await asyncio.sleep(0.2)
    assert not await pair.peer.lead("job", "b", 0.3)
    await asyncio.sleep(0.35)  # the holder died: the lock expires and another takes it
    assert await pair.peer.lead("job", "b", 0.3)


def test_token_bucket_in_process() -> None:
    bucket = TokenBucket(10.0, 3, at=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0, 0, 0]
    assert bucket.take(100.0) == pytest.approx(0.1)
    assert bucket.take(100.1) == 0
