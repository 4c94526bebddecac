"""chatcast on a real Redis Cluster (3 masters + 3 replicas, node timeout 2 s): server
processes seeded with different nodes, chats on every shard; every tab exact on every
process, stop across processes, a listener-only process, an owner killed, a master killed
mid-stream (its replica takes over), a live chat's slot migrated; start-up refuses a
REDIS_URL that does not match CHATCAST_REDIS_CLUSTER."""

from __future__ import annotations

import asyncio
import shlex
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.crc import key_slot
from sqlalchemy import text

from chatcast.store.db import make_engine
from tests.conftest import DatabaseFactory, ServerFactory
from tests.helpers.clients import WSClient
from tests.helpers.redis_cluster import RedisCluster
from tests.helpers.redis_server import RedisServer
from tests.helpers.server import ServerProcess
from tests.integration.conftest import User, make_user, sql_message

LEASE_S = 3.0
# Six redis-server processes and two or three chatcast processes on a shared machine.
pytestmark = pytest.mark.timeout(300)


@dataclass
class Deployment:
    redis: RedisCluster
    a: ServerProcess
    b: ServerProcess
    env: dict[str, str]


def cluster_env(redis: RedisCluster, seed: int, database: str, tokens_per_s: int,
                lease_s: float = LEASE_S) -> dict[str, str]:
    return {"REDIS_URL": redis.url(redis.nodes[seed].port), "CHATCAST_REDIS_CLUSTER": "true",
            "DATABASE_URL": database, "CHATCAST_DEMO_TOKENS_PER_S": str(tokens_per_s),
            "CHATCAST_LEASE_TTL_S": str(lease_s), "CHATCAST_CHECKPOINT_INTERVAL_S": "0.5",
            "CHATCAST_MAX_GENERATIONS_PER_USER": "100", "CHATCAST_MESSAGES_PER_MINUTE": "1000"}


async def deploy(server: ServerFactory, redis: RedisCluster, database: str,
                 tokens_per_s: int = 25, lease_s: float = LEASE_S) -> Deployment:
    """Two processes on one database, seeded with different nodes (a master, a replica)."""
    env_a = cluster_env(redis, 0, database, tokens_per_s, lease_s)
    env_b = cluster_env(redis, 4, database, tokens_per_s, lease_s)
    a, b = await asyncio.gather(server(env=env_a), server(env=env_b))
    return Deployment(redis, a, b, env_a)


@pytest.fixture
async def cc(server: ServerFactory, redis_cluster: Callable[[], RedisCluster],
             make_database: DatabaseFactory) -> Deployment:
    return await deploy(server, redis_cluster(), make_database("postgresql"))


@pytest.fixture
async def alice(cc: Deployment) -> AsyncIterator[User]:
    async for user in make_user(cc.a):
        yield user


async def ws_on(srv: ServerProcess, user: User, **kw: object) -> WSClient:
    return await WSClient.connect(srv.ws_url, cookie=user.cookie, **kw)  # type: ignore[arg-type]


def of_gen(gen: str) -> Callable[[dict[str, Any]], bool]:
    return lambda event: bool(event.get("gen") == gen)


def shard_of(redis: RedisCluster, chat: str) -> int:
    """The master serving the chat's slot (its keys and channel carry the chat's tag)."""
    return redis.master_of_slot(key_slot(chat.encode()))


async def chats_on_every_shard(user: User, redis: RedisCluster, per_shard: int) -> list[str]:
    """New chats, `per_shard` on each master (chat ids hash where they will)."""
    wanted = {port: per_shard for port in redis.masters()}
    chats: list[str] = []
    while any(wanted.values()):
        chat = await user.new_chat()
        port = shard_of(redis, chat)
        if wanted.get(port):
            wanted[port] -= 1
            chats.append(chat)
    return chats


async def streaming_rows(srv: ServerProcess) -> int:
    engine = make_engine(srv.database_url)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(
                text("SELECT count(*) FROM message WHERE status = 'streaming'"))
            return int(result.scalar_one())
    finally:
        await engine.dispose()


async def send_all(tabs: list[WSClient], chats: list[str], content: str) -> dict[str, str]:
    """One send per chat, from the tabs in turn (so from different processes)."""
    gens = {}
    for i, chat in enumerate(chats):
        ack = await tabs[i % len(tabs)].request({"type": "send", "chat": chat,
                                                 "content": content})
        assert ack["type"] == "ack", ack
        gens[chat] = ack["gen"]
    return gens


async def check_all_exact(tabs: list[WSClient], gens: dict[str, str], srv: ServerProcess,
                          status: str = "completed", timeout: float = 90.0) -> dict[str, str]:
    """Every tab ends every generation with the same text, which SQL holds too."""
    texts = {}
    sql_status = "complete" if status == "completed" else status
    for chat, gen in gens.items():
        dones = await asyncio.gather(*(tab.wait_done(gen, timeout=timeout) for tab in tabs))
        assert {d["status"] for d in dones} == {status}, (chat, [d["status"] for d in dones])
        got = {tab.assembler(chat).check_done(done) for tab, done in zip(tabs, dones,
                                                                            strict=True)}
        assert len(got) == 1, f"tabs disagree on chat {chat}"
        texts[chat] = got.pop()
        assert await sql_message(srv, dones[0]["message"]["id"]) == (texts[chat], sql_status)
    return texts


