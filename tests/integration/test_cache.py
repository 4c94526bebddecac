"""The response cache through real server processes talking to the fake OpenAI API (which
records every request, so a cached answer provably never reached the provider)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.conftest import ServerFactory
from tests.fakes import FakeServer, Reply, openai_fake
from tests.helpers.clients import WSClient
from tests.helpers.metrics import sample
from tests.helpers.server import ServerProcess
from tests.integration.conftest import User, make_user

ANSWER = ("The ", "answer ", "is ", "forty-two.")


@pytest.fixture
def api() -> Iterator[FakeServer]:
    with FakeServer(openai_fake.app) as fake:
        fake.default = Reply.text(*ANSWER)
        yield fake


def env(api: FakeServer, **extra: str) -> dict[str, str]:
    return {
        "CHATCAST_PROVIDER": "openai", "CHATCAST_MODEL": "gpt-fake",
        "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": f"{api.url}/v1",
        "CHATCAST_PROVIDER_MAX_RETRIES": "0", "CHATCAST_PROVIDER_IDLE_TIMEOUT_S": "2",
        "CHATCAST_SYSTEM_PROMPT": "Be brief.",
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        **{f"CHATCAST_{k.upper()}": v for k, v in extra.items()},
    }


async def user_of(srv: ServerProcess) -> AsyncIterator[User]:
    async for u in make_user(srv):
        yield u


class Chat:
    """One chat watched by one or more tabs of one user."""

    def __init__(self, user: User, chat: str, tabs: list[WSClient]) -> None:
        self.user, self.chat, self.tabs = user, chat, tabs

    @classmethod
    async def open(cls, user: User, tabs: int = 1) -> Chat:
        chat = await user.new_chat()
        opened = [await user.ws() for _ in range(tabs)]
        for tab in opened:
            await tab.subscribe(chat)
        return cls(user, chat, opened)

    async def ask(self, content: str) -> dict[str, Any]:
        """Send; wait until every tab has the `done` and assembled the same text."""
        ack = await self.tabs[0].request({"type": "send", "chat": self.chat,
                                          "content": content})
        assert ack["type"] == "ack", ack
        dones = [await tab.wait_done(ack["gen"]) for tab in self.tabs]
        for tab, done in zip(self.tabs, dones, strict=True):
            tab.assembler(self.chat).check_done(done)
        return dones[0]

    def deltas(self, gen: str, tab: int = 0) -> int:
        return sum(1 for e in self.tabs[tab].received
                   if e["type"] == "delta" and e["gen"] == gen)

    async def close(self) -> None:
        for tab in self.tabs:
            await tab.close()


async def lookups(user: User, use: str, result: str) -> float:
    return await sample(user.http, "chatcast_cache_lookups_total", use=use, result=result)


async def test_identical_request_at_temperature_0_is_answered_from_the_cache(
        server: ServerFactory, api: FakeServer) -> None:
    srv = await server(env=env(api, cache="true", temperature="0"))
    async for alice in user_of(srv):
        first = await Chat.open(alice)
        done = await first.ask("What is the answer?")
        assert done["message"]["content"] == "".join(ANSWER)
        assert done["message"]["metadata"] is None
        assert len(api.requests) == 1
        assert api.requests[0].body["temperature"] == 0

        # Another chat, same conversation: every tab gets the answer, nothing goes upstream.
        second = await Chat.open(alice, tabs=2)
        done = await second.ask("What is the answer?")
        assert len(api.requests) == 1
        assert done["message"]["content"] == "".join(ANSWER)
        meta = done["message"]["metadata"]
        assert meta["cached"] is True and meta["cache"] == "hit" and meta["cached_at"]
        assert second.deltas(done["gen"], 0) == second.deltas(done["gen"], 1) == 1  # at once
        gen = (await alice.http.get(f"/api/generations/{done['gen']}")).json()
        assert gen["metadata"]["cached"] is True and gen["metadata"]["provider"] == "openai"
        [stored] = [m for m in await alice.messages(second.chat) if m["role"] == "assistant"]
        assert stored["metadata"]["cached"] is True  # in history and snapshots too
        assert await lookups(alice, "answer", "miss") == 1
        assert await lookups(alice, "answer", "hit") == 1
        assert await sample(alice.http, "chatcast_cache_stores_total") == 1

        # The history is part of the request: asking again in the first chat is new.
        done = await first.ask("What is the answer?")
        assert done["message"]["metadata"] is None and len(api.requests) == 2

        # A regenerate asks the provider (its user wants a fresh answer).
        ack = await second.tabs[0].request({"type": "regenerate", "chat": second.chat})
        done = await second.tabs[0].wait_done(ack["gen"])
        assert done["message"]["metadata"] is None and len(api.requests) == 3

        # Another model is another request.
        r = await alice.http.patch(f"/api/chats/{second.chat}", json={"model": "gpt-other"})
        assert r.status_code == 200
        third = await Chat.open(alice)
        await alice.http.patch(f"/api/chats/{third.chat}", json={"model": "gpt-other"})
        done = await third.ask("What is the answer?")
        assert done["message"]["metadata"] is None and len(api.requests) == 4
        assert api.requests[-1].body["model"] == "gpt-other"
        for chat in (first, second, third):
            await chat.close()

    # Never across users unless configured so.
    async for bob in user_of(srv):
        chat = await Chat.open(bob)
        done = await chat.ask("What is the answer?")
        assert done["message"]["metadata"] is None and len(api.requests) == 5
        await chat.close()


async def test_a_cached_answer_with_reasoning_replays_both_parts(
        server: ServerFactory, api: FakeServer) -> None:
    api.default = Reply.thinking(("Let me ", "think."), ANSWER)
    srv = await server(env=env(api, cache="true", temperature="0"))
    async for alice in user_of(srv):
        first = await Chat.open(alice)
        done = await first.ask("What is the answer?")
        assert done["message"]["reasoning"] == "Let me think."
        second = await Chat.open(alice, tabs=2)
        done = await second.ask("What is the answer?")
        assert len(api.requests) == 1 and done["message"]["metadata"]["cache"] == "hit"
        message = done["message"]
        assert (message["content"], message["reasoning"]) == ("".join(ANSWER), "Let me think.")
        assert message["reasoning_started_at"] and message["reasoning_ended_at"]
        for tab in second.tabs:  # both parts streamed, the reasoning first
            parts = [e.get("part", "text") for e in tab.received
                     if e["type"] == "delta" and e["gen"] == done["gen"]]
            assert parts == ["reasoning", "text"]
            assert tab.assembler(second.chat).reasoning(done["gen"]) == "Let me think."
        [stored] = [m for m in await alice.messages(second.chat) if m["role"] == "assistant"]
        assert stored["reasoning"] == "Let me think."
        for chat in (first, second):
            await chat.close()


async def test_not_at_temperature_0_nothing_is_cached(server: ServerFactory,
                                                      api: FakeServer) -> None:
    srv = await server(env=env(api, cache="true"))  # the provider's default temperature
    async for alice in user_of(srv):
        for _ in range(2):
            chat = await Chat.open(alice)
            done = await chat.ask("What is the answer?")
            assert done["message"]["metadata"] is None
            await chat.close()
        assert len(api.requests) == 2 and "temperature" not in api.requests[0].body
        assert await lookups(alice, "answer", "miss") == 0
        assert await sample(alice.http, "chatcast_cache_stores_total") == 0


async def test_ttl_size_bound_and_pace(server: ServerFactory, api: FakeServer) -> None:
    srv = await server(env=env(api, cache="true", temperature="0", cache_ttl_s="1",
                               cache_max_entries="2", cache_tokens_per_s="200"))
    async for alice in user_of(srv):
        async def ask(question: str, user: User = alice) -> dict[str, Any]:
            chat = await Chat.open(user)
            try:
                done = await chat.ask(question)
                done["deltas"] = chat.deltas(done["gen"])
                return done
            finally:
                await chat.close()

        await ask("one?")
        hit = await ask("one?")
        assert hit["message"]["metadata"]["cached"] is True
        assert hit["deltas"] == len(ANSWER)  # paced: one word per delta
        assert len(api.requests) == 1
        await ask("two?")
        await ask("three?")  # a third entry: the least recently used ("one?") goes
        assert len(api.requests) == 3
        assert (await ask("three?"))["message"]["metadata"]["cached"] is True
        assert (await ask("one?"))["message"]["metadata"] is None
        assert len(api.requests) == 4
        await asyncio.sleep(1.2)  # the TTL is a duration: nothing to await but time
        assert (await ask("one?"))["message"]["metadata"] is None
        assert len(api.requests) == 5


async def test_shared_through_redis_across_processes_and_users(
        server: ServerFactory, api: FakeServer, redis_url: str) -> None:
    common = env(api, cache="true", temperature="0", cache_shared="true")
    one = await server(env={**common, "REDIS_URL": redis_url})
    two = await server(env={**common, "REDIS_URL": redis_url,
                            "DATABASE_URL": one.database_url})
    question = f"shared question {api.port}?"
    async for alice in user_of(one):
        chat = await Chat.open(alice)
        assert (await chat.ask(question))["message"]["metadata"] is None
        await chat.close()
    assert len(api.requests) == 1
    async for bob in user_of(two):  # another process, another user
        chat = await Chat.open(bob)
        done = await chat.ask(question)
        assert done["message"]["metadata"]["cached"] is True
        assert await lookups(bob, "answer", "hit") == 1
        await chat.close()
    assert len(api.requests) == 1


async def test_cache_as_the_last_fallback(server: ServerFactory, api: FakeServer) -> None:
    srv = await server(env=env(api, cache_last_fallback="true",
                               provider_nonstream_fallback="true"))
    async for alice in user_of(srv):
        chat = await Chat.open(alice)
        assert (await chat.ask("Still there?"))["message"]["metadata"] is None
        await chat.close()
        api.default = Reply.error(503)  # the provider is down, streaming or not

        chat = await Chat.open(alice)
        done = await chat.ask("Still there?")
        assert done["status"] == "completed" and done["message"]["content"] == "".join(ANSWER)
        assert done["message"]["metadata"]["cache"] == "last_fallback"
        assert [r.streaming for r in api.requests] == [True, True, False]
        assert await lookups(alice, "last_fallback", "hit") == 1
        assert await lookups(alice, "answer", "miss") == 0  # no temperature 0: no lookups
        assert await sample(alice.http, "chatcast_provider_failures_total",
                            provider="openai", scenario="fallback_used") == 1

        done = await chat.ask("Something new?")  # nothing cached for this one
        assert done["status"] == "error" and done["error"]["code"] == "provider_unavailable"
        assert await lookups(alice, "last_fallback", "miss") == 1
        await chat.close()


async def test_last_fallback_is_off_by_default(server: ServerFactory, api: FakeServer) -> None:
    srv = await server(env=env(api, cache="true", temperature="0"))
    async for alice in user_of(srv):
        chat = await Chat.open(alice)
        await chat.ask("Hello?")
        api.default = Reply.error(503)
        await chat.close()
        chat = await Chat.open(alice)
        ack = await chat.tabs[0].request({"type": "regenerate", "chat": chat.chat})
        assert ack["type"] == "error"  # nothing to regenerate in a new chat: ask instead
        done = await chat.ask("Hello?")
        assert done["message"]["metadata"]["cache"] == "hit"  # a hit needs no provider
        ack = await chat.tabs[0].request({"type": "regenerate", "chat": chat.chat})
        done = await chat.tabs[0].wait_done(ack["gen"])
        assert done["status"] == "error"  # a regenerate asks the provider, which is down
        assert await lookups(alice, "last_fallback", "hit") == 0
        await chat.close()
