"""`POST /api/client-errors` and `POST /api/client-events` on a real server: logged with
their context, counted by kind in /metrics, bounded in size, rate-limited per user; bad
input gets a clear error and is neither logged nor counted."""

from __future__ import annotations

import httpx
import orjson
import pytest

from tests.conftest import ServerFactory
from tests.helpers.metrics import sample
from tests.helpers.server import ServerProcess
from tests.integration.conftest import User, make_user


@pytest.fixture
async def srv(server: ServerFactory) -> ServerProcess:
    """The conftest's `alice` (and `bob`) sign in to this server: reports limited to 5/min."""
    return await server(env={"CHATCAST_CLIENT_REPORTS_PER_MINUTE": "5"})


def _records(srv: ServerProcess, msg: str) -> list[dict[str, object]]:
    out = []
    for line in srv.logs().splitlines():
        if line.startswith("{"):
            record = orjson.loads(line)
            if record["msg"] == msg:
                out.append(record)
    return out


async def test_client_error_is_logged_with_context_and_counted(srv: ServerProcess,
                                                               alice: User) -> None:
    chat = await alice.new_chat()
    r = await alice.http.post("/api/client-errors", headers={"User-Agent": "TestBrowser/1"},
                              json={"kind": "malformed_frame",
                                    "message": "delta without an integer seq",
                                    "detail": {"frame": '{"type":"delta","seq":"x"}',
                                               "transport": "ws"},
                                    "chat_id": chat})
    assert r.status_code == 202, r.text
    r = await alice.http.post("/api/client-errors",
                              json={"kind": "render_error", "message": "boom",
                                    "detail": "TypeError at render.js:12 ?token=abc123"})
    assert r.status_code == 202, r.text
    assert await sample(alice.http, "chatcast_client_errors_total", kind="malformed_frame") == 1
    assert await sample(alice.http, "chatcast_client_errors_total", kind="render_error") == 1
    await srv.wait_log("boom")
    first, second = _records(srv, "client error")
    assert first["level"] == "warning" and first["kind"] == "malformed_frame"
    assert first["error"] == "delta without an integer seq" and first["chat"] == chat
    assert first["user_agent"] == "TestBrowser/1" and isinstance(first["user"], str)
    assert orjson.loads(str(first["detail"]))["transport"] == "ws"
    assert second["kind"] == "render_error" and "chat" not in second
    assert "abc123" not in srv.logs()  # credentials in reported URLs are masked too


BAD = [
    ({"kind": "nonsense", "message": "x"}, 400, "kind"),
    ({"message": "x"}, 400, "kind"),
    ({"kind": "render_error", "message": "x" * 1001}, 400, "message"),
    ({"kind": "render_error", "message": "x", "chat_id": "../../etc"}, 400, "chat_id"),
    ({"kind": "render_error", "message": "x", "extra": 1}, 400, "extra"),
    ({"kind": "render_error", "message": "x", "detail": {"blob": "y" * 9000}}, 413, "bytes"),
    ([1, 2], 400, "JSON object"),
]


async def test_bad_reports_are_refused_and_change_nothing(srv: ServerProcess,
                                                          alice: User) -> None:
    for body, status, needle in BAD:
        r = await alice.http.post("/api/client-errors", json=body)
        assert r.status_code == status, (body, r.text)
        error = r.json()["error"]
        assert needle in error["message"] and error["retryable"] is False, (body, error)
    r = await alice.http.post("/api/client-errors", content=b"{not json",
                              headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]
    for kind in ("render_error", "malformed_frame", "script_error"):
        assert await sample(alice.http, "chatcast_client_errors_total", kind=kind) == 0
    assert not _records(srv, "client error")
    # Refusals took nothing from the rate limit (5 a minute here).
    for _ in range(5):
        r = await alice.http.post("/api/client-errors", json={"kind": "render_error",
                                                              "message": "fine"})
        assert r.status_code == 202


async def test_client_events_count_as_engagement(srv: ServerProcess, alice: User) -> None:
    for event in ({"event": "copy"}, {"event": "reconnect", "transport": "ws"},
                  {"event": "transport_fallback", "transport": "sse",
                   "detail": {"from": "ws", "reason": "blocked"}}):
        r = await alice.http.post("/api/client-events", json=event)
        assert r.status_code == 202, r.text
    for action in ("copy", "reconnect", "transport_fallback"):
        assert await sample(alice.http, "chatcast_user_actions_total", action=action) == 1
    r = await alice.http.post("/api/client-events", json={"event": "send"})  # server-side
    assert r.status_code == 400 and "event" in r.json()["error"]["message"]
    assert await sample(alice.http, "chatcast_user_actions_total", action="send") == 0
    await srv.wait_log('"transport_fallback"')
    [fallback] = [r for r in _records(srv, "client event") if r["event"] == "transport_fallback"]
    assert fallback["transport"] == "sse" and "blocked" in str(fallback["detail"])


async def test_reports_are_rate_limited_per_user(srv: ServerProcess, alice: User) -> None:
    report = {"kind": "script_error", "message": "again"}
    for _ in range(4):
        assert (await alice.http.post("/api/client-errors", json=report)).status_code == 202
    assert (await alice.http.post("/api/client-events", json={"event": "copy"})).status_code \
        == 202  # one bucket for both
    r = await alice.http.post("/api/client-errors", json=report)
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limited" and int(r.headers["Retry-After"]) >= 1
    assert await sample(alice.http, "chatcast_client_errors_total", kind="script_error") == 4
    assert await sample(alice.http, "chatcast_limited_total", limit="client_reports") == 1
    async for bob in make_user(srv):  # another user has their own bucket
        assert (await bob.http.post("/api/client-errors", json=report)).status_code == 202


async def test_cross_site_reports_are_refused(srv: ServerProcess, alice: User) -> None:
    r = await alice.http.post("/api/client-errors", headers={"Origin": "https://evil.example"},
                              json={"kind": "render_error", "message": "x"})
    assert r.status_code == 403
    async with httpx.AsyncClient(base_url=srv.url) as anonymous:
        r = await anonymous.post("/api/client-errors",
                                 json={"kind": "render_error", "message": "x"})
        assert r.status_code == 202  # anonymous mode: a new anonymous user may report
