"""Registry: which providers exist, retry / fallback across SDKs, the idle timeout's cleanup,
and history trimming."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from chatcast.providers import (
    ChatMessage,
    Chunk,
    ProviderStreamBroken,
    ProviderUnavailable,
    Registry,
    RetryPolicy,
    StreamParams,
    trim_history,
)
from chatcast.providers.gemini import GeminiProvider
from chatcast.providers.openai import OpenAIProvider
from chatcast.providers.think import ThinkTags
from tests.fakes import FakeServer, Reply
from tests.providers.conftest import consume, registry


def settings(**overrides: Any) -> SimpleNamespace:
    values: dict[str, Any] = {
        "provider": None, "model": None, "fallback": "", "demo_tokens_per_s": 1000.0,
        "demo_max_tokens": None, "openai_api_key": None, "openai_base_url": None,
        "gemini_api_key": None, "gemini_base_url": None, "provider_max_retries": 2,
        "provider_retry_base_s": 0.5, "provider_retry_max_s": 20.0,
        "provider_connect_timeout_s": 10.0, "provider_idle_timeout_s": 60.0,
        "provider_nonstream_fallback": False, "think_tags": "<think> </think>",
        "think_open_models": "", "openai_wire": "chat", "openai_reasoning_summary": "auto",
        "openai_reasoning_effort": None, "gemini_include_thoughts": True,
        "gemini_thinking_budget": None, "providers": "",
    }
    return SimpleNamespace(**(values | overrides))


@pytest.mark.parametrize(("overrides", "names", "default"), [
    ({}, ["demo"], "demo"),
    ({"gemini_api_key": "g"}, ["demo", "gemini"], "gemini"),
    ({"openai_api_key": "o", "gemini_api_key": "g"}, ["demo", "openai", "gemini"], "openai"),
    ({"openai_base_url": "http://localhost:11434/v1"}, ["demo", "openai"], "openai"),
    ({"openai_api_key": "o", "gemini_api_key": "g", "provider": "gemini"},
     ["demo", "openai", "gemini"], "gemini"),
    ({"openai_api_key": "o", "provider": "demo"}, ["demo", "openai"], "demo"),
])
async def test_from_settings(overrides: dict[str, Any], names: list[str], default: str) -> None:
    reg = Registry.from_settings(settings(**overrides))
    try:
        assert list(reg.providers) == names and reg.default == default
        assert [m["provider"] for m in reg.models() if m["default"]] == [default]
    finally:
        await reg.aclose()


async def test_settings_carry_model_fallback_and_policy() -> None:
    reg = Registry.from_settings(settings(
        openai_api_key="o", model="gpt-x", fallback="demo, nosuch", provider_max_retries=5,
        provider_nonstream_fallback=True))
    try:
        assert reg.resolve(None, None) == ("openai", "gpt-x")
        assert reg.resolve("demo", None) == ("demo", "demo-1")
        assert reg.resolve("nosuch", "m") == ("openai", "m")
        assert reg.fallback == ["demo"]
        assert reg.policy.max_retries == 5 and reg.policy.nonstream_fallback
        assert {"provider": "openai", "model": "gpt-x", "default": True} in reg.models()
    finally:
        await reg.aclose()


async def test_an_unconfigured_default_is_refused() -> None:
    with pytest.raises(ValueError, match="gemini"):
        Registry.from_settings(settings(provider="gemini"))


async def test_fallback_crosses_sdks(openai_api: FakeServer, gemini_api: FakeServer,
                                     openai_provider: OpenAIProvider,
                                     gemini_provider: GeminiProvider) -> None:
    openai_api.script(then=Reply.error(502))
    gemini_api.script(Reply.text("from ", "gemini"))
    outcome = await consume(registry(openai_provider, gemini_provider, fallback=["gemini"]))
    assert outcome.error is None and "".join(outcome.texts) == "from gemini"
    assert outcome.meta["provider"] == "gemini" and outcome.meta["fallback"] == "gemini"
    assert outcome.meta["retries"] == 2
    assert [e.split(":")[0] for e in outcome.meta["errors"]] == ["openai"] * 3
    assert gemini_api.requests[0].body["contents"][-1]["parts"] == [{"text": "Say hello."}]


async def test_retry_after_is_capped(openai_api: FakeServer,
                                     openai_provider: OpenAIProvider) -> None:
    openai_api.script(Reply.error(429, retry_after=30))
    outcome = await consume(registry(openai_provider, max_s=0.1))
    assert outcome.error is None and outcome.meta["retries"] == 1
    assert outcome.elapsed_s < 10


async def test_demo_streams_through_the_registry() -> None:
    outcome = await consume(Registry.from_settings(settings()))
    assert outcome.error is None and outcome.texts and outcome.usage is not None
    assert outcome.meta == {"provider": "demo", "fallback": None, "non_streaming": False,
                            "retries": 0, "errors": []}


class _Named:
    """An in-process provider yielding three chunks, optionally stalling before one."""

    default_model = "stub-1"

    def __init__(self, name: str, *, stall_after: int | None = None) -> None:
        self.name = name
        self.stall_after = stall_after
        self.closed = 0

    async def stream(self, messages: list[ChatMessage], *, model: str,
                     params: StreamParams) -> AsyncIterator[Chunk]:
        try:
            for k in range(3):
                if self.stall_after == k:
                    await asyncio.Event().wait()
                yield Chunk(text=f"t{k}")
        finally:
            self.closed += 1

    async def aclose(self) -> None:
        return None


@pytest.mark.parametrize(("stall_after", "error"), [
    (0, ProviderUnavailable), (1, ProviderStreamBroken)])
async def test_idle_timeout_leaves_nothing_behind(stall_after: int, error: type) -> None:
    stub = _Named("stub", stall_after=stall_after)
    outcome = await consume(registry(stub, max_retries=0, idle_timeout_s=0.1))
    assert isinstance(outcome.error, error)
    assert stub.closed == 1, "the provider's iterator was closed"
    pumps = [t for t in asyncio.all_tasks() if t.get_name().startswith("provider-pump")]
    assert pumps == []


def test_backoff_grows_and_is_capped() -> None:
    backoff = RetryPolicy(base_s=1, max_s=10).backoff
    assert backoff.delay(0) <= 1
    assert 4 <= backoff.delay(3) <= 8
    assert backoff.delay(10) == 10
    assert backoff.delay(0, retry_after=3) == 3
    assert backoff.delay(0, retry_after=60) == 10


def _m(role: str, content: str) -> ChatMessage:
    return ChatMessage(role, content)  # type: ignore[arg-type]


def test_trim_history_keeps_system_and_newest() -> None:
    history = [_m("system", "sys"), _m("user", "a" * 10), _m("assistant", "b" * 10),
               _m("user", "c" * 10), _m("assistant", "d" * 10), _m("user", "e" * 10)]
    assert trim_history(history, 1000) == history
    kept = trim_history(history, 3 + 30)
    assert kept == [history[0], *history[3:]]
    kept = trim_history(history, 3 + 25)  # would start with an assistant turn: dropped
    assert kept == [history[0], history[5]]


def test_trim_history_keeps_the_last_message_and_adds_the_system_prompt() -> None:
    history = [_m("user", "x" * 100)]
    assert trim_history(history, 10, system_prompt="be kind") == [
        _m("system", "be kind"), history[0]]
    with_prompt = [_m("system", "be kind"), *history]
    assert trim_history(with_prompt, 10, system_prompt="be kind") == with_prompt


async def test_reasoning_settings_reach_the_providers() -> None:
    reg = Registry.from_settings(settings(
        openai_api_key="sk", gemini_api_key="g", think_tags="<r> </r>",
        think_open_models="r1", openai_wire="responses", openai_reasoning_summary="",
        openai_reasoning_effort="high", gemini_include_thoughts=False,
        gemini_thinking_budget=256))
    try:
        openai, gemini = reg.providers["openai"], reg.providers["gemini"]
        assert isinstance(openai, OpenAIProvider) and isinstance(gemini, GeminiProvider)
        assert openai.think_tags == ThinkTags("<r>", "</r>")
        assert (openai.wire, openai.think_open_models, openai.reasoning_summary,
                openai.reasoning_effort) == ("responses", "r1", None, "high")
        assert (gemini.include_thoughts, gemini.thinking_budget) == (False, 256)
    finally:
        await reg.aclose()
