"""GeminiProvider through the real `google-genai` SDK against the fake Gemini API."""

from __future__ import annotations

import importlib.util

import pytest
from google.genai import _api_client

from chatcast.providers.base import ChatMessage, Provider, StreamParams
from chatcast.providers.gemini import GeminiProvider
from tests.fakes import FakeServer, Reply
from tests.fakes.gemini_fake import LEAKY_SECRET
from tests.providers.conftest import MESSAGES, consume, registry
from tests.providers.scenarios import Api, ProviderScenarios


def _connect(root: str) -> Provider:
    return GeminiProvider(api_key="gemini-test", base_url=root, connect_timeout_s=2)


@pytest.fixture
def api(gemini_api: FakeServer, gemini_provider: GeminiProvider) -> Api:
    return Api(gemini_api, gemini_provider, LEAKY_SECRET, _connect)


class TestGemini(ProviderScenarios):
    pass


async def test_request_speaks_stream_generate_content(gemini_api: FakeServer,
                                                      gemini_provider: GeminiProvider) -> None:
    history = [*MESSAGES, ChatMessage("assistant", "Hello!"), ChatMessage("user", "Again.")]
    chunks = [c async for c in gemini_provider.stream(
        history, model="gemini-fake", params=StreamParams(temperature=0.2, max_tokens=50))]
    assert "".join(c.text for c in chunks) == "Hello, world!"
    [request] = gemini_api.requests
    assert request.path.endswith("/models/gemini-fake:streamGenerateContent")
    assert request.query == "alt=sse"
    assert request.headers["x-goog-api-key"] == "gemini-test"
    assert request.body["systemInstruction"]["parts"] == [{"text": "Answer briefly."}]
    assert [c["role"] for c in request.body["contents"]] == ["user", "model", "user"]
    assert request.body["generationConfig"] == {"temperature": 0.2, "maxOutputTokens": 50,
                                                 "thinkingConfig": {"include_thoughts": True}}


def test_aiohttp_is_not_installed() -> None:
    assert importlib.util.find_spec("aiohttp") is None


async def test_transport_stays_httpx_even_when_aiohttp_is_importable(
        gemini_api: FakeServer, gemini_provider: GeminiProvider,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # With aiohttp importable the SDK would take its aiohttp path (which, aiohttp being
    # absent here, would fail on its first use); our own httpx client must win.
    monkeypatch.setattr(_api_client, "has_aiohttp", True)
    chunks = [c async for c in gemini_provider.stream(MESSAGES, model="gemini-fake",
                                                       params=StreamParams())]
    assert "".join(c.text for c in chunks) == "Hello, world!"


async def test_refusal_before_text_is_not_retried(gemini_api: FakeServer,
                                                  gemini_provider: GeminiProvider) -> None:
    gemini_api.script(Reply.error(400))
    outcome = await consume(registry(gemini_provider))
    assert outcome.error is not None and "400" in outcome.error.message
    assert LEAKY_SECRET not in outcome.error.message
    assert len(gemini_api.requests) == 1
