"""Real providers through a real server: a chatcast process talks to the fake OpenAI and
Gemini APIs (tests/fakes, served from this pytest process on 127.0.0.1) and a browser-like
client watches over the WebSocket. Every scenario runs once per provider.

One server per (provider, configuration) is shared by the tests of this module: the fakes
are re-scripted and their request logs cleared before each test, and each test uses a fresh
user and chat. After each test, no frame a client received and no line of the server log
may contain an API key or anything of an upstream error body.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.fakes import FakeServer, RecordedRequest, Reply, gemini_fake, openai_fake
from tests.helpers.clients import WSClient
from tests.helpers.server import ServerProcess
from tests.integration.conftest import User, sql_message

PROVIDERS = ("openai", "gemini")
OTHER = {"openai": "gemini", "gemini": "openai"}
# Distinctive keys: the tests prove they reach the fake APIs and nobody else.
KEYS = {"openai": "sk-test-SECRET-123", "gemini": "gm-test-SECRET-456"}
MODELS = {"openai": "gpt-fake", "gemini": "gemini-fake"}
# What must never reach a client or the log: the keys, the secrets the fakes put in their
# error bodies, and recognisable phrases of those bodies (proof a raw body was passed on).
FORBIDDEN = (*KEYS.values(), openai_fake.LEAKY_SECRET, gemini_fake.LEAKY_SECRET,
             "Incorrect API key provided", "API key not valid",
             "The server had an error while processing your request",
             "An internal error has occurred", "Internal error (key")
# Long enough to stop mid-way; each chunk is 20 ms apart.
SLOW = Reply(chunks=tuple(f"w{i} " for i in range(400)), delay_s=0.02)

# Server configurations: extra environment on top of `_base_env`.
CONFIGS: dict[str, dict[str, str]] = {
    # no other provider, no non-streaming fallback
    "plain": {},
    # the other fake API next in the chain
    "fallback": {"CHATCAST_FALLBACK": "{other}"},
    # no other provider, but the same one without streaming as a last resort
    "nonstream": {"CHATCAST_PROVIDER_NONSTREAM_FALLBACK": "true"},
}


def _base_env(provider: str, fakes: dict[str, FakeServer]) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": KEYS["openai"], "OPENAI_BASE_URL": f"{fakes['openai'].url}/v1",
        "GEMINI_API_KEY": KEYS["gemini"], "GEMINI_BASE_URL": fakes["gemini"].url,
        "CHATCAST_PROVIDER": provider, "CHATCAST_MODEL": MODELS[provider],
        "CHATCAST_PROVIDER_MAX_RETRIES": "2", "CHATCAST_PROVIDER_RETRY_BASE_S": "0.01",
        "CHATCAST_PROVIDER_IDLE_TIMEOUT_S": "1", "CHATCAST_PROVIDER_CONNECT_TIMEOUT_S": "2",
        "CHATCAST_CHECKPOINT_INTERVAL_S": "0.1",
        # the fakes are local: never route them through a proxy of the environment
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
    }


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeServer]]:
    """Both fake APIs, for the whole module (each test re-scripts them)."""
    with FakeServer(openai_fake.app) as openai_api, FakeServer(gemini_fake.app) as gemini_api:
        yield {"openai": openai_api, "gemini": gemini_api}


@pytest.fixture(scope="module", params=PROVIDERS)
def provider(request: pytest.FixtureRequest) -> str:
    """The provider under test (the server's CHATCAST_PROVIDER)."""
    name: str = request.param
    return name


class Servers:
    """chatcast processes of one provider, one per configuration, started on first use."""

    def __init__(self, provider: str, fakes: dict[str, FakeServer], root: Path) -> None:
        self.provider, self.fakes, self.root = provider, fakes, root
        self.started: dict[str, ServerProcess] = {}

    async def get(self, config: str) -> ServerProcess:
        if config not in self.started:
            extra = {k: v.format(other=OTHER[self.provider]) for k, v in CONFIGS[config].items()}
            srv = ServerProcess(self.root / config,
                                env={**_base_env(self.provider, self.fakes), **extra})
            self.started[config] = srv
            await srv.start()
        return self.started[config]

    async def stop(self) -> None:
        for config, srv in self.started.items():
            code = await srv.stop()
            print(f"--- {self.provider}/{config} server (exit {code}), log {srv.log_path}:\n"
                  f"{srv.log_tail(30)}")


@pytest.fixture(scope="module")
async def servers(provider: str, fakes: dict[str, FakeServer],
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Servers]:
    pool = Servers(provider, fakes, tmp_path_factory.mktemp(f"providers-{provider}"))
    yield pool
    await pool.stop()


def _reset(api: FakeServer) -> None:
    """Forget earlier scripts and requests (through the public API: drain the script)."""
    sentinel = Reply()
    api.default = sentinel
    while api.next_reply() is not sentinel:
        pass
    api.default = Reply()
    api.requests.clear()


@dataclass
class Session:
    """One user with one WebSocket subscribed to one new chat."""

    user: User
    tab: WSClient
    chat: str
    seen: list[str]  # REST bodies this session read (checked for secrets)

    @property
    def srv(self) -> ServerProcess:
        return self.user.srv

    async def send(self, content: str) -> dict[str, Any]:
        ack = await self.tab.request({"type": "send", "chat": self.chat, "content": content})
        assert ack["type"] == "ack", ack
        return ack

    async def ask(self, content: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Send `content` and wait for its generation to end: (ack, done)."""
        ack = await self.send(content)
        return ack, await self.tab.wait_done(ack["gen"])

    def text_of(self, done: dict[str, Any]) -> str:
        """What this tab assembled of `done`'s answer, checked against done's digest."""
        return self.tab.assembler(self.chat).check_done(done)

    async def get(self, path: str) -> dict[str, Any]:
        r = await self.user.http.get(path)
        self.seen.append(r.text)
        assert r.status_code == 200, r.text
        body = r.json()
        assert isinstance(body, dict)
        return body

    async def generation(self, gen: str) -> dict[str, Any]:
        return await self.get(f"/api/generations/{gen}")

    async def message(self, message_id: str) -> dict[str, Any]:
        page = await self.get(f"/api/chats/{self.chat}/messages?limit=200")
        return next(m for m in page["messages"] if m["id"] == message_id)

    async def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0 if absent)."""
        r = await self.user.http.get("/metrics")
        assert r.status_code == 200
        for line in r.text.splitlines():
            match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
            if match is None or match[1] != name:
                continue
            found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match[2] or ""))
            if found == labels:
                return float(match[3])
        return 0.0


