"""Opt-in smoke tests against the real APIs: they run only when a key is in the environment."""

from __future__ import annotations

import os

import pytest

from chatcast.providers import ChatMessage, Registry, RetryPolicy, StreamParams
from chatcast.providers.base import Provider
from chatcast.providers.gemini import GeminiProvider
from chatcast.providers.openai import OpenAIProvider

MESSAGES = [ChatMessage("user", "Reply with the single word: pong")]


async def _smoke(provider: Provider) -> None:
    reg = Registry({provider.name: provider}, provider.name, policy=RetryPolicy(max_retries=1))
    meta: dict[str, object] = {}
    try:
        chunks = [c async for c in reg.stream(provider.name, provider.default_model, MESSAGES,
                                              StreamParams(), meta)]
    finally:
        await reg.aclose()
    assert "".join(c.text for c in chunks).strip()
    assert any(c.usage is not None for c in chunks)


@pytest.mark.skipif(not os.environ.get("OPENAI_API_KEY"), reason="OPENAI_API_KEY not set")
async def test_openai_live() -> None:
    await _smoke(OpenAIProvider(api_key=os.environ["OPENAI_API_KEY"],
                                base_url=os.environ.get("OPENAI_BASE_URL")))


@pytest.mark.skipif(not os.environ.get("GEMINI_API_KEY"), reason="GEMINI_API_KEY not set")
async def test_gemini_live() -> None:
    await _smoke(GeminiProvider(api_key=os.environ["GEMINI_API_KEY"]))