async def test_thirty_chats_on_every_shard_exact_everywhere_and_stop_crosses(
        cc: Deployment, alice: User, server: ServerFactory) -> None:
    listener = await server(env=cluster_env(cc.redis, 2, cc.env["DATABASE_URL"], 25))
    chats = await chats_on_every_shard(alice, cc.redis, 10)
    assert {shard_of(cc.redis, c) for c in chats} == set(cc.redis.masters())
    async with await ws_on(cc.a, alice) as tab_a, await ws_on(cc.b, alice) as tab_b, \
            await ws_on(listener, alice) as tab_l:
        tabs = [tab_a, tab_b, tab_l]
        for chat in chats:
            for tab in tabs:
                await tab.subscribe(chat)
        gens = await send_all([tab_a, tab_b], chats, "spread me")
        await check_all_exact(tabs, gens, cc.a)

        # stop from the other process, one chat per shard: every tab ends `stopped`, exact
        stopping = await send_all([tab_a], chats[::10], "stop me")
        for gen in stopping.values():
            for _ in range(3):
                await tab_b.wait_for("delta", of_gen(gen))
            await tab_b.send({"type": "stop", "gen": gen})
        await check_all_exact(tabs, stopping, cc.a, status="stopped")
    assert "Traceback" not in listener.logs()


async def test_resume_with_a_cursor_on_the_other_process(cc: Deployment, alice: User) -> None:
    chat = (await chats_on_every_shard(alice, cc.redis, 1))[1]
    async with await ws_on(cc.a, alice) as owner:
        await owner.subscribe(chat)
        gen = (await owner.request({"type": "send", "chat": chat, "content": "hop"}))["gen"]
        for _ in range(8):
            await owner.wait_for("delta")
        cursor = owner.assembler(chat).cursor
        assert cursor is not None
        async with await ws_on(cc.b, alice, assemblers=owner.assemblers) as resumer:
            await resumer.subscribe(chat, cursor.as_dict())
            done = await resumer.wait_done(gen, timeout=60)
        text = resumer.assembler(chat).check_done(done)
    assert await sql_message(cc.a, done["message"]["id"]) == (text, "complete")


async def test_kill_9_owner_interrupts_on_every_shard_then_continue(cc: Deployment,
                                                                    alice: User) -> None:
    chats = await chats_on_every_shard(alice, cc.redis, 1)
    async with await ws_on(cc.b, alice) as watcher:
        for chat in chats:
            await watcher.subscribe(chat)
        async with await ws_on(cc.a, alice) as owner_tab:
            gens = await send_all([owner_tab], chats, "die")
        for gen in gens.values():
            for _ in range(5):
                await watcher.wait_for("delta", of_gen(gen))
        cc.a.kill(signal.SIGKILL)
        partials = {}
        for chat, gen in gens.items():  # the orphan sweep (one process holds the lock) ...
            done = await watcher.wait_done(gen, timeout=LEASE_S * 6)
            assert done["status"] == "interrupted"
            partials[chat] = watcher.assembler(chat).check_done(done)
            assert await sql_message(cc.b, done["message"]["id"]) == (partials[chat],
                                                                      "interrupted")
        chat = chats[-1]  # ... and continue works
        cont = await watcher.request({"type": "continue", "gen": gens[chat]})
        assert cont["type"] == "ack", cont
        final = await watcher.wait_done(cont["gen"], timeout=60)
        assert final["status"] == "completed"
        assert watcher.assembler(chat).check_done(final).startswith(partials[chat])
    assert await streaming_rows(cc.b) == 0


@pytest.fixture
async def cc_default_lease(server: ServerFactory, redis_cluster: Callable[[], RedisCluster],
                           make_database: DatabaseFactory) -> Deployment:
    """As `cc`, with the default lease (10 s): a failover (~4.5 s here) must not look like
    dead owners (leases on the dead shard may lapse meanwhile, TTL 5 s: their owners
    re-create them within 1.75 lease ticks of the replica serving, before the sweep may
    reap, two ticks after its first miss)."""
    return await deploy(server, redis_cluster(), make_database("postgresql"),
                        lease_s=10.0)


@pytest.fixture
async def alice_default_lease(cc_default_lease: Deployment) -> AsyncIterator[User]:
    async for user in make_user(cc_default_lease.a):
        yield user


