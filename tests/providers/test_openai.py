"""OpenAIProvider through the real `openai` SDK against the fake OpenAI API."""

from __future__ import annotations

import pytest

from chatcast.providers import Registry
from chatcast.providers.base import ChatMessage, Provider, StreamParams
from chatcast.providers.openai import OpenAIProvider
from tests.fakes import FakeServer, Reply
from tests.fakes.openai_fake import LEAKY_SECRET
from tests.providers.conftest import MESSAGES, consume, registry
from tests.providers.scenarios import Api, ProviderScenarios


def _connect(root: str) -> Provider:
    return OpenAIProvider(api_key="sk-test", base_url=f"{root}/v1", connect_timeout_s=2)


@pytest.fixture
def api(openai_api: FakeServer, openai_provider: OpenAIProvider) -> Api:
    return Api(openai_api, openai_provider, LEAKY_SECRET, _connect)


class TestOpenAI(ProviderScenarios):
    pass


async def test_request_speaks_chat_completions(openai_api: FakeServer,
                                               openai_provider: OpenAIProvider) -> None:
    chunks = [c async for c in openai_provider.stream(
        MESSAGES, model="gpt-fake", params=StreamParams(temperature=0.2, max_tokens=50))]
    assert "".join(c.text for c in chunks) == "Hello, world!"
    [request] = openai_api.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.body["stream"] is True
    assert request.body["stream_options"] == {"include_usage": True}
    assert request.body["model"] == "gpt-fake"
    assert request.body["temperature"] == 0.2
    assert request.body["max_tokens"] == 50  # what OpenAI-compatible servers understand
    assert request.body["messages"] == [{"role": "system", "content": "Answer briefly."},
                                        {"role": "user", "content": "Say hello."}]


async def test_sdk_does_not_retry(openai_api: FakeServer,
                                  openai_provider: OpenAIProvider) -> None:
    openai_api.script(Reply.error(500))
    outcome = await consume(registry(openai_provider, max_retries=0))
    assert outcome.error is not None and len(openai_api.requests) == 1


async def test_a_continued_answer_sends_the_partial_as_assistant(
        openai_api: FakeServer, openai_provider: OpenAIProvider) -> None:
    history = [*MESSAGES, ChatMessage("assistant", "Hel")]
    await consume(Registry({"openai": openai_provider}, "openai"), messages=history)
    assert openai_api.requests[0].body["messages"][-1] == {"role": "assistant",
                                                           "content": "Hel"}