@dataclass
class Scene:
    """What one test works with: the provider under test, the fakes, the servers."""

    provider: str
    fakes: dict[str, FakeServer]
    servers: Servers
    sessions: list[Session] = field(default_factory=list)

    @property
    def other(self) -> str:
        return OTHER[self.provider]

    @property
    def api(self) -> FakeServer:
        """The fake API of the provider under test."""
        return self.fakes[self.provider]

    @property
    def other_api(self) -> FakeServer:
        return self.fakes[self.other]

    @contextlib.asynccontextmanager
    async def session(self, config: str = "plain") -> AsyncIterator[Session]:
        srv = await self.servers.get(config)
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as http:
            r = await http.get("/api/chats")  # sets the identity cookie
            assert r.status_code == 200 and http.cookies
            user = User(srv, http)
            chat = await user.new_chat()
            async with await user.ws() as tab:
                assert (await tab.subscribe(chat))["type"] == "ack"
                session = Session(user, tab, chat, [])
                self.sessions.append(session)
                yield session

    def leaks(self) -> list[str]:
        """Forbidden strings found in any frame, REST body or server log of this test."""
        texts = [orjson.dumps(e).decode() for s in self.sessions for e in s.tab.received]
        texts += [t for s in self.sessions for t in s.seen]
        texts += [srv.logs() for srv in self.servers.started.values()]
        return [f for f in FORBIDDEN if any(f in t for t in texts)]


@pytest.fixture
def scene(provider: str, fakes: dict[str, FakeServer], servers: Servers) -> Iterator[Scene]:
    for api in fakes.values():
        _reset(api)
    s = Scene(provider, fakes, servers)
    yield s
    assert not s.leaks(), f"secrets or upstream bodies leaked: {s.leaks()}"


def _last_user_text(provider: str, request: RecordedRequest) -> tuple[str, str]:
    """(role, text) of the last message of an upstream request, in chatcast's role names."""
    if provider == "openai":
        last = request.body["messages"][-1]
        return str(last["role"]), str(last["content"])
    last = request.body["contents"][-1]
    role = "assistant" if last["role"] == "model" else str(last["role"])
    return role, "".join(str(p.get("text", "")) for p in last["parts"])


