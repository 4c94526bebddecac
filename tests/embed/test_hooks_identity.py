"""In-process hooks (server/hooks.py): which hook hears which ending, sync and async hooks,
a failing hook logged and counted without touching the others; and the identity hook's
rules (server/auth.py): a user id, None left to the mode, raising or a bad value refused."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import HTTPConnection

from chatcast.core.errors import Unauthorized
from chatcast.server import metrics
from chatcast.server.auth import Authenticator
from chatcast.server.hooks import AnswerEnded, Hooks
from chatcast.server.limits.memory import MemoryLimits
from chatcast.server.settings import Settings
from chatcast.store.models import Generation


def gen(gen_id: str) -> Generation:
    return Generation(id=gen_id, chat_id="c1", user_id="u1", message_id=f"m-{gen_id}",
                      provider="rag", model="rag-1", status="completed")


def message(content: str) -> dict[str, Any]:
    return {"id": "m", "content": content, "provider": "rag", "model": "rag-1",
            "metadata": {"sources": ["a"]}}


async def test_each_ending_reaches_its_hook_and_a_failing_hook_is_counted() -> None:
    heard: list[tuple[str, str]] = []
    finished = asyncio.Event()

    def on_done(event: AnswerEnded) -> None:
        heard.append(("done", event.content))

    async def on_stopped(event: AnswerEnded) -> None:
        await asyncio.sleep(0)
        heard.append((event.status, event.generation_id))

    def on_error(event: AnswerEnded) -> None:
        finished.set()
        raise RuntimeError("the host's hook is broken")

    hooks = Hooks(on_done=on_done, on_stopped=on_stopped, on_error=on_error)
    before = metrics.HOOK_ERRORS._value.get()
    hooks.ended(gen("g1"), "completed", message("all of it"), None, None)
    hooks.ended(gen("g2"), "stopped", message("some"), None, None)
    hooks.ended(gen("g3"), "interrupted", message("some"), None, None)
    hooks.ended(gen("g4"), "error", message(""), None, {"code": "provider_error"})
    await asyncio.wait_for(finished.wait(), 10)
    await hooks.close(10)
    assert sorted(heard) == [("done", "all of it"), ("interrupted", "g3"), ("stopped", "g2")]
    assert metrics.HOOK_ERRORS._value.get() == before + 1


def test_the_event_and_its_webhook_payload() -> None:
    event = AnswerEnded("completed", "g1", "c1", "u1", "m1", "rag", "rag-1",
                        message("text"), {"input_tokens": 1, "output_tokens": 2}, None)
    body = event.payload()
    assert body["type"] == event.event_type == "answer.completed" and body["id"] == "g1"
    assert body["data"]["message"]["metadata"] == {"sources": ["a"]}
    assert body["data"]["usage"] == {"input_tokens": 1, "output_tokens": 2}


def test_a_hook_must_be_callable() -> None:
    with pytest.raises(TypeError):
        Hooks(on_done="not a function")  # type: ignore[arg-type]


def conn(**headers: str) -> HTTPConnection:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return HTTPConnection({"type": "http", "method": "GET", "path": "/api/chats",
                           "headers": raw, "query_string": b""})


def authenticator(mode: str, hook: Any) -> Authenticator:
    settings = Settings(auth=mode, secret_key="k" * 32)  # type: ignore[arg-type]
    return Authenticator(settings, repo=None, limits=MemoryLimits(),  # type: ignore[arg-type]
                         hook=hook)


async def test_the_identity_hook_decides_first_and_none_leaves_it_to_the_mode() -> None:
    async def by_header(c: HTTPConnection) -> str | None:
        return c.headers.get("x-user")

    anonymous = authenticator("anonymous", by_header)
    who = await anonymous.authenticate(conn(**{"X-User": "alice"}), ticket_ok=False)
    assert (who.user_id, who.via) == ("alice", "hook")
    stranger = await anonymous.authenticate(conn(), ticket_ok=False)
    assert stranger.via == "new"  # anonymous mode: a new anonymous user
    with pytest.raises(Unauthorized):  # token mode: credentials required
        await authenticator("token", by_header).authenticate(conn(), ticket_ok=False)


@pytest.mark.parametrize("result", [RuntimeError("down"), 42, "", "x" * 65])
async def test_a_hook_that_raises_or_returns_no_user_id_refuses(result: Any) -> None:
    def hook(c: HTTPConnection) -> Any:
        if isinstance(result, Exception):
            raise result
        return result

    with pytest.raises(Unauthorized):
        await authenticator("anonymous", hook).authenticate(conn(), ticket_ok=False)
