"""Database outages against real server processes: a private PostgreSQL 15 (its own
`initdb`, crashed with `pg_ctl stop -m immediate` and started again), for the memory bus
(one process) and for Redis (two processes, one tab on each).

- An outage that spans the end of an answer (45 s, far past the old 21 s retry budget; and
  5 s): both tabs get `saving` while the database is down, then one `done{completed}` with
  usage once it is back; SQL equals what the tabs assembled; nothing is `interrupted`.
- An outage at the start: the send is refused with `storage_unavailable`, nothing is
  written; a send once the database is back works.
- PostgreSQL restarted twice during one answer.
- SIGTERM during the outage: handed over through Redis (the other process saves it), or,
  with the memory bus, the loss logged and the answer interrupted after a restart.
- SIGKILL of the owner while its answer waits in `saving` (Redis): the other process saves
  it from the end the owner recorded, `completed` with usage, and its tab gets one `done`.
- During the outage, `send` (WS and REST), history, the chat list, SSE, long-poll and the
  AI SDK history answer the documented error: JSON `storage_unavailable`, retryable, with
  `Retry-After: 2` (never a plain-text 500); `/readyz` says `store: false`.

The outage is placed by synchronisation (after the first delta, before the end), not by
sleeps; only its length is a wait, and that wait is the point of the test. These tests run
in their own xdist group (`outages`), one after the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from chatcast.store.db import make_engine
from tests.conftest import ServerFactory
from tests.helpers.clients import WSClient
from tests.helpers.private_pg import PrivatePgUnavailable, PrivatePostgres
from tests.helpers.redis_server import RedisServer
from tests.helpers.server import ServerProcess
from tests.integration.conftest import User, make_user, sql_message

pytestmark = [pytest.mark.xdist_group("outages"), pytest.mark.timeout(300)]

TOKENS_PER_S = 20


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    try:
        pg = PrivatePostgres()
    except PrivatePgUnavailable as exc:
        pytest.skip(f"no private PostgreSQL here: {exc}")
    try:
        pg.init().start()
        yield pg
    finally:
        pg.destroy()


@dataclass
class Deployment:
    pg: PrivatePostgres
    a: ServerProcess
    b: ServerProcess  # the process of the second tab (memory bus: the same one)
    redis: RedisServer | None

    @property
    def servers(self) -> list[ServerProcess]:
        return [self.a] if self.a is self.b else [self.a, self.b]


async def deploy(server: ServerFactory, pg: PrivatePostgres,
                 redis_server: Callable[[], RedisServer], bus: str) -> Deployment:
    env = {"DATABASE_URL": pg.create_database("chatcast"),
           "CHATCAST_DEMO_TOKENS_PER_S": str(TOKENS_PER_S),
           "CHATCAST_LEASE_TTL_S": "3", "CHATCAST_CHECKPOINT_INTERVAL_S": "0.5",
           "CHATCAST_SHUTDOWN_GRACE_S": "1"}
    redis = None
    if bus == "redis":
        redis = redis_server()
        env["REDIS_URL"] = redis.url
    a = await server(env=env)
    b = await server(env=env) if redis is not None else a  # one at a time: both migrate
    return Deployment(pg, a, b, redis)


@pytest.fixture(params=["memory", "redis"])
def bus(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.asynccontextmanager
async def two_tabs(d: Deployment, user: User,
                   chat: str) -> AsyncIterator[tuple[WSClient, WSClient]]:
    """Two tabs of `user` on `chat`, one on each process (one process: both on it)."""
    async with await WSClient.connect(d.a.ws_url, cookie=user.cookie) as tab1, \
            await WSClient.connect(d.b.ws_url, cookie=user.cookie) as tab2:
        await tab1.subscribe(chat)
        await tab2.subscribe(chat)
        yield tab1, tab2


def echo(words: int) -> str:
    """A prompt the demo model answers with its own `words` words: an answer of `words`
    tokens, `words / TOKENS_PER_S` seconds long."""
    return "echo: " + " ".join(f"w{n}" for n in range(words))


def of(gen: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: bool(e.get("gen") == gen)


def past(gen: str, seq: int) -> Callable[[dict[str, Any]], bool]:
    return lambda e: bool(e.get("gen") == gen and int(e["seq"]) > seq)


async def sql_rows(srv: ServerProcess, query: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = make_engine(srv.database_url)
    try:
        async with engine.connect() as conn:
            return [tuple(row) for row in await conn.execute(text(query), params)]
    finally:
        await engine.dispose()


def assert_storage_error(body: dict[str, Any]) -> None:
    assert body["code"] == "storage_unavailable", body
    assert body["retryable"] is True and body["retry_after"] == 2


async def assert_refused_while_down(d: Deployment, user: User, chat: str,
                                    tab: WSClient) -> None:
    """Every way in answers the documented error while the database is down."""
    reply = await tab.request({"type": "send", "chat": chat, "content": "in the outage"},
                              timeout=30)
    assert reply["type"] == "error"
    assert_storage_error(reply)
    http = user.http
    for method, path, body in (
            ("POST", f"/api/chats/{chat}/messages", {"content": "in the outage"}),
            ("GET", f"/api/chats/{chat}/messages", None),
            ("GET", "/api/chats", None),
            ("GET", f"/api/chats/{chat}", None),
            ("GET", f"/api/chats/{chat}/poll", None),
            ("GET", f"/api/chats/{chat}/events", None),
            ("GET", f"/api/ai/chat/{chat}/messages", None),
            ("GET", f"/api/ai/chat/{chat}/stream", None)):
        r = await http.request(method, path, json=body)
        assert r.status_code == 503, (method, path, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/json"), (path, r.text)
        assert r.headers["retry-after"] == "2", path
        assert_storage_error(r.json()["error"])
    for srv in d.servers:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as probe:
            ready = await probe.get("/readyz")
        assert ready.status_code == 503 and ready.json()["store"] is False


def assert_logs_clean(d: Deployment, outages: int) -> None:
    """No answer given up or interrupted; each outage a process saw logged once when it
    started and once when it ended, without a traceback per tick."""
    for srv in d.servers:
        logs = srv.logs()
        assert "final content could not be written" not in logs
        assert "its owner is gone" not in logs
        began = logs.count('"msg":"database unavailable",')
        assert began <= outages and began == logs.count('"msg":"database back",'), \
            srv.log_tail(80)
        assert logs.count("Traceback") == 0, srv.log_tail(120)
    assert '"msg":"database unavailable",' in d.a.logs()


async def outage_over_the_end(d: Deployment, user: User, outage_s: float,
                              words: int) -> float:
    """Crash PostgreSQL after the first delta, keep it down `outage_s`, and check both
    tabs and SQL. Returns the seconds from the database back to the tabs' `done`."""
    chat = await user.new_chat()
    async with two_tabs(d, user, chat) as (tab1, tab2):
        ack = await tab1.request({"type": "send", "chat": chat, "content": echo(words)})
        gen = ack["gen"]
        await tab2.wait_for("delta", of(gen), timeout=30)
        await d.pg.acrash()
        crashed = time.monotonic()
        # The answer ends while the database is down: both tabs are told, without a done.
        saving = [await tab.wait_for("saving", of(gen), timeout=60) for tab in (tab1, tab2)]
        for tab, event in zip((tab1, tab2), saving, strict=True):
            assert event["status"] == "completed" and event["usage"]
            assembled = tab.assembler(chat).text(gen)
            assert event["length"] == len(assembled), "saving came before the last delta"
        assert not [e for e in tab1.received + tab2.received
                    if e.get("type") == "done" and e.get("gen") == gen]
        await assert_refused_while_down(d, user, chat, tab1)
        await asyncio.sleep(max(0.0, outage_s - (time.monotonic() - crashed)))
        await d.pg.astart()
        back = time.monotonic()
        done1, done2 = await asyncio.gather(tab1.wait_done(gen, timeout=60),
                                            tab2.wait_done(gen, timeout=60))
        took = time.monotonic() - back
        await asyncio.sleep(0.3)  # a second done would have arrived by now
        for tab in (tab1, tab2):
            tab.drain()
            dones = [e for e in tab.received if e.get("type") == "done" and e.get("gen") == gen]
            assert len(dones) == 1
    assert done1["status"] == done2["status"] == "completed"
    assert done1["usage"] and done1["usage"] == saving[0]["usage"]
    text_ = tab1.assembler(chat).check_done(done1)
    assert tab2.assembler(chat).check_done(done2) == text_
    assert await sql_message(d.a, ack["assistant"]) == (text_, "complete")
    statuses = await sql_rows(d.a, "SELECT status FROM generation")
    assert statuses == [("completed",)], statuses
    usage = await sql_rows(d.a, "SELECT usage FROM message WHERE id = :id",
                           id=ack["assistant"])
    assert usage[0][0], "usage not saved"
    assert_logs_clean(d, outages=1)
    return took


