"""Custom providers configured by CHATCAST_PROVIDERS in a real `chatcast serve` process:
a provider holding its own upstream HTTP stream is cancelled by a stop (the model server
sees the client leave), its metadata is stored on the answer message and sent with `done`,
its failures end answers with the safe error codes, and a setting that names no provider
stops the start with a message naming the setting."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerFactory
from tests.fakes import FakeServer, Reply, openai_fake
from tests.helpers.server import REPO_ROOT, ServerProcess
from tests.integration.conftest import make_user

PROVIDERS = '''
import json, os
import httpx
import chatcast


async def streaming(messages, context):
    """Its own upstream connection: the fake model's stream, word by word."""
    yield chatcast.Metadata({"sources": [{"title": "Doc", "url": "https://example.com/d"}]})
    async with httpx.AsyncClient(base_url=os.environ["MODEL_URL"], trust_env=False) as http:
        async with http.stream("POST", "/v1/chat/completions",
                               json={"model": context.model, "stream": True,
                                     "messages": [{"role": m.role, "content": m.content}
                                                  for m in messages]}) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    for choice in json.loads(line[6:]).get("choices", []):
                        if text := (choice.get("delta") or {}).get("content"):
                            yield text


async def raising(messages, context):
    yield "so far "
    raise RuntimeError("internal detail: password=hunter2")


def make_raising():
    return raising
'''


def _of(gen: str, event: dict[str, Any]) -> bool:
    return bool(event["gen"] == gen)


@pytest.fixture
def model_api() -> Iterator[FakeServer]:
    with FakeServer(openai_fake.app) as server:
        yield server


def _env(tmp_path: Path, model_api: FakeServer, providers: str,
         **extra: str) -> dict[str, str]:
    (tmp_path / "hostproviders.py").write_text(PROVIDERS)
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT)]),
            "MODEL_URL": model_api.url, "CHATCAST_PROVIDERS": providers, **extra}


def _in_working_dir(app_dir: Path, model_api: FakeServer, providers: str,
                    **extra: str) -> dict[str, str]:
    """The application's module in the server's working directory (and not on
    PYTHONPATH), as `chatcast serve` run from the application's folder finds it."""
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "hostproviders.py").write_text(PROVIDERS)
    return {"MODEL_URL": model_api.url, "CHATCAST_PROVIDERS": providers, **extra}


async def test_stop_closes_the_custom_providers_upstream_and_metadata_is_stored(
        tmp_path: Path, model_api: FakeServer) -> None:
    model_api.script(Reply.text("Hello", " there", "!"),
                     Reply.text(*[f"w{i} " for i in range(400)], delay_s=0.05))
    app_dir = tmp_path / "app"
    # The console script, as a newcomer runs it from the application's folder.
    srv = ServerProcess(app_dir, env=_in_working_dir(
        app_dir, model_api, "rag=hostproviders:streaming, bad=hostproviders:make_raising",
        CHATCAST_PROVIDER="rag"), command=[
            str(Path(sys.executable).parent / "chatcast"), "serve", "--host", "127.0.0.1",
            "--port", "{port}"])
    await srv.start()
    try:
        await _stop_metadata_and_errors(srv, model_api)
    finally:
        await srv.stop()
    assert "hunter2" in srv.logs()  # the traceback is in the log, for the operator


async def _stop_metadata_and_errors(srv: ServerProcess, model_api: FakeServer) -> None:
    async for alice in make_user(srv):
        chat = await alice.new_chat()
        async with await alice.ws() as tab:
            await tab.subscribe(chat)
            ack = await tab.request({"type": "send", "chat": chat, "content": "hi"})
            done = await tab.wait_done(ack["gen"])
            assert done["status"] == "completed" and done["message"]["provider"] == "rag"
            assert done["message"]["content"] == "Hello there!"
            sources = [{"title": "Doc", "url": "https://example.com/d"}]
            assert done["message"]["metadata"]["sources"] == sources
            stored = await alice.message(chat, done["message"]["id"])
            assert stored["metadata"]["sources"] == sources

            gen = (await tab.request({"type": "send", "chat": chat, "content": "long"}))["gen"]
            await tab.wait_for("delta", partial(_of, gen))
            await tab.request({"type": "stop", "gen": gen})
            done = await tab.wait_done(gen)
            assert done["status"] == "stopped"
            upstream = await model_api.wait_ended(timeout_s=15)
            assert upstream.disconnected  # the provider's own connection was closed

        r = await alice.http.patch(f"/api/chats/{chat}", json={"provider": "bad"})
        assert r.status_code == 200, r.text
        async with await alice.ws() as tab:
            await tab.subscribe(chat)
            ack = await tab.request({"type": "send", "chat": chat, "content": "fail"})
            done = await tab.wait_done(ack["gen"])
        assert done["status"] == "error"
        assert done["error"]["code"] == "provider_error"
        assert "hunter2" not in str(done) and done["message"]["content"] == "so far "


@pytest.mark.parametrize(("spec", "words"), [
    ("rag=no_such_module:make", ["CHATCAST_PROVIDERS", "no_such_module"]),
    ("rag=string:ascii_letters", ["CHATCAST_PROVIDERS", "not a provider"]),
    ("rag=hostproviders:nothing", ["CHATCAST_PROVIDERS", "has no 'nothing'"]),
])
async def test_a_setting_that_names_no_provider_stops_the_start(
        server: ServerFactory, tmp_path: Path, model_api: FakeServer, spec: str,
        words: list[str]) -> None:
    srv = await server(env=_env(tmp_path, model_api, spec), start=False)
    srv.spawn()
    assert await srv.wait_async(timeout=60) != 0
    assert all(w in srv.logs() for w in words), srv.log_tail()