def _api_key(provider: str, request: RecordedRequest) -> str:
    if provider == "openai":
        return request.headers.get("authorization", "").removeprefix("Bearer ")
    return request.headers.get("x-goog-api-key", "")


# -- tests ------------------------------------------------------------------------------------


async def test_streams_token_by_token_and_stores_usage(scene: Scene) -> None:
    chunks = ("Once", " upon", " a", " time", ",", " the end.")
    scene.api.script(Reply.text(*chunks, delay_s=0.2))  # apart enough not to be merged
    async with scene.session() as s:
        ack = await s.send("tell me a story")
        start = await s.tab.wait_for("start", lambda e: e["gen"] == ack["gen"])
        assert (start["provider"], start["model"]) == (scene.provider, MODELS[scene.provider])
        done = await s.tab.wait_done(ack["gen"])
        deltas = [e for e in s.tab.received if e["type"] == "delta"]
        assert done["status"] == "completed" and "error" not in done
        text = s.text_of(done)
        assert text == "".join(chunks)
        assert len(deltas) >= 3, f"expected token-by-token deltas, got {deltas}"
        assert deltas[-1]["seq"] == len(chunks)
        usage = {"input_tokens": 7, "output_tokens": len(chunks)}
        assert done["usage"] == usage
        row = await s.message(ack["assistant"])
        assert (row["content"], row["status"], row["usage"]) == (text, "complete", usage)
        assert await sql_message(s.srv, ack["assistant"]) == (text, "complete")
        meta = (await s.generation(ack["gen"]))["metadata"]
        assert meta["provider"] == scene.provider and meta["fallback"] is None
        assert meta["retries"] == 0 and meta["non_streaming"] is False
        assert meta["ttft_ms"] >= 0 and meta["tokens"] == len(chunks)
    [request] = scene.api.requests
    assert request.streaming and request.ended_by == "complete"
    assert _api_key(scene.provider, request) == KEYS[scene.provider]
    assert MODELS[scene.provider] in (request.path + str(request.body.get("model", "")))
    assert _last_user_text(scene.provider, request) == ("user", "tell me a story")
    assert not scene.other_api.requests


async def test_429_with_retry_after_is_retried_then_succeeds(scene: Scene) -> None:
    scene.api.script(Reply.error(429, headers={"Retry-After": "1"}))
    async with scene.session() as s:
        retries_before = await s.metric("chatcast_provider_retries_total",
                                        provider=scene.provider)
        ack, done = await s.ask("hello")
        assert done["status"] == "completed"
        assert s.text_of(done) == "Hello, world!"
        meta = (await s.generation(ack["gen"]))["metadata"]
        assert meta["retries"] == 1 and meta["fallback"] is None
        assert len(meta["errors"]) == 1 and "429" in meta["errors"][0]
        retries_after = await s.metric("chatcast_provider_retries_total",
                                       provider=scene.provider)
        assert retries_after == retries_before + 1
    first, second = scene.api.requests
    gap = second.received_at - first.received_at
    print(f"\n{scene.provider}: retried {gap:.2f} s after a 429 with Retry-After: 1")
    assert gap >= 0.9, f"retried after {gap:.2f} s despite Retry-After: 1"


async def test_permanent_5xx_falls_back_to_the_next_provider(scene: Scene) -> None:
    scene.api.script(then=Reply.error(503))
    scene.other_api.script(Reply.text("from", " the", " other", " one", delay_s=0.01))
    async with scene.session("fallback") as s:
        ack, done = await s.ask("anyone there?")
        assert done["status"] == "completed"
        assert s.text_of(done) == "from the other one"
        assert done["usage"] == {"input_tokens": 7, "output_tokens": 4}
        meta = (await s.generation(ack["gen"]))["metadata"]
        assert meta["fallback"] == scene.other and meta["provider"] == scene.other
        assert meta["retries"] == 2 and len(meta["errors"]) == 3
    assert len(scene.api.requests) == 3  # the first try and two retries
    [request] = scene.other_api.requests
    assert request.streaming
    assert _api_key(scene.other, request) == KEYS[scene.other]