@pytest.mark.parametrize("outage_s", [45.0, 5.0], ids=["45s", "5s"])
async def test_outage_spanning_the_end_of_an_answer(
        server: ServerFactory, private_pg: PrivatePostgres,
        redis_server: Callable[[], RedisServer], bus: str, outage_s: float) -> None:
    # The answer must still be streaming when the crash is done (3 s left for the short
    # outage, 8 s for the long one: a slow `pg_ctl stop` on a loaded machine fits in).
    words = 160 if outage_s > 20 else 60
    d = await deploy(server, private_pg, redis_server, bus)
    async for user in make_user(d.a):
        took = await outage_over_the_end(d, user, outage_s, words)
        print(f"{bus} bus, {outage_s:.0f} s outage: done {took:.2f} s after the database "
              "was back")


async def test_outage_at_the_start_refuses_the_send_and_writes_nothing(
        server: ServerFactory, private_pg: PrivatePostgres,
        redis_server: Callable[[], RedisServer], bus: str) -> None:
    d = await deploy(server, private_pg, redis_server, bus)
    async for user in make_user(d.a):
        chat = await user.new_chat()
        async with two_tabs(d, user, chat) as (tab1, tab2):
            await d.pg.acrash()
            await assert_refused_while_down(d, user, chat, tab1)
            await d.pg.astart()
            assert await sql_rows(d.a, "SELECT count(*) FROM message") == [(0,)]
            assert await sql_rows(d.a, "SELECT count(*) FROM generation") == [(0,)]
            # Back: the same send works (the pool's dead connections are replaced).
            ack = await _send_when_back(tab1, chat)
            done = await tab2.wait_done(ack["gen"], timeout=60)
            assert done["status"] == "completed"
            text_ = tab2.assembler(chat).check_done(done)
        assert await sql_message(d.a, ack["assistant"]) == (text_, "complete")
        assert await sql_rows(d.a, "SELECT count(*) FROM message") == [(2,)]
        assert_logs_clean(d, outages=1)


