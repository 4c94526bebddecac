"""Reasoning from every provider, through the real SDKs against fakes that speak each dialect,
and `Registry.stream` (which merges what queues up: both parts must survive that)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from chatcast.providers import Chunk, ProviderStreamBroken, StreamParams
from chatcast.providers.base import ChatMessage, Provider
from chatcast.providers.demo import DemoProvider, compose_reasoning, compose_reply
from chatcast.providers.gemini import GeminiProvider
from chatcast.providers.openai import OpenAIProvider
from chatcast.providers.resilience import guarded
from tests.fakes import FakeServer, Reply
from tests.fakes.openai_fake import LEAKY_SECRET
from tests.providers.conftest import MESSAGES, POLICY, Outcome, consume, registry
from tests.providers.scenarios import Api, ProviderScenarios

THOUGHTS = ("The user ", "says hello. ", "**Greet** back.")
ANSWER = ("Hello", ", ", "there!")


def parts(outcome: Outcome) -> tuple[str, str]:
    assert outcome.error is None, outcome.error
    return ("".join(c.reasoning for c in outcome.chunks),
            "".join(c.text for c in outcome.chunks))


def reasoning_tokens(outcome: Outcome) -> int | None:
    usages = [c.usage for c in outcome.chunks if c.usage is not None]
    return usages[-1].reasoning_tokens if usages else None


def openai_provider_for(api: FakeServer, **options: Any) -> OpenAIProvider:
    return OpenAIProvider(api_key="sk-test", base_url=f"{api.url}/v1",
                          default_model="gpt-fake", connect_timeout_s=2,
                          idle_timeout_s=POLICY.idle_timeout_s, **options)


@pytest.fixture
async def responses_provider(openai_api: FakeServer) -> AsyncIterator[OpenAIProvider]:
    provider = openai_provider_for(openai_api, wire="responses")
    # One answer first: the SDK finishes building itself on its first request (a few
    # hundred ms on a busy machine), which would merge the first test's 20 ms-apart chunks.
    async for _ in provider.stream(MESSAGES, model="gpt-fake", params=StreamParams()):
        pass
    openai_api.requests.clear()
    yield provider
    await provider.aclose()


# -- OpenAI-compatible chat completions -----------------------------------------------

@pytest.mark.parametrize("dialect", ["reasoning", "reasoning_content", "both", "openrouter"])
async def test_each_dialect_gives_the_reasoning_once(
        openai_api: FakeServer, openai_provider: OpenAIProvider, dialect: str) -> None:
    openai_api.script(Reply.thinking(THOUGHTS, ANSWER, dialect=dialect))
    outcome = await consume(registry(openai_provider))
    assert parts(outcome) == ("".join(THOUGHTS), "".join(ANSWER))
    assert reasoning_tokens(outcome) == 3 and outcome.usage == (7, 6)


@pytest.mark.parametrize("pieces", [
    ("<think>", "The user says hello.", "</think>", "\n\nHello, there!"),
    ("<th", "ink>The user says", " hello.</th", "ink>\n", "\nHello, there!"),
    ("<think>The user says hello.</think>Hello, there!",),
])
async def test_inline_think_tags_are_split_out(openai_api: FakeServer,
                                               openai_provider: OpenAIProvider,
                                               pieces: tuple[str, ...]) -> None:
    openai_api.script(Reply.text(*pieces))
    outcome = await consume(registry(openai_provider))
    assert parts(outcome) == ("The user says hello.", "Hello, there!")


async def test_inline_parsing_off_leaves_the_tags_in_the_text(openai_api: FakeServer) -> None:
    provider = openai_provider_for(openai_api, think_tags=None)
    try:
        openai_api.script(Reply.text("<think>hm</think>", "Hi"))
        assert parts(await consume(registry(provider))) == ("", "<think>hm</think>Hi")
    finally:
        await provider.aclose()


async def test_a_model_that_starts_open_only_writes_the_closing_tag(
        openai_api: FakeServer) -> None:
    provider = openai_provider_for(openai_api, think_open_models="(?i)r1")
    try:
        openai_api.script(Reply.text("Okay, ", "a greeting.", "</think>", "\n\nHello!"))
        outcome = await consume(registry(provider), messages=MESSAGES)
        assert parts(outcome) == ("", "Okay, a greeting.\n\nHello!")  # gpt-fake: not named
        openai_api.script(Reply.text("Okay, ", "a greeting.", "</think>", "\n\nHello!"))
        chunks = [c async for c in provider.stream(MESSAGES, model="deepseek-r1-distill",
                                                   params=StreamParams())]
        assert "".join(c.reasoning for c in chunks) == "Okay, a greeting."
        assert "".join(c.text for c in chunks) == "Hello!"
    finally:
        await provider.aclose()


# Bad input: each handled without losing text.

async def test_reasoning_after_the_answer_started_is_kept(openai_api: FakeServer,
                                                          openai_provider: OpenAIProvider
                                                          ) -> None:
    openai_api.script(Reply(chunks=("x",) * 4, raw=(
        {"reasoning": "first "}, {"content": "Answer "}, {"reasoning": "second thought"},
        {"content": "goes on."})))
    outcome = await consume(registry(openai_provider))
    assert parts(outcome) == ("first second thought", "Answer goes on.")


async def test_only_reasoning_and_no_answer(openai_api: FakeServer,
                                            openai_provider: OpenAIProvider) -> None:
    openai_api.script(Reply.thinking(THOUGHTS, ()))
    assert parts(await consume(registry(openai_provider))) == ("".join(THOUGHTS), "")


async def test_an_unclosed_think_tag_keeps_its_text_as_reasoning(
        openai_api: FakeServer, openai_provider: OpenAIProvider) -> None:
    openai_api.script(Reply.text("<think>", "I will answer 4", " but never close"))
    assert parts(await consume(registry(openai_provider))) == (
        "I will answer 4 but never close", "")


async def test_an_empty_reasoning_field_on_every_chunk(openai_api: FakeServer,
                                                       openai_provider: OpenAIProvider
                                                       ) -> None:
    openai_api.script(Reply(chunks=ANSWER, raw=tuple(
        {"content": t, "reasoning": "", "reasoning_content": ""} for t in ANSWER)))
    outcome = await consume(registry(openai_provider))
    assert parts(outcome) == ("", "".join(ANSWER))
    assert all(not c.reasoning for c in outcome.chunks)


async def test_a_reasoning_details_entry_of_an_unknown_type(
        openai_api: FakeServer, openai_provider: OpenAIProvider) -> None:
    openai_api.script(Reply(chunks=ANSWER, raw=(
        {"content": "", "reasoning_details": [{"type": "reasoning.hologram", "frames": 3}]},
        {"content": "Hello", "reasoning_details": [{"type": "reasoning.encrypted",
                                                    "data": "b64=="}]},
        {"content": ", there!", "reasoning_details": [
            {"type": "reasoning.text", "text": "seen"}, {"type": None}]})))
    assert parts(await consume(registry(openai_provider))) == ("seen", "Hello, there!")


async def test_non_streaming_answer_carries_its_reasoning(openai_api: FakeServer,
                                                          openai_provider: OpenAIProvider
                                                          ) -> None:
    openai_api.script(Reply.thinking(THOUGHTS, ANSWER))
    chunks = await openai_provider.complete(MESSAGES, model="gpt-fake",
                                            params=StreamParams())
    assert chunks[0] == Chunk(text="".join(ANSWER), reasoning="".join(THOUGHTS))
    assert chunks[1].usage is not None and chunks[1].usage.reasoning_tokens == 3


# -- OpenAI Responses API -------------------------------------------------------------

@pytest.fixture
def api(openai_api: FakeServer, responses_provider: OpenAIProvider) -> Api:
    return Api(openai_api, responses_provider, LEAKY_SECRET,
               lambda root: OpenAIProvider(api_key="sk-test", base_url=f"{root}/v1",
                                           connect_timeout_s=2, wire="responses"))


class TestOpenAIResponsesWire(ProviderScenarios):
    """The same retry, fallback, stall, error and cancel behaviour as Chat Completions."""


async def test_responses_stream_reasoning_summary_then_text(
        openai_api: FakeServer, responses_provider: OpenAIProvider) -> None:
    openai_api.script(Reply.thinking(("Weighing ", "options.", "\n\n", "Picking one."),
                                     ANSWER))
    outcome = await consume(registry(responses_provider))
    assert parts(outcome) == ("Weighing options.\n\nPicking one.", "".join(ANSWER))
    assert reasoning_tokens(outcome) == 4
    [request] = openai_api.requests
    assert request.path == "/v1/responses" and request.body["stream"] is True
    assert request.body["reasoning"] == {"summary": "auto"}
    assert request.body["input"] == [{"role": "system", "content": "Answer briefly."},
                                     {"role": "user", "content": "Say hello."}]


async def test_responses_reasoning_settings_reach_the_request(openai_api: FakeServer) -> None:
    provider = openai_provider_for(openai_api, wire="responses", reasoning_summary=None,
                                   reasoning_effort="low")
    try:
        await consume(registry(provider))
        assert openai_api.requests[0].body["reasoning"] == {"effort": "low"}
    finally:
        await provider.aclose()


async def test_responses_failed_event_after_reasoning_is_stream_broken(
        openai_api: FakeServer, responses_provider: OpenAIProvider) -> None:
    openai_api.script(Reply(raw=(
        {"type": "response.reasoning_summary_text.delta", "item_id": "rs", "output_index": 0,
         "summary_index": 0, "delta": "thinking"},
        {"type": "response.failed", "response": {
            "id": "r", "object": "response", "created_at": 0, "model": "m",
            "status": "failed", "output": [], "parallel_tool_calls": True,
            "tool_choice": "auto", "tools": [],
            "error": {"code": "server_error", "message": LEAKY_SECRET}}})))
    outcome = await consume(registry(responses_provider))
    assert "".join(c.reasoning for c in outcome.chunks) == "thinking"
    assert isinstance(outcome.error, ProviderStreamBroken)
    assert LEAKY_SECRET not in outcome.error.message


async def test_responses_non_streaming(openai_api: FakeServer,
                                       responses_provider: OpenAIProvider) -> None:
    openai_api.script(Reply.thinking(THOUGHTS, ANSWER))
    chunks = await responses_provider.complete(MESSAGES, model="o4-mini",
                                               params=StreamParams())
    assert chunks[0] == Chunk(text="".join(ANSWER), reasoning="".join(THOUGHTS))
    assert chunks[1].usage is not None and chunks[1].usage.reasoning_tokens == 3


# -- Gemini ---------------------------------------------------------------------------

async def test_gemini_thoughts_are_reasoning(gemini_api: FakeServer,
                                             gemini_provider: GeminiProvider) -> None:
    gemini_api.script(Reply.thinking(THOUGHTS, ANSWER))
    outcome = await consume(registry(gemini_provider))
    assert parts(outcome) == ("".join(THOUGHTS), "".join(ANSWER))
    assert reasoning_tokens(outcome) == 3 and outcome.usage == (7, 6)
    config = gemini_api.requests[0].body["generationConfig"]
    assert config["thinkingConfig"] == {"include_thoughts": True}


async def test_gemini_thinking_settings(gemini_api: FakeServer) -> None:
    for include, budget, expected in ((True, 512, {"include_thoughts": True,
                                                   "thinking_budget": 512}),
                                      (False, 0, {"thinking_budget": 0}),
                                      (False, None, None)):
        provider = GeminiProvider(api_key="k", base_url=gemini_api.url, connect_timeout_s=2,
                                  include_thoughts=include, thinking_budget=budget)
        try:
            await consume(registry(provider))
        finally:
            await provider.aclose()
        # The SDK sends the ThinkingConfig's field names as they are (the API takes both).
        assert gemini_api.requests[-1].body["generationConfig"].get("thinkingConfig") == \
            expected


async def test_gemini_thought_after_text_and_mixed_parts(gemini_api: FakeServer,
                                                         gemini_provider: GeminiProvider
                                                         ) -> None:
    gemini_api.script(Reply(chunks=("a", "b"), raw=(
        [{"text": "plan ", "thought": True}, {"text": "Hi "}],
        [{"text": "late thought", "thought": True}],
        [{"text": "there."}, {"text": "", "thought": True}])))
    assert parts(await consume(registry(gemini_provider))) == ("plan late thought",
                                                                "Hi there.")


async def test_gemini_non_streaming(gemini_api: FakeServer,
                                    gemini_provider: GeminiProvider) -> None:
    gemini_api.script(Reply.thinking(THOUGHTS, ANSWER))
    chunks = await gemini_provider.complete(MESSAGES, model="gemini-fake",
                                            params=StreamParams())
    assert chunks[0] == Chunk(text="".join(ANSWER), reasoning="".join(THOUGHTS))


# -- Demo -----------------------------------------------------------------------------

async def collect(provider: Provider, messages: list[ChatMessage],
                  model: str = "demo-1") -> list[Chunk]:
    return [c async for c in provider.stream(messages, model=model, params=StreamParams())]


async def test_demo_thinking_model_reasons_first() -> None:
    chunks = await collect(DemoProvider(10_000), [ChatMessage("user", "hi")], "demo-thinking")
    first_text = next(i for i, c in enumerate(chunks) if c.text)
    assert all(c.reasoning for c in chunks[:first_text]) and first_text > 5
    assert not any(c.reasoning for c in chunks[first_text:])
    assert "".join(c.reasoning for c in chunks) == "".join(compose_reasoning("hi"))
    assert "".join(c.text for c in chunks) == "".join(compose_reply("hi"))
    usage = chunks[-1].usage
    assert usage is not None and usage.reasoning_tokens == first_text


async def test_demo_think_prefix_and_echo_with_tags() -> None:
    demo = DemoProvider(10_000)
    prefixed = await collect(demo, [ChatMessage("user", "think: hi")])
    assert "".join(c.reasoning for c in prefixed) == "".join(compose_reasoning("hi"))
    echo = await collect(demo, [ChatMessage("user", "echo:<think>*why* <b>x</b></think>Because.")])
    assert "".join(c.reasoning for c in echo) == "*why* <b>x</b>"
    assert "".join(c.text for c in echo) == "Because."
    plain = await collect(demo, [ChatMessage("user", "hi")])
    assert not any(c.reasoning for c in plain)


async def test_demo_continue_after_the_answer_began_skips_the_reasoning() -> None:
    full = "".join(compose_reply("go"))
    chunks = await collect(DemoProvider(10_000), [ChatMessage("user", "go"),
                                                  ChatMessage("assistant", full[:20])],
                           "demo-thinking")
    assert not any(c.reasoning for c in chunks)
    assert full[:20] + "".join(c.text for c in chunks) == full


# -- Merging in `guarded` -------------------------------------------------------------

async def test_chunks_merged_for_a_busy_consumer_keep_both_parts() -> None:
    async def source() -> AsyncIterator[Chunk]:
        for k in range(50):
            yield Chunk(reasoning=f"r{k} ") if k < 30 else Chunk(text=f"t{k} ")
            await asyncio.sleep(0)

    reasoning, text, count = "", "", 0
    async for chunk in guarded(source(), label="test", idle_timeout_s=5):
        reasoning, text, count = reasoning + chunk.reasoning, text + chunk.text, count + 1
        await asyncio.sleep(0.01)  # busy: later chunks queue up and merge
    assert reasoning == "".join(f"r{k} " for k in range(30))
    assert text == "".join(f"t{k} " for k in range(30, 50))
    assert count < 50

