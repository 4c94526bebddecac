"""Fake OpenAI and Gemini APIs (real uvicorn servers) and providers pointed at them."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from chatcast.providers import Chunk, ProviderFailure, Registry, RetryPolicy
from chatcast.providers.base import ChatMessage, Provider, StreamParams
from chatcast.providers.demo import DemoProvider
from chatcast.providers.gemini import GeminiProvider
from chatcast.providers.openai import OpenAIProvider
from tests.fakes import FakeServer, gemini_fake, openai_fake

MESSAGES = [ChatMessage("system", "Answer briefly."), ChatMessage("user", "Say hello.")]
# Fast enough for tests. The idle timeout stays well above what a loaded machine can add
# before a fake's first byte (at 0.5 s, a 503 that came late under a full test run was an
# idle timeout instead, its attempt ended before the request reached the fake); the tests of
# a stall itself pass STALL_IDLE_S so they finish quickly.
POLICY = RetryPolicy(max_retries=2, base_s=0.01, max_s=5.0, idle_timeout_s=10.0)
STALL_IDLE_S = 0.5


@pytest.fixture
def openai_api() -> Iterator[FakeServer]:
    with FakeServer(openai_fake.app) as server:
        yield server


@pytest.fixture
def gemini_api() -> Iterator[FakeServer]:
    with FakeServer(gemini_fake.app) as server:
        yield server


@pytest.fixture
async def openai_provider(openai_api: FakeServer) -> AsyncIterator[OpenAIProvider]:
    provider = OpenAIProvider(api_key="sk-test", base_url=f"{openai_api.url}/v1",
                              default_model="gpt-fake", connect_timeout_s=2,
                              idle_timeout_s=POLICY.idle_timeout_s)
    yield provider
    await provider.aclose()


@pytest.fixture
async def gemini_provider(gemini_api: FakeServer) -> AsyncIterator[GeminiProvider]:
    provider = GeminiProvider(api_key="gemini-test", base_url=gemini_api.url,
                              default_model="gemini-fake", connect_timeout_s=2,
                              idle_timeout_s=POLICY.idle_timeout_s)
    yield provider
    await provider.aclose()


def registry(*providers: Provider, fallback: list[str] | None = None,
             **policy: Any) -> Registry:
    """A registry whose default is the first of `providers`, with the test policy."""
    fields = {"max_retries": POLICY.max_retries, "base_s": POLICY.base_s,
              "max_s": POLICY.max_s, "idle_timeout_s": POLICY.idle_timeout_s, **policy}
    by_name = {p.name: p for p in providers}
    by_name.setdefault("demo", DemoProvider(tokens_per_s=1000))
    return Registry(by_name, providers[0].name, fallback=fallback,
                    policy=RetryPolicy(**fields))


class Outcome:
    """What a consumer saw of one stream: text, usage, the error that ended it, timing."""

    def __init__(self) -> None:
        self.chunks: list[Chunk] = []
        self.error: ProviderFailure | None = None
        self.meta: dict[str, Any] = {}
        self.elapsed_s = 0.0

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.chunks if c.text]

    @property
    def usage(self) -> tuple[int, int] | None:
        usages = [c.usage for c in self.chunks if c.usage is not None]
        return (usages[-1].input_tokens, usages[-1].output_tokens) if usages else None


async def consume(reg: Registry, provider: str | None = None,
                  messages: list[ChatMessage] | None = None) -> Outcome:
    name, model = reg.resolve(provider, None)
    outcome = Outcome()
    started = time.monotonic()
    try:
        async for chunk in reg.stream(name, model, messages or MESSAGES, StreamParams(),
                                      outcome.meta):
            outcome.chunks.append(chunk)
    except ProviderFailure as exc:
        outcome.error = exc
    outcome.elapsed_s = time.monotonic() - started
    return outcome