async def _send_when_back(tab: WSClient, chat: str) -> dict[str, Any]:
    """The first send after the outage (a client retrying after `retry_after`)."""
    for _ in range(20):
        reply = await tab.request({"type": "send", "chat": chat, "content": echo(20)},
                                  timeout=30)
        if reply["type"] == "ack":
            return reply
        assert_storage_error(reply)
        await asyncio.sleep(reply["retry_after"])
    raise AssertionError("send still refused after the database came back")


async def test_postgres_restarted_twice_during_one_answer(
        server: ServerFactory, private_pg: PrivatePostgres,
        redis_server: Callable[[], RedisServer], bus: str) -> None:
    d = await deploy(server, private_pg, redis_server, bus)
    async for user in make_user(d.a):
        chat = await user.new_chat()
        async with two_tabs(d, user, chat) as (tab1, tab2):
            # 15 s of answer: two crashes and restarts fit in, also when PostgreSQL is slow
            # to start on a loaded machine.
            ack = await tab1.request({"type": "send", "chat": chat, "content": echo(300)})
            gen = ack["gen"]
            seen = 0
            for _restart in range(2):
                # Some more text first, so each restart falls inside the answer.
                for _ in range(5):
                    event = await tab2.wait_for("delta", of(gen), timeout=30)
                    seen = int(event["seq"])
                await d.pg.acrash()
                await tab2.wait_for("delta", past(gen, seen + 10), timeout=30)
                await d.pg.astart()
            done1, done2 = await asyncio.gather(tab1.wait_done(gen, timeout=60),
                                                tab2.wait_done(gen, timeout=60))
        assert done1["status"] == done2["status"] == "completed"
        text_ = tab1.assembler(chat).check_done(done1)
        assert tab2.assembler(chat).check_done(done2) == text_
        assert await sql_message(d.a, ack["assistant"]) == (text_, "complete")
        assert await sql_rows(d.a, "SELECT status FROM generation") == [("completed",)]
        assert private_pg.starts == 3
        assert_logs_clean(d, outages=2)


