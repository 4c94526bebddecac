"""The outgoing webhook against a real receiving server process: signed deliveries that a
receiver verifies with `chatcast.webhooks.verify`, retried while the receiver is down until
it comes up, a receiver answering 500 retried and given up (counted in /metrics) while the
streams go on unaffected, an answer whose process was killed delivered by the process that
ends it; and `verify` refusing what it must."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from chatcast.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookVerificationError,
    signature,
    verify,
)
from tests.conftest import DatabaseFactory, ServerFactory
from tests.helpers.clients import WSClient
from tests.helpers.metrics import sample
from tests.helpers.redis_server import RedisServer
from tests.helpers.server import ServerProcess
from tests.helpers.webhook_receiver import Receiver
from tests.integration.conftest import User, make_user

SECRET = "whsec-test-0123456789"


def _signed(body: bytes, *, at: float | None = None,
            secret: str = SECRET) -> dict[str, str]:
    stamp = str(int(time.time() if at is None else at))
    return {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: signature(secret, stamp, body)}


def test_verify_accepts_a_signed_body_and_refuses_tampering_replay_and_strangers() -> None:
    body = orjson.dumps({"type": "answer.completed", "id": "g1"})
    assert verify(body, _signed(body), SECRET)["id"] == "g1"
    lower = {k.lower(): v for k, v in _signed(body).items()}
    assert verify(body, lower, SECRET)["type"] == "answer.completed"
    rotated = _signed(body)
    rotated[SIGNATURE_HEADER] = "v1=" + "0" * 64 + ", " + rotated[SIGNATURE_HEADER]
    assert verify(body, rotated, SECRET)["id"] == "g1"
    refused: list[tuple[bytes, dict[str, str]]] = [
        (body + b" ", _signed(body)),  # tampered body
        (body, _signed(body, at=time.time() - 3600)),  # replayed an hour later
        (body, _signed(body, secret="another")),  # not signed with our secret
        (body, {}),  # no headers
        (body, {**_signed(body), TIMESTAMP_HEADER: "yesterday"}),
    ]
    for payload, headers in refused:
        with pytest.raises(WebhookVerificationError):
            verify(payload, headers, SECRET)


def _env(receiver: Receiver, **extra: str) -> dict[str, str]:
    return {"CHATCAST_DEMO_TOKENS_PER_S": "200", "CHATCAST_DEMO_MAX_TOKENS": "30",
            "CHATCAST_WEBHOOK_URL": receiver.url, "CHATCAST_WEBHOOK_SECRET": SECRET,
            "CHATCAST_WEBHOOK_RETRY_BASE_S": "0.2", "CHATCAST_WEBHOOK_RETRY_MAX_S": "1",
            **extra}


async def _answer(user: User, content: str) -> dict[str, Any]:
    """Send `content` over a WebSocket and wait for its `done`."""
    chat = await user.new_chat()
    async with await user.ws() as tab:
        await tab.subscribe(chat)
        ack = await tab.request({"type": "send", "chat": chat, "content": content})
        assert ack["type"] == "ack", ack
        done = await tab.wait_done(ack["gen"])
    return done


async def _metric(srv: ServerProcess, name: str, **labels: str) -> float:
    async for user in make_user(srv):
        return await sample(user.http, name, **labels)
    raise AssertionError("unreachable")


async def _wait_metric(srv: ServerProcess, name: str, at_least: float,
                       timeout: float = 60.0, **labels: str) -> float:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (value := await _metric(srv, name, **labels)) < at_least:
        if loop.time() > deadline:
            raise AssertionError(f"{name}{labels} = {value} < {at_least} after {timeout} s")
        await asyncio.sleep(0.1)
    return value


async def test_a_receiver_that_is_down_for_a_while_gets_the_delivery_once_up(
        server: ServerFactory, tmp_path: Path) -> None:
    receiver = Receiver(tmp_path, SECRET)  # its port is chosen; nothing listens there yet
    srv = await server(env=_env(receiver, CHATCAST_WEBHOOK_MAX_ATTEMPTS="200"))
    try:
        async for alice in make_user(srv):
            done = await _answer(alice, "tell me something")
            assert done["status"] == "completed"
            await _wait_metric(srv, "chatcast_webhook_failed_attempts_total", 2,
                               reason="unreachable")
            await receiver.start()
            [got] = await receiver.wait_for(1)
            assert got["verified"], got
            assert got["delivery"] == done["gen"]
            event = got["event"]
            assert event["type"] == "answer.completed" and event["id"] == done["gen"]
            data = event["data"]
            assert data["status"] == "completed" and data["chat_id"] == done["chat"]
            assert data["message"]["content"] == done["message"]["content"]
            assert data["user_id"] and data["message_id"] == done["message"]["id"]
            await _wait_metric(srv, "chatcast_webhook_deliveries_total", 1,
                               outcome="delivered")
            assert len(receiver.received()) == 1
    finally:
        receiver.stop()


async def test_a_receiver_answering_500_is_retried_counted_and_never_slows_the_stream(
        server: ServerFactory, tmp_path: Path) -> None:
    receiver = Receiver(tmp_path, SECRET, status=500)
    await receiver.start()
    srv = await server(env=_env(receiver, CHATCAST_WEBHOOK_MAX_ATTEMPTS="3",
                                CHATCAST_WEBHOOK_RETRY_BASE_S="0.1"))
    try:
        async for alice in make_user(srv):
            first = await _answer(alice, "first")
            # The streams go on while the webhook is being retried.
            second = await _answer(alice, "second")
            assert first["status"] == second["status"] == "completed"
            got = await receiver.wait_for(6)
            assert all(r["verified"] for r in got)
            assert sorted({r["delivery"] for r in got}) == sorted([first["gen"],
                                                                   second["gen"]])
            await _wait_metric(srv, "chatcast_webhook_deliveries_total", 2, outcome="gave_up")
            assert await _metric(srv, "chatcast_webhook_failed_attempts_total",
                                 reason="status_5xx") >= 6
            assert await _metric(srv, "chatcast_webhook_deliveries_total",
                                 outcome="delivered") == 0
    finally:
        receiver.stop()


async def test_a_webhook_url_without_a_secret_does_not_start(server: ServerFactory) -> None:
    srv = await server(env={"CHATCAST_WEBHOOK_URL": "http://127.0.0.1:9/hook"}, start=False)
    srv.spawn()
    code = await srv.wait_async(60)
    assert code != 0
    assert "CHATCAST_WEBHOOK_SECRET" in srv.logs()


@pytest.mark.postgres
async def test_an_answer_whose_process_died_is_heard_from_the_process_that_ends_it(
        server: ServerFactory, redis_server: Callable[[], RedisServer],
        make_database: DatabaseFactory, tmp_path: Path) -> None:
    receiver = Receiver(tmp_path, SECRET)
    await receiver.start()
    env = {**_env(receiver), "REDIS_URL": redis_server().url,
           "DATABASE_URL": make_database("postgresql"), "CHATCAST_LEASE_TTL_S": "3",
           "CHATCAST_DEMO_TOKENS_PER_S": "20", "CHATCAST_CHECKPOINT_INTERVAL_S": "0.5"}
    env.pop("CHATCAST_DEMO_MAX_TOKENS")
    a, b = await asyncio.gather(server(env=env), server(env=env))
    try:
        async for alice in make_user(a):
            chat = await alice.new_chat()
            async with await WSClient.connect(b.ws_url, cookie=alice.cookie) as watcher:
                await watcher.subscribe(chat)
                async with await alice.ws() as owner_tab:
                    gen = (await owner_tab.request({"type": "send", "chat": chat,
                                                    "content": "die"}))["gen"]
                for _ in range(5):
                    await watcher.wait_for("delta")
                a.kill(signal.SIGKILL)
                done = await watcher.wait_done(gen, timeout=30)
            assert done["status"] == "interrupted"
            [got] = await receiver.wait_for(1)
            assert got["verified"] and got["delivery"] == gen
            assert got["event"]["type"] == "answer.interrupted"
            assert got["event"]["data"]["message"]["content"] == done["message"]["content"]
            await _wait_metric(b, "chatcast_webhook_deliveries_total", 1, outcome="delivered")
            assert len(receiver.received()) == 1
    finally:
        receiver.stop()
