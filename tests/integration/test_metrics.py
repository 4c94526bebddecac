"""The metrics the design names, read from `/metrics` of a real server process that talks to
the fake OpenAI API (demo as its fallback): answers by terminal status, durations, time to
first answer token, output tokens per second, provider failures by scenario, engagement,
stop latency."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.conftest import ServerFactory
from tests.fakes import FakeServer, Reply, openai_fake
from tests.helpers.clients import WSClient
from tests.helpers.metrics import Samples, scrape
from tests.integration.conftest import User, make_user


@pytest.fixture
def openai_api() -> Iterator[FakeServer]:
    with FakeServer(openai_fake.app) as api:
        yield api


@pytest.fixture
async def user(server: ServerFactory, openai_api: FakeServer) -> AsyncIterator[User]:
    srv = await server(env={
        "CHATCAST_PROVIDER": "openai", "CHATCAST_MODEL": "gpt-fake",
        "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": f"{openai_api.url}/v1",
        "CHATCAST_FALLBACK": "demo", "CHATCAST_DEMO_TOKENS_PER_S": "500",
        "CHATCAST_DEMO_MAX_TOKENS": "8", "CHATCAST_PROVIDER_MAX_RETRIES": "0",
        "CHATCAST_PROVIDER_IDLE_TIMEOUT_S": "2", "CHATCAST_GENERATION_TIMEOUT_S": "5",
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
    })
    async for u in make_user(srv):
        yield u


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def answer(tab: WSClient, chat: str, content: str = "hi") -> dict[str, Any]:
    ack = await tab.request({"type": "send", "chat": chat, "content": content})
    assert ack["type"] == "ack", ack
    done = await tab.wait_done(ack["gen"])
    tab.assembler(chat).check_done(done)
    return done


async def test_answers_by_status_duration_first_token_and_speed(user: User,
                                                                openai_api: FakeServer) -> None:
    openai_api.script(Reply.text("one ", "two ", "three ", "four", delay_s=0.01))
    chat = await user.new_chat()
    before = await scrape(user.http)
    async with await user.ws() as tab:
        await tab.subscribe(chat)
        done = await answer(tab, chat)
    assert done["status"] == "completed" and done["message"]["content"] == "one two three four"
    after = await scrape(user.http)
    assert delta(before, after, "chatcast_generations_total", status="completed") == 1
    assert delta(before, after, "chatcast_generation_duration_seconds_count",
                 status="completed") == 1
    assert delta(before, after, "chatcast_time_to_first_answer_token_seconds_count",
                 provider="openai") == 1
    assert delta(before, after, "chatcast_time_to_first_token_seconds_count",
                 provider="openai") == 1
    assert delta(before, after, "chatcast_output_tokens_per_second_count",
                 provider="openai") == 1
    assert delta(before, after, "chatcast_output_tokens_per_second_sum", provider="openai") > 0
    assert delta(before, after, "chatcast_user_actions_total", action="send") == 1
    assert not any(value for (name, _), value in after.items()
                   if name == "chatcast_provider_failures_total")


async def test_provider_failures_by_scenario(user: User, openai_api: FakeServer) -> None:
    chat = await user.new_chat()
    async with await user.ws() as tab:
        await tab.subscribe(chat)

        # 503 before the first token: the fallback (demo) answers.
        openai_api.script(Reply.error(503))
        before = await scrape(user.http)
        done = await answer(tab, chat)
        after = await scrape(user.http)
        assert done["status"] == "completed"
        name = "chatcast_provider_failures_total"
        assert delta(before, after, name, provider="openai",
                     scenario="before_first_token") == 1
        assert delta(before, after, name, provider="openai", scenario="fallback_used") == 1
        assert delta(before, after, "chatcast_time_to_first_answer_token_seconds_count",
                     provider="demo") == 1

        # Silence before the first token: idle timeout, then the fallback.
        openai_api.script(Reply.text(end="stall"))
        before, done = after, await answer(tab, chat)
        after = await scrape(user.http)
        assert done["status"] == "completed"
        assert delta(before, after, name, provider="openai", scenario="idle_timeout") == 1
        assert delta(before, after, name, provider="openai", scenario="fallback_used") == 1
        assert delta(before, after, name, provider="openai",
                     scenario="before_first_token") == 0

        # The connection cut mid-answer: the partial answer ends in an error.
        openai_api.script(Reply.text("partial ", "answer", end="drop"))
        before, done = after, await answer(tab, chat)
        after = await scrape(user.http)
        assert done["status"] == "error" and done["message"]["content"] == "partial answer"
        assert delta(before, after, name, provider="openai", scenario="mid_stream") == 1
        assert delta(before, after, name, provider="openai", scenario="fallback_used") == 0
        assert delta(before, after, "chatcast_generations_total", status="error") == 1

        # Silence mid-answer.
        openai_api.script(Reply.text("half", end="stall"))
        before, done = after, await answer(tab, chat)
        after = await scrape(user.http)
        assert done["status"] == "error" and done["message"]["content"] == "half"
        assert delta(before, after, name, provider="openai", scenario="idle_timeout") == 1
        assert delta(before, after, name, provider="openai", scenario="mid_stream") == 0

        # Chunks keep coming, but past the wall-clock limit (5 s here).
        openai_api.script(Reply(chunks=tuple(f"w{i} " for i in range(60)), delay_s=0.2))
        before, done = after, await answer(tab, chat)
        after = await scrape(user.http)
        assert done["status"] == "error" and "time limit" in done["error"]["message"]
        assert delta(before, after, name, provider="openai", scenario="wall_clock_limit") == 1
        assert delta(before, after, "chatcast_generation_duration_seconds_count",
                     status="error") == 1


async def test_engagement_and_stop_latency(user: User, openai_api: FakeServer) -> None:
    chat = await user.new_chat()
    long = Reply(chunks=tuple(f"w{i} " for i in range(200)), delay_s=0.005)
    before = await scrape(user.http)
    async with await user.ws() as tab:
        await tab.subscribe(chat)
        openai_api.script(long)
        ack = await tab.request({"type": "send", "chat": chat, "content": "go"})
        await tab.wait_for("delta", lambda e: e.get("gen") == ack["gen"])
        stopped = await tab.request({"type": "stop", "gen": ack["gen"]})
        assert stopped["type"] == "ack"
        done = await tab.wait_done(ack["gen"])
        assert done["status"] == "stopped"

        openai_api.script(Reply.text("more"))
        cont = await tab.request({"type": "continue", "gen": ack["gen"]})
        assert cont["type"] == "ack", cont
        assert (await tab.wait_done(cont["gen"]))["status"] == "completed"

        openai_api.script(Reply.text("again"))
        regen = await tab.request({"type": "regenerate", "chat": chat})
        assert regen["type"] == "ack", regen
        assert (await tab.wait_done(regen["gen"]))["status"] == "completed"
    after = await scrape(user.http)
    for action in ("send", "stop", "continue", "regenerate"):
        assert delta(before, after, "chatcast_user_actions_total", action=action) == 1, action
    assert delta(before, after, "chatcast_generations_total", status="stopped") == 1
    assert delta(before, after, "chatcast_stop_latency_seconds_count") == 1
    assert delta(before, after, "chatcast_stop_latency_seconds_sum") > 0
    # A refused command counts nothing.
    async with await user.ws() as tab:
        bad = await tab.request({"type": "continue", "gen": "no-such-generation"})
        assert bad["type"] == "error"
    final = await scrape(user.http)
    assert delta(after, final, "chatcast_user_actions_total", action="continue") == 0