async def test_permanent_5xx_then_asks_without_streaming(scene: Scene) -> None:
    scene.api.script(Reply.error(500), Reply.error(500), Reply.error(500),
                     then=Reply.text("plain", " answer"))
    async with scene.session("nonstream") as s:
        ack, done = await s.ask("stream, please")
        assert done["status"] == "completed"
        assert s.text_of(done) == "plain answer"
        assert done["usage"] == {"input_tokens": 7, "output_tokens": 2}
        meta = (await s.generation(ack["gen"]))["metadata"]
        assert meta["non_streaming"] is True and meta["fallback"] is None
        assert meta["provider"] == scene.provider
    assert [r.streaming for r in scene.api.requests] == [True, True, True, False]
    assert not scene.other_api.requests


async def test_permanent_5xx_without_fallback_is_provider_unavailable(scene: Scene) -> None:
    scene.api.script(then=Reply.error(503))
    async with scene.session() as s:
        labels = {"provider": scene.provider, "code": "provider_unavailable"}
        errors_before = await s.metric("chatcast_provider_errors_total", **labels)
        ack, done = await s.ask("hello?")
        assert done["status"] == "error"
        assert done["error"]["code"] == "provider_unavailable"
        assert "503" in done["error"]["message"]
        assert s.text_of(done) == ""
        assert (await s.message(ack["assistant"]))["status"] == "error"
        assert await sql_message(s.srv, ack["assistant"]) == ("", "error")
        gen = await s.generation(ack["gen"])
        assert gen["status"] == "error" and gen["error"]["code"] == "provider_unavailable"
        assert gen["metadata"]["retries"] == 2 and gen["metadata"]["non_streaming"] is False
        errors_after = await s.metric("chatcast_provider_errors_total", **labels)
        assert errors_after == errors_before + 1
    assert [r.streaming for r in scene.api.requests] == [True, True, True]


async def test_401_is_not_retried_nor_falls_back(scene: Scene) -> None:
    scene.api.script(then=Reply.error(401))
    async with scene.session("fallback") as s:
        ack, done = await s.ask("who am I?")
        assert done["status"] == "error" and done["error"]["code"] == "provider_error"
        assert "401" in done["error"]["message"]
        assert (await s.message(ack["assistant"]))["status"] == "error"
        meta = (await s.generation(ack["gen"]))["metadata"]
        assert meta["retries"] == 0 and meta["fallback"] is None
        assert await s.metric("chatcast_provider_errors_total", provider=scene.provider,
                              code="provider_error") >= 1
    [request] = scene.api.requests  # exactly one request
    assert _api_key(scene.provider, request) == KEYS[scene.provider]
    assert not scene.other_api.requests
    # Said explicitly here (the `scene` fixture checks it after every test too).
    assert not scene.leaks()


async def test_dropped_stream_keeps_the_partial_then_continue_and_regenerate(
        scene: Scene) -> None:
    scene.api.script(Reply.text("partial ", "ans", "wer", delay_s=0.01, end="drop"),
                     Reply.text(" and", " the rest."), Reply.text("A fresh", " answer."))
    async with scene.session() as s:
        ack, done = await s.ask("tell me")
        assert done["status"] == "error" and done["error"]["code"] == "provider_error"
        partial = s.text_of(done)
        assert partial == "partial answer"
        assert await sql_message(s.srv, ack["assistant"]) == (partial, "error")
        # continue: the same message grows from its partial text
        cont = await s.tab.request({"type": "continue", "gen": ack["gen"]})
        assert cont["type"] == "ack" and cont["assistant"] == ack["assistant"], cont
        done2 = await s.tab.wait_done(cont["gen"])
        assert done2["status"] == "completed"
        full = s.tab.assembler(s.chat).check_done(done2)
        assert full == "partial answer and the rest."
        assert await sql_message(s.srv, ack["assistant"]) == (full, "complete")
        # regenerate: a new answer to the same user message
        regen = await s.tab.request({"type": "regenerate", "chat": s.chat})
        assert regen["type"] == "ack", regen
        done3 = await s.tab.wait_done(regen["gen"])
        assert done3["status"] == "completed"
        assert s.tab.assembler(s.chat).check_done(done3) == "A fresh answer."
        assert await sql_message(s.srv, done3["message"]["id"]) == ("A fresh answer.",
                                                                     "complete")
    first, second, third = scene.api.requests  # a broken stream is never restarted silently
    assert first.ended_by == "drop"
    assert _last_user_text(scene.provider, second) == ("assistant", "partial answer")
    assert _last_user_text(scene.provider, third) == ("user", "tell me")