async def test_shutdown_during_an_outage_hands_over_or_says_what_is_lost(
        server: ServerFactory, private_pg: PrivatePostgres,
        redis_server: Callable[[], RedisServer], bus: str) -> None:
    """SIGTERM while an answer waits for the database. Redis: the owner leaves the answer's
    `done` in the log and the other process saves it once the database is back (completed,
    with usage, the text the tabs had). Memory bus: the owner's log says what is lost, and
    after a restart the answer is interrupted with its checkpointed text."""
    d = await deploy(server, private_pg, redis_server, bus)
    async for user in make_user(d.a):
        chat = await user.new_chat()
        async with two_tabs(d, user, chat) as (tab1, tab2):
            ack = await tab1.request({"type": "send", "chat": chat, "content": echo(60)})
            gen = ack["gen"]
            await tab2.wait_for("delta", of(gen), timeout=30)
            await d.pg.acrash()
            await tab2.wait_for("saving", of(gen), timeout=60)
            assembled = tab2.assembler(chat).text(gen)
            d.a.terminate()
            await d.a.wait_async(timeout=60)
            if bus == "redis":
                assert "answer handed over unsaved at shutdown" in d.a.logs()
                # The other process's tab gets the handed-over done from the log.
                done = await tab2.wait_done(gen, timeout=30)
                assert done["status"] == "completed" and done["usage"]
        await d.pg.astart()
        if bus == "redis":
            await _wait_status(d.b, gen, "completed")
            assert await sql_message(d.b, ack["assistant"]) == (assembled, "complete")
            usage = await sql_rows(d.b, "SELECT usage FROM message WHERE id = :id",
                                   id=ack["assistant"])
            assert usage[0][0] == done["usage"]
            assert "generation saved from the end its owner handed over" in d.b.logs()
            return
        assert "answer lost at shutdown" in d.a.logs()
        await d.a.restart()
        await _wait_status(d.a, gen, "interrupted")
        text_, status = await sql_message(d.a, ack["assistant"])
        assert status == "interrupted" and assembled.startswith(text_)


async def test_owner_killed_while_saving_is_saved_completed_by_the_other_process(
        server: ServerFactory, private_pg: PrivatePostgres,
        redis_server: Callable[[], RedisServer]) -> None:
    """SIGKILL (no shutdown, no hand-over) of the process whose answer waits in `saving`
    for a crashed PostgreSQL. Once the database is back, the other process's orphan sweep
    saves the answer from the end the owner recorded in Redis when saving began: completed,
    with usage, the text the tabs assembled; its tab gets exactly one `done`."""
    d = await deploy(server, private_pg, redis_server, "redis")
    async for user in make_user(d.a):
        chat = await user.new_chat()
        async with two_tabs(d, user, chat) as (tab1, tab2):
            ack = await tab1.request({"type": "send", "chat": chat, "content": echo(60)})
            gen = ack["gen"]
            await tab2.wait_for("delta", of(gen), timeout=30)
            await d.pg.acrash()
            saving = [await tab.wait_for("saving", of(gen), timeout=60) for tab in (tab1, tab2)]
            assembled = tab2.assembler(chat).text(gen)
            assert saving[1]["length"] == len(assembled) and saving[1]["usage"]
            d.a.kill()  # SIGKILL: its lease lapses within L/2 (1.5 s)
            await d.a.wait_async(timeout=30)
            await asyncio.sleep(5)  # the database stays down past the lease's end
            assert not [e for e in tab2.received
                        if e.get("type") == "done" and e.get("gen") == gen]
            await d.pg.astart()
            back = time.monotonic()
            done = await tab2.wait_done(gen, timeout=60)
            took = time.monotonic() - back
            await asyncio.sleep(0.5)  # a second done would have arrived by now
            tab2.drain()
            dones = [e for e in tab2.received if e.get("type") == "done" and e.get("gen") == gen]
            assert len(dones) == 1, dones
        assert done["status"] == "completed" and done["usage"] == saving[1]["usage"]
        assert tab2.assembler(chat).check_done(done) == assembled
        assert await sql_message(d.b, ack["assistant"]) == (assembled, "complete")
        assert await sql_rows(d.b, "SELECT status FROM generation") == [("completed",)]
        usage = await sql_rows(d.b, "SELECT usage FROM message WHERE id = :id",
                               id=ack["assistant"])
        assert usage[0][0] == done["usage"]
        logs = d.b.logs()
        assert "generation saved from the end its owner recorded before it died" in logs
        assert "its owner is gone" not in logs
        assert logs.count("Traceback") == 0, d.b.log_tail(120)
        print(f"owner killed while saving: done {took:.2f} s after the database was back")


async def _wait_status(srv: ServerProcess, gen: str, status: str,
                       timeout: float = 60.0) -> None:
    """Until SQL shows `gen` in `status` (another process writes it: polled)."""
    query = "SELECT status FROM generation WHERE id = :id"
    async with asyncio.timeout(timeout):
        while await sql_rows(srv, query, id=gen) != [(status,)]:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
