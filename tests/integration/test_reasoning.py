"""Reasoning through a real server process, from each provider fake (OpenAI-compatible with
`reasoning`, with `reasoning_content`, with both mirrored, with inline `<think>`; OpenAI's
Responses API; Gemini thoughts) and the demo model's thinking mode.

Two tabs on one chat each assemble reasoning and answer exactly equal to SQL and to what
`done` verifies; a tab that reconnects mid-reasoning with its cursor gets exactly the rest of
both; a client that knows nothing of reasoning (protocol v1) still gets the exact answer and
a `done` it can verify; stop during reasoning keeps the reasoning, status `stopped`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatcast.providers.demo import compose_reasoning, compose_reply
from tests.fakes import FakeServer, Reply, gemini_fake, openai_fake
from tests.helpers.assemble import Assembler
from tests.helpers.clients import SSEClient, WSClient
from tests.helpers.server import ServerProcess
from tests.integration.conftest import User, sql_rows

THOUGHTS = tuple(f"step {i} of *thinking*; " for i in range(30))
ANSWER = ("The ", "answer ", "is ", "**42**", ".")
DELAY = 0.03  # between chunks: reasoning lasts about a second
DEMO_PROMPT = "what is a cursor?"


@dataclass(frozen=True)
class Source:
    server: str  # which server configuration streams it
    reply: Reply | None  # the fake's script (None: the demo model)
    reasoning: str
    answer: str
    reasoning_tokens: int | None


def _thinking(dialect: str) -> Reply:
    return Reply.thinking(THOUGHTS, ANSWER, dialect=dialect, delay_s=DELAY)


SOURCES = {
    "openai-reasoning": Source("openai", _thinking("reasoning"), "".join(THOUGHTS),
                               "".join(ANSWER), len(THOUGHTS)),
    "openai-reasoning_content": Source("openai", _thinking("reasoning_content"),
                                       "".join(THOUGHTS), "".join(ANSWER), len(THOUGHTS)),
    "openai-both": Source("openai", _thinking("both"), "".join(THOUGHTS), "".join(ANSWER),
                          len(THOUGHTS)),
    "openai-inline": Source("openai", Reply.text("<thi", "nk>\n", *THOUGHTS, "</th", "ink>",
                                                 "\n\n", *ANSWER, delay_s=DELAY),
                            "".join(THOUGHTS), "".join(ANSWER), None),
    "openai-responses": Source("openai-responses", _thinking("reasoning"), "".join(THOUGHTS),
                               "".join(ANSWER), len(THOUGHTS)),
    "gemini": Source("gemini", _thinking("reasoning"), "".join(THOUGHTS), "".join(ANSWER),
                     len(THOUGHTS)),
    "demo": Source("demo", None, "".join(compose_reasoning(DEMO_PROMPT)),
                   "".join(compose_reply(DEMO_PROMPT)), len(compose_reasoning(DEMO_PROMPT))),
}


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeServer]]:
    with FakeServer(openai_fake.app) as openai_api, FakeServer(gemini_fake.app) as gemini_api:
        yield {"openai": openai_api, "gemini": gemini_api}


def _env(config: str, fakes: dict[str, FakeServer]) -> dict[str, str]:
    env = {"CHATCAST_CHECKPOINT_INTERVAL_S": "0.1", "NO_PROXY": "127.0.0.1",
           "no_proxy": "127.0.0.1", "CHATCAST_PROVIDER_IDLE_TIMEOUT_S": "5"}
    if config.startswith("openai"):
        env |= {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": f"{fakes['openai'].url}/v1",
                "CHATCAST_PROVIDER": "openai", "CHATCAST_MODEL": "gpt-fake"}
        if config == "openai-responses":
            env["CHATCAST_OPENAI_WIRE"] = "responses"
    elif config == "gemini":
        env |= {"GEMINI_API_KEY": "gm-test", "GEMINI_BASE_URL": fakes["gemini"].url,
                "CHATCAST_PROVIDER": "gemini", "CHATCAST_MODEL": "gemini-fake"}
    else:
        env |= {"CHATCAST_PROVIDER": "demo", "CHATCAST_MODEL": "demo-thinking",
                "CHATCAST_DEMO_TOKENS_PER_S": "30"}
    return env


class Servers:
    def __init__(self, fakes: dict[str, FakeServer], root: Path) -> None:
        self.fakes, self.root = fakes, root
        self.started: dict[str, ServerProcess] = {}

    async def get(self, config: str) -> ServerProcess:
        if config not in self.started:
            srv = ServerProcess(self.root / config, env=_env(config, self.fakes))
            self.started[config] = srv
            await srv.start()
        return self.started[config]


@pytest.fixture(scope="module")
async def servers(fakes: dict[str, FakeServer],
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Servers]:
    pool = Servers(fakes, tmp_path_factory.mktemp("reasoning"))
    yield pool
    for config, srv in pool.started.items():
        code = await srv.stop()
        print(f"--- {config} server (exit {code}):\n{srv.log_tail(20)}")


@pytest.fixture
async def user_of(servers: Servers, fakes: dict[str, FakeServer]
                  ) -> AsyncIterator[Any]:
    clients: list[httpx.AsyncClient] = []

    async def make(name: str, reply: Reply | None = None) -> User:
        """A new user of the server of source `name`, whose fake answers with `reply` (by
        default the source's own)."""
        source = SOURCES[name]
        if source.reply is not None:
            api = fakes["gemini" if source.server == "gemini" else "openai"]
            api.requests.clear()
            sentinel = Reply()
            api.default = sentinel
            while api.next_reply() is not sentinel:  # forget what earlier tests left
                pass
            api.script(then=reply or source.reply)
        srv = await servers.get(source.server)
        http = httpx.AsyncClient(base_url=srv.url, timeout=30)
        clients.append(http)
        assert (await http.get("/api/chats")).status_code == 200
        return User(srv, http)

    yield make
    for http in clients:
        await http.aclose()


async def sql_answer(srv: ServerProcess, message_id: str) -> dict[str, Any]:
    [row] = await sql_rows(srv, "SELECT content, reasoning, reasoning_started_at, "
                                "reasoning_ended_at, status, usage FROM message WHERE id = :id",
                           id=message_id)
    return dict(row._mapping)


def _when(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def reasoning_deltas(tab: WSClient | SSEClient, gen: str) -> int:
    return sum(1 for e in tab.received if e.get("type") == "delta" and e["gen"] == gen
               and e.get("part") == "reasoning")


async def wait_reasoning(tab: WSClient | SSEClient, gen: str, count: int) -> None:
    while reasoning_deltas(tab, gen) < count:
        await tab.wait_for("delta", lambda e: e["gen"] == gen, timeout=10)


@contextlib.asynccontextmanager
async def mid_reasoning(user_of: Any, name: str = "demo",
                        ) -> AsyncIterator[tuple[User, str, WSClient, dict[str, Any]]]:
    """`name`'s user with a tab on a new chat whose answer is thinking (three reasoning
    deltas in): (user, chat, tab, the send's ack)."""
    user: User = await user_of(name)
    chat = await user.new_chat()
    async with await user.ws() as tab:
        await tab.subscribe(chat)
        ack = await tab.request({"type": "send", "chat": chat, "content": DEMO_PROMPT})
        await wait_reasoning(tab, ack["gen"], 3)
        yield user, chat, tab, ack


def v1_client(events: list[dict[str, Any]], chat: str) -> Assembler:
    """What a client written against protocol v1 assembles from the same events."""
    return Assembler(chat, v1=True).feed(events)


@pytest.mark.parametrize("name", list(SOURCES))
async def test_two_tabs_and_a_reconnect_mid_reasoning_assemble_both_parts_exactly(
        user_of: Any, name: str) -> None:
    source: Source = SOURCES[name]
    user: User = await user_of(name)
    chat = await user.new_chat()
    async with await user.ws() as tab_a:
        assert (await tab_a.subscribe(chat))["type"] == "ack"
        tab_b = await user.ws()
        assert (await tab_b.subscribe(chat))["type"] == "ack"
        ack = await tab_a.request({"type": "send", "chat": chat, "content": DEMO_PROMPT})
        gen, mid = ack["gen"], ack["assistant"]

        # Tab B goes away after a few reasoning deltas and comes back with its cursor.
        await wait_reasoning(tab_b, gen, 3)
        state = tab_b.assemblers
        cursor = state[chat].cursor
        assert cursor is not None and cursor.gen == gen and cursor.seq >= 3
        assert state[chat].text(gen) == "", "still reasoning: no answer text yet"
        await tab_b.close()
        async with await WSClient.connect(user.srv.ws_url, cookie=user.cookie,
                                          assemblers=state) as tab_b2:
            assert (await tab_b2.subscribe(chat, cursor.as_dict()))["type"] == "ack"
            done_a = await tab_a.wait_done(gen)
            done_b = await tab_b2.wait_done(gen)
            resumed = [e for e in tab_b2.received if e.get("chat") == chat]
            assert all(e["type"] != "snapshot" for e in resumed), "a usable cursor resumes"
            assert min(e["seq"] for e in resumed if e["type"] == "delta") == cursor.seq + 1
        await tab_b.close()

    assert done_a["status"] == done_b["status"] == "completed"
    row = await sql_answer(user.srv, mid)
    for assembler in (tab_a.assembler(chat), state[chat]):
        assert assembler.check_done(done_a) == row["content"] == source.answer
        assert assembler.reasoning(gen) == row["reasoning"] == source.reasoning
    # A v1 client sees the same answer text and can verify the same done.
    old = v1_client(tab_a.received, chat)
    assert old.check_done(done_a) == source.answer
    # Reasoning first, then text: the part changes once; every delta says its part.
    parts = [e["part"] for e in tab_a.received if e["type"] == "delta" and e["gen"] == gen]
    assert parts == sorted(parts, key=lambda p: p != "reasoning") and set(parts) == {
        "reasoning", "text"}
    started, ended = row["reasoning_started_at"], row["reasoning_ended_at"]
    assert started is not None and ended is not None and _when(started) <= _when(ended)
    final = done_a["message"]
    assert final["reasoning_started_at"] and final["reasoning_ended_at"]
    usage = done_a.get("usage") or {}
    assert usage.get("reasoning_tokens") == source.reasoning_tokens


@pytest.mark.parametrize("name", ["openai-reasoning", "openai-inline", "openai-responses",
                                  "gemini", "demo"])
async def test_stop_during_reasoning_keeps_it(user_of: Any, fakes: dict[str, FakeServer],
                                              name: str) -> None:
    source: Source = SOURCES[name]
    async with mid_reasoning(user_of, name) as (user, chat, tab, ack):
        gen = ack["gen"]
        assert (await tab.request({"type": "stop", "gen": gen}))["type"] == "ack"
        done = await tab.wait_done(gen)
    assert done["status"] == "stopped"
    row = await sql_answer(user.srv, ack["assistant"])
    assembled = tab.assembler(chat)
    assert assembled.check_done(done) == row["content"] == ""
    kept = assembled.reasoning(gen)
    assert kept == row["reasoning"] and kept and source.reasoning.startswith(kept)
    assert kept != source.reasoning, "stopped before the reasoning was over"
    assert row["status"] == "stopped" and row["reasoning_ended_at"] is not None
    if source.reply is not None:  # the stop reached the upstream connection
        api = fakes["gemini" if source.server == "gemini" else "openai"]
        assert (await api.wait_ended()).disconnected
    assert v1_client(tab.received, chat).check_done(done) == ""


async def test_continue_after_a_stop_during_reasoning_thinks_again(user_of: Any) -> None:
    async with mid_reasoning(user_of) as (user, chat, tab, ack):
        await tab.request({"type": "stop", "gen": ack["gen"]})
        await tab.wait_done(ack["gen"])
        kept = tab.assembler(chat).reasoning(ack["gen"])
        again = await tab.request({"type": "continue", "gen": ack["gen"]})
        assert again["type"] == "ack", again
        done = await tab.wait_done(again["gen"])
    row = await sql_answer(user.srv, ack["assistant"])
    source = SOURCES["demo"]
    assert done["status"] == "completed" and row["content"] == source.answer
    assert row["reasoning"] == kept + "\n\n" + source.reasoning
    assert tab.assembler(chat).reasoning(again["gen"]) == row["reasoning"]


async def test_sse_resumes_mid_reasoning_from_last_event_id(user_of: Any) -> None:
    user: User = await user_of("demo")
    chat = await user.new_chat()
    url = f"/api/chats/{chat}/events"
    async with SSEClient(user.http, url) as first:
        await first.wait_for("snapshot")
        r = await user.http.post(f"/api/chats/{chat}/messages", json={"content": DEMO_PROMPT})
        gen, mid = r.json()["gen"], r.json()["message"]
        await wait_reasoning(first, gen, 3)
        last_id = first.last_event_id
        state = first.assemblers
    assert last_id is not None and last_id.startswith(f"{gen}:")
    async with SSEClient(user.http, url, last_event_id=last_id, assemblers=state) as second:
        done = await second.wait_done(gen)
        assert all(e["type"] != "snapshot" for e in second.received)
    source = SOURCES["demo"]
    assert state[chat].check_done(done) == source.answer
    assert state[chat].reasoning(gen) == source.reasoning
    assert (await sql_answer(user.srv, done["message"]["id"]))["reasoning"] == source.reasoning
    assert mid  # the user message


async def test_snapshot_mid_reasoning_carries_it_and_history_keeps_it(user_of: Any) -> None:
    async with mid_reasoning(user_of) as (user, chat, tab, ack):
        async with await user.ws() as late:  # joins mid-reasoning, with no cursor
            await late.subscribe(chat)
            snapshot = next(e for e in late.received if e["type"] == "snapshot")
            active = snapshot["active"]
            assert active["gen"] == ack["gen"] and active["content"] == ""
            assert active["reasoning"] and SOURCES["demo"].reasoning.startswith(
                active["reasoning"])
            assert active["reasoning_started_at"] and active["reasoning_ended_at"] is None
            done = await late.wait_done(ack["gen"])
            assert late.assembler(chat).reasoning(ack["gen"]) == SOURCES["demo"].reasoning
        await tab.wait_done(ack["gen"])
    [_, answer] = await user.messages(chat)
    assert answer["reasoning"] == SOURCES["demo"].reasoning
    assert answer["reasoning_started_at"] <= answer["reasoning_ended_at"]
    assert done["reasoning_length"] == len(SOURCES["demo"].reasoning)
    gen = (await user.http.get(f"/api/generations/{ack['gen']}")).json()
    assert gen["reasoning"] == SOURCES["demo"].reasoning


async def test_an_error_mid_reasoning_keeps_it(user_of: Any) -> None:
    user: User = await user_of("openai-reasoning",
                               Reply.thinking(THOUGHTS[:5], (), delay_s=DELAY, end="drop"))
    chat = await user.new_chat()
    async with await user.ws() as tab:
        await tab.subscribe(chat)
        ack = await tab.request({"type": "send", "chat": chat, "content": "fail"})
        done = await tab.wait_done(ack["gen"])
    assert done["status"] == "error" and done["error"]["code"] == "provider_error"
    row = await sql_answer(user.srv, ack["assistant"])
    assert row["reasoning"] == "".join(THOUGHTS[:5]) == tab.assembler(chat).reasoning(ack["gen"])
    assert row["content"] == "" and row["status"] == "error"


async def test_a_crash_mid_reasoning_keeps_it(server: Any, redis_server: Any,
                                              make_database: Any) -> None:
    """The owner is killed (SIGKILL) while the model reasons: the other process takes the
    generation for dead, and what the tabs saw of the reasoning is kept."""
    import signal

    redis = redis_server()
    env = {"REDIS_URL": redis.url, "DATABASE_URL": make_database("postgresql"),
           "CHATCAST_PROVIDER": "demo", "CHATCAST_MODEL": "demo-thinking",
           "CHATCAST_DEMO_TOKENS_PER_S": "10", "CHATCAST_LEASE_TTL_S": "3",
           "CHATCAST_CHECKPOINT_INTERVAL_S": "0.5"}
    owner, other = await server(env=env), await server(env=env)
    async with httpx.AsyncClient(base_url=owner.url, timeout=30) as http:
        assert (await http.get("/api/chats")).status_code == 200
        user = User(owner, http)
        chat = await user.new_chat()
        async with await WSClient.connect(other.ws_url, cookie=user.cookie) as watcher:
            await watcher.subscribe(chat)
            async with await user.ws() as tab:
                ack = await tab.request({"type": "send", "chat": chat, "content": DEMO_PROMPT})
            await wait_reasoning(watcher, ack["gen"], 5)
            owner.kill(signal.SIGKILL)
            done = await watcher.wait_done(ack["gen"], timeout=20)
    assert done["status"] == "interrupted"
    row = await sql_answer(other, ack["assistant"])
    kept = watcher.assembler(chat).reasoning(ack["gen"])
    assert row["reasoning"] == kept and len(kept) > 0
    assert SOURCES["demo"].reasoning.startswith(kept)
    assert row["reasoning_ended_at"] is not None


@pytest.mark.parametrize(("raw", "reasoning", "answer"), [
    # reasoning after the answer started: kept, in its own part, the answer intact
    (({"reasoning": "first "}, {"content": "Answer "}, {"reasoning": "late"},
      {"content": "goes on."}), "first late", "Answer goes on."),
    # an empty reasoning field on every chunk
    (tuple({"content": t, "reasoning": "", "reasoning_content": ""} for t in ANSWER), "",
     "".join(ANSWER)),
    # a reasoning_details entry of an unknown type, then one that is readable
    (({"content": "", "reasoning_details": [{"type": "reasoning.hologram"}]},
      {"content": "Hi", "reasoning_details": [{"type": "reasoning.text", "text": "ok"}]}),
     "ok", "Hi"),
])
async def test_bad_reasoning_input_loses_no_text(user_of: Any, raw: tuple[Any, ...],
                                                 reasoning: str, answer: str) -> None:
    user: User = await user_of("openai-reasoning", Reply(chunks=("x",) * len(raw), raw=raw))
    chat = await user.new_chat()
    async with await user.ws() as tab:
        await tab.subscribe(chat)
        ack = await tab.request({"type": "send", "chat": chat, "content": "odd"})
        done = await tab.wait_done(ack["gen"])
    row = await sql_answer(user.srv, ack["assistant"])
    assert done["status"] == "completed"
    assert (row["reasoning"], row["content"]) == (reasoning, answer)
    assert tab.assembler(chat).reasoning(ack["gen"]) == reasoning
    assert v1_client(tab.received, chat).check_done(done) == answer
    if reasoning and answer:
        assert row["reasoning_ended_at"] is not None
