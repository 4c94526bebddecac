"""The behaviour every HTTP provider must show, run by test_openai.py and test_gemini.py
against their fake APIs through the real SDKs and `Registry.stream`."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from chatcast.providers import (
    ProviderError,
    ProviderStreamBroken,
    ProviderUnavailable,
    StreamParams,
)
from chatcast.providers.base import Provider
from tests.fakes import FakeServer, Reply
from tests.providers.conftest import MESSAGES, STALL_IDLE_S, consume, registry

SLOW = Reply(chunks=tuple(f"word{i} " for i in range(200)), delay_s=0.05)


@dataclass
class Api:
    server: FakeServer
    provider: Provider
    secret: str  # what the fake's error bodies contain and users must never see
    connect: Callable[[str], Provider]  # the same kind of provider for another server root


class ProviderScenarios:
    async def test_streams_token_by_token_with_usage(self, api: Api) -> None:
        # 0.2 s apart: chunks that queue up while the consumer is busy are merged, and a
        # loaded machine can stall a consumer for tens of ms
        api.server.script(Reply.text("Hel", "lo", " there", "!", delay_s=0.2))
        outcome = await consume(registry(api.provider))
        assert outcome.error is None
        assert outcome.texts == ["Hel", "lo", " there", "!"]
        assert outcome.chunks[-1].usage is not None and outcome.usage == (7, 4)
        assert outcome.meta == {"provider": api.provider.name, "fallback": None,
                                "non_streaming": False, "retries": 0, "errors": []}
        [request] = api.server.requests
        assert request.streaming and request.ended_by == "complete"

    async def test_retry_after_is_honoured(self, api: Api) -> None:
        api.server.script(Reply.error(429, retry_after=1))
        outcome = await consume(registry(api.provider))
        assert outcome.error is None and "".join(outcome.texts) == "Hello, world!"
        assert outcome.meta["retries"] == 1
        assert len(outcome.meta["errors"]) == 1 and "429" in outcome.meta["errors"][0]
        assert len(api.server.requests) == 2
        gap = api.server.requests[1].received_at - api.server.requests[0].received_at
        assert gap >= 0.9, f"retried after {gap:.2f} s despite a 1 s Retry-After"

    async def test_permanent_5xx_falls_back_to_the_next_provider(self, api: Api) -> None:
        api.server.script(then=Reply.error(503))
        outcome = await consume(registry(api.provider, fallback=["demo"]))
        assert outcome.error is None and outcome.texts
        assert outcome.meta["fallback"] == "demo" and outcome.meta["provider"] == "demo"
        assert outcome.meta["retries"] == 2 and len(outcome.meta["errors"]) == 3
        assert all("503" in e for e in outcome.meta["errors"]), outcome.meta["errors"]
        assert len(api.server.requests) == 3

    async def test_permanent_5xx_then_asks_without_streaming(self, api: Api) -> None:
        api.server.script(Reply.error(500), Reply.error(500), Reply.error(500))
        outcome = await consume(registry(api.provider, nonstream_fallback=True))
        assert outcome.error is None
        assert outcome.texts == ["Hello, world!"] and outcome.usage == (7, 4)
        assert outcome.meta["non_streaming"] is True and outcome.meta["fallback"] is None
        assert [r.streaming for r in api.server.requests] == [True, True, True, False]

    async def test_permanent_5xx_without_fallback_is_unavailable(self, api: Api) -> None:
        api.server.script(then=Reply.error(500))
        outcome = await consume(registry(api.provider))
        assert isinstance(outcome.error, ProviderUnavailable)
        assert "500" in outcome.error.message and api.secret not in outcome.error.message
        assert outcome.meta["retries"] == 2 and len(api.server.requests) == 3

    async def test_401_is_not_retried(self, api: Api) -> None:
        api.server.script(then=Reply.error(401))
        outcome = await consume(registry(api.provider, fallback=["demo"],
                                         nonstream_fallback=True))
        assert isinstance(outcome.error, ProviderError)
        assert "401" in outcome.error.message and "authentication" in outcome.error.message
        assert api.secret not in str(outcome.meta)
        assert len(api.server.requests) == 1 and outcome.meta["retries"] == 0

    async def test_dropped_connection_after_text_is_stream_broken(self, api: Api) -> None:
        api.server.script(Reply.text("partial ", "answer", end="drop"))
        outcome = await consume(registry(api.provider, fallback=["demo"]))
        assert "".join(outcome.texts) == "partial answer"
        assert isinstance(outcome.error, ProviderStreamBroken)
        assert len(api.server.requests) == 1, "a stream that had begun must not restart"

    async def test_error_event_after_text_is_stream_broken(self, api: Api) -> None:
        api.server.script(Reply.text("partial ", "answer", end="error"))
        outcome = await consume(registry(api.provider))
        assert "".join(outcome.texts) == "partial answer"
        assert isinstance(outcome.error, ProviderStreamBroken)
        assert api.secret not in outcome.error.message
        assert len(api.server.requests) == 1

    async def test_stall_before_first_token_is_an_idle_timeout(self, api: Api) -> None:
        api.server.script(Reply.text(end="stall"))
        outcome = await consume(registry(api.provider, max_retries=0,
                                         idle_timeout_s=STALL_IDLE_S))
        assert isinstance(outcome.error, ProviderUnavailable)
        assert "sent nothing" in outcome.error.message
        assert (await api.server.wait_ended()).disconnected

    async def test_stall_after_text_is_stream_broken(self, api: Api) -> None:
        api.server.script(Reply.text("partial", end="stall"))
        outcome = await consume(registry(api.provider, idle_timeout_s=STALL_IDLE_S))
        assert "".join(outcome.texts) == "partial"
        assert isinstance(outcome.error, ProviderStreamBroken)
        assert (await api.server.wait_ended()).disconnected
        assert len(api.server.requests) == 1

    async def test_cancelling_the_consumer_closes_the_upstream_response(self, api: Api) -> None:
        api.server.script(SLOW)
        reg = registry(api.provider)
        first = asyncio.Event()

        async def consumer() -> None:
            async for _ in reg.stream(api.provider.name, api.provider.default_model, MESSAGES,
                                      StreamParams(), {}):
                first.set()

        task = asyncio.create_task(consumer())
        await asyncio.wait_for(first.wait(), 5)
        cancelled_at = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        ended = await api.server.wait_ended(timeout_s=2)
        assert ended.disconnected
        assert ended.ended_at is not None
        print(f"\n{api.provider.name}: upstream closed "
              f"{(ended.ended_at - cancelled_at) * 1000:.0f} ms after cancel")

    async def test_leaving_the_loop_closes_the_upstream_response(self, api: Api) -> None:
        api.server.script(SLOW)
        stream = registry(api.provider).stream(api.provider.name, api.provider.default_model,
                                               MESSAGES, StreamParams(), {})
        async for _ in stream:
            break
        await stream.aclose()
        assert (await api.server.wait_ended(timeout_s=2)).disconnected

    @pytest.mark.parametrize("how", ["cancel", "aclose"])
    async def test_a_slow_consumer_closing_closes_the_upstream_response(self, api: Api,
                                                                     how: str) -> None:
        # The provider reads ahead of a slow consumer; closing must still reach the SDK.
        api.server.script(Reply(chunks=tuple(f"w{i} " for i in range(400)), delay_s=0.005))
        stream = registry(api.provider).stream(api.provider.name, api.provider.default_model,
                                               MESSAGES, StreamParams(), {})

        async def consumer() -> None:
            async for _ in stream:
                await asyncio.sleep(0.3)
                break

        task = asyncio.create_task(consumer())
        if how == "cancel":
            await asyncio.sleep(0.2)
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await stream.aclose()
        ended = await api.server.wait_ended(timeout_s=1)
        assert ended.disconnected

    async def test_connection_refused_is_unavailable(self, api: Api) -> None:
        with socket.socket() as sock:  # a port nobody listens on once closed
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        refused = api.connect(f"http://127.0.0.1:{port}")
        try:
            outcome = await consume(registry(refused, max_retries=1))
        finally:
            await refused.aclose()
        assert isinstance(outcome.error, ProviderUnavailable)
        assert outcome.meta["retries"] == 1
