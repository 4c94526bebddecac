"""Custom providers (providers/custom.py) through the registry, as the runner uses them: what
they may yield, the context they get, the bad input they are held to (raising, a non-chunk,
silence, yielding after a cancel), retry and fallback, the close of their own upstream
connection on a stop, and loading them from CHATCAST_PROVIDERS."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from chatcast.providers import (
    ChatMessage,
    Chunk,
    Context,
    ProviderError,
    ProviderStreamBroken,
    ProviderUnavailable,
    Registry,
    StreamParams,
    Usage,
)
from chatcast.providers.custom import (
    CustomProvider,
    Metadata,
    ProviderConfigError,
    Reasoning,
    Text,
    as_provider,
    load,
)
from tests.fakes import FakeServer, Reply, openai_fake
from tests.providers.conftest import MESSAGES, Outcome, registry

CONTEXT = Context("chat-1", "user-1", "gen-1", "msg-1", "ignored", StreamParams(), {})


async def run(reg: Registry, provider: str | None = None) -> Outcome:
    name, model = reg.resolve(provider, None)
    outcome = Outcome()
    try:
        async for chunk in reg.stream(name, model, MESSAGES, StreamParams(temperature=0.3),
                                      outcome.meta, CONTEXT):
            outcome.chunks.append(chunk)
    except (ProviderError, ProviderUnavailable, ProviderStreamBroken) as exc:
        outcome.error = exc
    return outcome


async def test_yields_text_chunks_and_gets_its_context() -> None:
    seen: list[tuple[list[ChatMessage], Context]] = []

    async def answer(messages: list[ChatMessage], context: Context) -> AsyncIterator[Any]:
        seen.append((messages, context))
        yield Reasoning("Looking it up. ")
        yield "Hello"
        yield Text(", world")
        yield Metadata({"sources": [{"title": "Doc", "url": "https://example.com/doc"}]})
        yield Chunk(text="!")
        yield Usage(input_tokens=3, output_tokens=4)

    reg = registry(as_provider("rag", answer))
    outcome = await run(reg)
    assert outcome.error is None
    assert "".join(outcome.texts) == "Hello, world!"
    assert "".join(c.reasoning for c in outcome.chunks) == "Looking it up. "
    assert [c.metadata for c in outcome.chunks if c.metadata] == [
        {"sources": [{"title": "Doc", "url": "https://example.com/doc"}]}]
    assert outcome.usage == (3, 4)
    messages, context = seen[0]
    assert messages == MESSAGES
    assert (context.chat_id, context.user_id, context.generation_id) == \
        ("chat-1", "user-1", "gen-1")
    assert context.model == "rag" and context.params.temperature == 0.3


async def test_an_object_with_an_answer_method_and_one_with_stream() -> None:
    class Rag:
        default_model = "rag-1"
        closed = False

        async def answer(self, messages: list[ChatMessage],
                         context: Context) -> AsyncIterator[str]:
            yield f"model {context.model}"

        async def aclose(self) -> None:
            self.closed = True

    class Streams:
        name = "x"
        default_model = "s-1"

        async def stream(self, messages: list[ChatMessage], *, model: str,
                         params: StreamParams) -> AsyncIterator[Chunk]:
            yield Chunk(text=f"streamed by {model}")

        async def aclose(self) -> None:
            pass

    rag = Rag()
    reg = registry(as_provider("rag", rag), as_provider("s", Streams()))
    assert (await run(reg)).texts == ["model rag-1"]
    assert (await run(reg, "s")).texts == ["streamed by s-1"]
    await reg.aclose()
    assert rag.closed


async def test_raising_maps_to_a_safe_error_and_never_leaks_the_exception() -> None:
    async def answer(messages: list[ChatMessage], context: Context) -> AsyncIterator[str]:
        raise RuntimeError("db password is hunter2")
        yield ""  # pragma: no cover

    async def breaks(messages: list[ChatMessage], context: Context) -> AsyncIterator[str]:
        yield "partial"
        raise KeyError("secret")

    reg = registry(as_provider("rag", answer), as_provider("late", breaks))
    outcome = await run(reg)
    assert isinstance(outcome.error, ProviderError)
    assert "hunter2" not in outcome.error.message and "rag" in outcome.error.message
    late = await run(reg, "late")
    assert late.texts == ["partial"] and isinstance(late.error, ProviderStreamBroken)


async def test_a_non_chunk_is_refused() -> None:
    async def answer(messages: list[ChatMessage], context: Context) -> AsyncIterator[Any]:
        yield "fine "
        yield {"text": "a dict is not a chunk"}

    outcome = await run(registry(as_provider("rag", answer)))
    assert outcome.texts == ["fine "]
    assert isinstance(outcome.error, ProviderError) and "dict" in outcome.error.message


async def test_silence_is_the_idle_timeout_and_unavailable_is_retried_then_falls_back() -> None:
    calls = 0

    async def silent(messages: list[ChatMessage], context: Context) -> AsyncIterator[str]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(3600)
        yield ""  # pragma: no cover

    reg = registry(as_provider("rag", silent), idle_timeout_s=0.2, max_retries=1)
    outcome = await run(reg)
    assert isinstance(outcome.error, ProviderUnavailable) and outcome.error.idle
    assert calls == 2  # retried once

    attempts = 0

    async def flaky(messages: list[ChatMessage], context: Context) -> AsyncIterator[str]:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ProviderUnavailable("rag is warming up")
        yield "second try"

    assert (await run(registry(as_provider("rag", flaky)))).texts == ["second try"]

    async def down(messages: list[ChatMessage], context: Context) -> AsyncIterator[str]:
        raise httpx.ConnectError("refused")
        yield ""  # pragma: no cover

    fallen = await run(registry(as_provider("rag", down), fallback=["demo"], max_retries=0))
    assert fallen.error is None and fallen.meta["fallback"] == "demo" and fallen.texts


async def test_yielding_after_the_cancel_is_dropped_and_does_not_hang() -> None:
    cancelled = asyncio.Event()
    started = asyncio.Event()

    async def stubborn(messages: list[ChatMessage], context: Context) -> AsyncIterator[str]:
        yield "one "
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
        yield "after the cancel"
        yield "and again"

    reg = registry(as_provider("rag", stubborn))
    got: list[str] = []

    async def consume() -> None:
        name, model = reg.resolve(None, None)
        async for chunk in reg.stream(name, model, MESSAGES, StreamParams(), {}, CONTEXT):
            got.append(chunk.text)

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert cancelled.is_set() and got == ["one "]


@pytest.fixture
def model_api() -> Iterator[FakeServer]:
    with FakeServer(openai_fake.app) as server:
        yield server


async def test_a_stop_closes_the_providers_own_upstream_connection(
        model_api: FakeServer) -> None:
    """The provider holds its own HTTP stream to a model; cancelling the consumer (what a
    stop does) closes that connection, which the model server sees as the client leaving."""
    model_api.script(Reply.text(*[f"w{i} " for i in range(200)], delay_s=0.05))

    async def answer(messages: list[ChatMessage], context: Context) -> AsyncIterator[str]:
        async with httpx.AsyncClient(base_url=model_api.url, trust_env=False) as http, \
                http.stream("POST", "/v1/chat/completions",
                            json={"model": "m", "stream": True, "messages": []}) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    yield line

    reg = registry(as_provider("rag", answer))
    first = asyncio.Event()

    async def consume() -> None:
        name, model = reg.resolve(None, None)
        async for _chunk in reg.stream(name, model, MESSAGES, StreamParams(), {}, CONTEXT):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    ended = await model_api.wait_ended(timeout_s=10)
    assert ended.disconnected


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    (tmp_path / "hostllm.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("hostllm", None)


def test_load_from_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _module(tmp_path, monkeypatch, (
        "class Rag:\n"
        "    async def answer(self, messages, context):\n"
        "        yield 'x'\n"
        "async def plain(messages, context):\n"
        "    yield 'y'\n"
        "def make_provider():\n"
        "    return Rag()\n"
        "NOT_A_PROVIDER = 42\n"
        "async def not_a_generator(messages, context):\n"
        "    return 'z'\n"))
    loaded = load("rag=hostllm:make_provider, plain=hostllm:plain,cls=hostllm:Rag")
    assert list(loaded) == ["rag", "plain", "cls"]
    assert all(isinstance(p, CustomProvider) for p in loaded.values())
    for spec, words in [
        ("rag=nosuchmodule:x", ["CHATCAST_PROVIDERS", "cannot import", "nosuchmodule"]),
        ("rag=hostllm:missing", ["CHATCAST_PROVIDERS", "has no", "missing"]),
        ("rag=hostllm:NOT_A_PROVIDER", ["CHATCAST_PROVIDERS", "not a provider", "int"]),
        ("rag=hostllm:not_a_generator", ["not a provider", "use yield"]),
        ("rag=hostllm", ["not module:attribute"]),
        ("rag", ["entry point", "rag"]),
        ("a=hostllm:plain,a=hostllm:plain", ["twice"]),
    ]:
        with pytest.raises(ProviderConfigError) as caught:
            load(spec)
        assert all(w in str(caught.value) for w in words), (spec, str(caught.value))


async def test_registry_from_settings_takes_custom_providers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _module(tmp_path, monkeypatch, "async def rag(messages, context):\n    yield 'from env'\n")

    async def coded(messages: list[ChatMessage], context: Context) -> AsyncIterator[str]:
        yield "from code"

    from tests.providers.test_registry import settings
    reg = Registry.from_settings(settings(providers="rag=hostllm:rag", provider="rag",
                                          provider_max_retries=0),
                                 {"coded": coded})
    assert list(reg.providers) == ["demo", "rag", "coded"] and reg.default == "rag"
    assert (await run(reg)).texts == ["from env"]
    assert (await run(reg, "coded")).texts == ["from code"]
    with pytest.raises(ProviderConfigError):
        Registry.from_settings(settings(), {"bad": SimpleNamespace()})


def test_a_bare_name_loads_the_installed_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import EntryPoint

    import chatcast.providers.custom as custom

    points = [EntryPoint("rag", "tests.providers.test_custom:_plugin", custom.ENTRY_POINT_GROUP),
              EntryPoint("broken", "no_such_plugin:x", custom.ENTRY_POINT_GROUP)]

    def entry_points(*, group: str) -> list[EntryPoint]:
        return [p for p in points if p.group == group]

    monkeypatch.setattr(custom, "entry_points", entry_points)
    assert isinstance(load("rag")["rag"], CustomProvider)
    with pytest.raises(ProviderConfigError, match="entry point 'broken' failed to load"):
        load("broken")


async def _plugin(messages: list[ChatMessage], context: Context) -> AsyncIterator[str]:
    yield "from a plugin"


async def test_upstream_http_statuses_map_like_the_built_in_providers(
        model_api: FakeServer) -> None:
    """`response.raise_for_status()` in a custom provider: a 503 is retried (and reported
    as unavailable once the retries are spent), a 401 is a provider error at once."""
    model_api.script(Reply.error(503), Reply.error(503), Reply.error(401))

    async def answer(messages: list[ChatMessage], context: Context) -> AsyncIterator[str]:
        async with httpx.AsyncClient(base_url=model_api.url, trust_env=False) as http:
            response = await http.post("/v1/chat/completions",
                                       json={"model": "m", "stream": False, "messages": []})
            response.raise_for_status()
            yield response.text

    unavailable = await run(registry(as_provider("rag", answer), max_retries=1))
    assert isinstance(unavailable.error, ProviderUnavailable) and len(model_api.requests) == 2
    assert unavailable.error.status == 503
    refused = await run(registry(as_provider("rag", answer), max_retries=1))
    assert isinstance(refused.error, ProviderError) and refused.error.status == 401
    assert len(model_api.requests) == 3  # not retried


async def test_a_provider_that_swallows_its_cancellation_is_abandoned_and_the_stop_ends(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import chatcast.providers.resilience as resilience

    monkeypatch.setattr(resilience, "CANCEL_WAIT_S", 0.3)
    started = asyncio.Event()
    release = asyncio.Event()

    async def deaf(messages: list[ChatMessage], context: Context) -> AsyncIterator[str]:
        yield "one "
        started.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # deaf to it
        yield "never seen"

    reg = registry(as_provider("rag", deaf))

    async def consume() -> None:
        name, model = reg.resolve(None, None)
        async for _chunk in reg.stream(name, model, MESSAGES, StreamParams(), {}, CONTEXT):
            pass

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)  # the stop ends although the provider did not
    release.set()  # let the abandoned provider end, so the test leaves no task behind