async def test_kill_9_of_a_master_mid_stream(cc_default_lease: Deployment,
                                            alice_default_lease: User) -> None:
    """The master of one shard dies; its replica takes over; every stream of every shard
    ends exact on both processes, with no row left streaming."""
    cc, alice = cc_default_lease, alice_default_lease
    chats = await chats_on_every_shard(alice, cc.redis, 2)
    victim = shard_of(cc.redis, chats[0])
    replicas = cc.redis.replicas_of(victim)
    async with await ws_on(cc.a, alice) as tab_a, await ws_on(cc.b, alice) as tab_b:
        tabs = [tab_a, tab_b]
        for chat in chats:
            for tab in tabs:
                await tab.subscribe(chat)
        gens = await send_all(tabs, chats, "survive a failover")
        for gen in gens.values():
            for _ in range(4):
                await tab_b.wait_for("delta", of_gen(gen))
        cc.redis.kill(victim)
        promoted = await asyncio.to_thread(cc.redis.wait_promoted, victim, replicas)
        assert promoted in replicas
        await check_all_exact(tabs, gens, cc.a, timeout=120)
    assert await streaming_rows(cc.a) == 0
    for srv in (cc.a, cc.b):
        assert "Traceback" not in srv.logs(), srv.log_tail()
        assert "its owner is gone" not in srv.logs(), srv.log_tail()  # nothing reaped
        assert "2 subscriptions followed their slots" in srv.logs()  # only the two moved


async def test_a_live_chats_slot_migrated_streams_go_on_exactly(cc: Deployment,
                                                                alice: User) -> None:
    chats = await chats_on_every_shard(alice, cc.redis, 1)
    moving = chats[0]
    slot = key_slot(moving.encode())
    source = shard_of(cc.redis, moving)
    target = next(p for p in cc.redis.masters() if p != source)
    async with await ws_on(cc.a, alice) as tab_a, await ws_on(cc.b, alice) as tab_b:
        tabs = [tab_a, tab_b]
        for chat in chats:
            for tab in tabs:
                await tab.subscribe(chat)
        gens = await send_all(tabs, chats, "move me")
        for _ in range(5):
            await tab_b.wait_for("delta", of_gen(gens[moving]))
        await asyncio.to_thread(cc.redis.migrate_slot, slot, target)
        assert shard_of(cc.redis, moving) == target
        await check_all_exact(tabs, gens, cc.a)
    assert await streaming_rows(cc.a) == 0
    for srv in (cc.a, cc.b):  # the listeners were told, and followed the slot
        assert "1 subscriptions followed their slots" in srv.logs()


# -- start-up ------------------------------------------------------------------------------


async def refused(server: ServerFactory, env: dict[str, str]) -> str:
    srv = await server(env=env, start=False)
    srv.spawn()
    code = await srv.wait_async(timeout=30)
    assert code != 0
    return srv.logs()


async def test_start_up_refuses_a_redis_url_that_does_not_match_the_mode(
        server: ServerFactory, redis_cluster_session: RedisCluster,
        redis_server: Callable[[], RedisServer], tmp_path: Path) -> None:
    node = redis_cluster_session.url(redis_cluster_session.nodes[0].port)
    logs = await refused(server, {"REDIS_URL": node})
    assert "is a Redis Cluster node: set CHATCAST_REDIS_CLUSTER=true" in logs

    plain = redis_server()
    logs = await refused(server, {"REDIS_URL": plain.url, "CHATCAST_REDIS_CLUSTER": "true"})
    assert "is not a Redis Cluster node, but CHATCAST_REDIS_CLUSTER=true" in logs

    replica = redis_server()
    await asyncio.to_thread(redis_cluster_session.cli_run, replica.port, "replicaof",
                            "127.0.0.1", str(plain.port))
    logs = await refused(server, {"REDIS_URL": replica.url})
    assert "is a replica (read-only): point REDIS_URL at the master" in logs


def readme_cluster_line() -> str:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    return next(x for x in readme.splitlines() if x.startswith("export CHATCAST_REDIS_CLUSTER="))


async def test_the_readme_cluster_settings_with_two_seed_nodes(
        server: ServerFactory, redis_cluster_session: RedisCluster,
        make_database: DatabaseFactory) -> None:
    """The README's Redis Cluster line, as written but for its two example seeds (a master and
    a replica of this cluster here): chats on every shard stream exactly."""
    line = readme_cluster_line()
    env = dict(word.split("=", 1) for word in shlex.split(line.removeprefix("export ")))
    seeds = env["REDIS_URL"].split(",")
    assert len(seeds) == 2 and env["CHATCAST_REDIS_CLUSTER"] == "true", line
    cluster = redis_cluster_session
    env["REDIS_URL"] = ",".join(cluster.url(cluster.nodes[i].port) for i in (0, 4))
    srv = await server(env={**env, "DATABASE_URL": make_database("postgresql"),
                            "CHATCAST_DEMO_TOKENS_PER_S": "50"})
    async for user in make_user(srv):
        chats = await chats_on_every_shard(user, cluster, 1)
        async with await ws_on(srv, user) as tab:
            for chat in chats:
                await tab.subscribe(chat)
            await check_all_exact([tab], await send_all([tab], chats, "seeds"), srv)