async def test_stall_mid_stream_hits_the_idle_timeout(scene: Scene) -> None:
    scene.api.script(Reply.text("stalled", " here", end="stall"))
    async with scene.session() as s:
        sent_at = time.monotonic()
        ack, done = await s.ask("go")
        waited = time.monotonic() - sent_at
        assert done["status"] == "error" and done["error"]["code"] == "provider_error"
        assert "sent nothing" in done["error"]["message"]
        partial = s.text_of(done)
        assert partial == "stalled here"
        assert await sql_message(s.srv, ack["assistant"]) == (partial, "error")
    assert waited >= 0.9, f"done after {waited:.2f} s, before the 1 s idle timeout"
    ended = await scene.api.wait_ended()
    assert ended.disconnected, f"the stalled upstream response ended by {ended.ended_by}"
    assert len(scene.api.requests) == 1


async def test_stop_closes_the_upstream_connection(scene: Scene) -> None:
    scene.api.script(SLOW)
    async with scene.session() as s:
        ack = await s.send("talk for a while")
        for _ in range(3):
            await s.tab.wait_for("delta")
        stop_at = time.monotonic()
        stopped = await s.tab.request({"type": "stop", "gen": ack["gen"]})
        assert stopped["type"] == "ack", stopped
        ended = await scene.api.wait_ended(timeout_s=5)
        done = await s.tab.wait_done(ack["gen"])
        assert done["status"] == "stopped"
        partial = s.text_of(done)
        assert partial.startswith("w0 w1 w2 ") and len(partial) < len("".join(SLOW.chunks))
        assert await sql_message(s.srv, ack["assistant"]) == (partial, "stopped")
    assert ended.disconnected, f"upstream response ended by {ended.ended_by}"
    assert ended.ended_at is not None
    print(f"\n{scene.provider}: upstream closed {(ended.ended_at - stop_at) * 1000:.1f} ms "
          "after the stop frame was sent")
    assert len(scene.api.requests) == 1


async def test_error_event_mid_stream_keeps_the_partial_and_hides_the_body(
        scene: Scene) -> None:
    # The fake's in-stream error event carries a key; users get a summary without it.
    scene.api.script(Reply.text("half ", "way", end="error"))
    async with scene.session() as s:
        ack, done = await s.ask("go on")
        assert done["status"] == "error" and done["error"]["code"] == "provider_error"
        partial = s.text_of(done)
        assert partial == "half way"
        assert await sql_message(s.srv, ack["assistant"]) == (partial, "error")
        await s.generation(ack["gen"])  # its metadata.errors are checked for leaks too
    assert len(scene.api.requests) == 1
    assert not scene.leaks()


async def test_stall_before_the_first_token_is_retried(scene: Scene) -> None:
    scene.api.script(Reply.text(end="stall"))  # headers, then nothing
    async with scene.session() as s:
        ack, done = await s.ask("wake up")
        assert done["status"] == "completed"
        assert s.text_of(done) == "Hello, world!"
        meta = (await s.generation(ack["gen"]))["metadata"]
        assert meta["retries"] == 1 and "sent nothing" in meta["errors"][0]
    first, _second = scene.api.requests
    assert first.disconnected, f"the stalled response ended by {first.ended_by}"


async def test_stop_while_waiting_to_retry_makes_no_more_requests(scene: Scene) -> None:
    scene.api.script(Reply.error(429, headers={"Retry-After": "5"}))
    async with scene.session() as s:
        ack = await s.send("never mind")
        await s.tab.wait_for("start", lambda e: e["gen"] == ack["gen"])
        await scene.api.wait_ended()  # the 429 has been answered: chatcast now waits
        stopped = await s.tab.request({"type": "stop", "gen": ack["gen"]})
        assert stopped["type"] == "ack", stopped
        done = await s.tab.wait_done(ack["gen"])
        assert done["status"] == "stopped"
        assert s.text_of(done) == ""
        assert await sql_message(s.srv, ack["assistant"]) == ("", "stopped")
    await asyncio.sleep(0.2)
    assert len(scene.api.requests) == 1
