"""`guarded`: chunks that queue up while the consumer is busy are handed over merged; a
consumer that keeps up gets each chunk as it came; the idle watchdog still fires."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from chatcast.providers.base import Chunk, ProviderStreamBroken, ProviderUnavailable, Usage
from chatcast.providers.resilience import guarded


async def _paced(texts: list[str], gap_s: float, *, usage: bool = True,
                 stall: bool = False) -> AsyncIterator[Chunk]:
    for text in texts:
        await asyncio.sleep(gap_s)
        yield Chunk(text=text)
    if stall:
        await asyncio.Event().wait()
    if usage:
        yield Chunk(usage=Usage(3, len(texts)))


async def _take(stream: AsyncIterator[Chunk], busy_s: float = 0.0) -> list[Chunk]:
    out = []
    async for chunk in stream:
        out.append(chunk)
        await asyncio.sleep(busy_s)
    return out


async def test_a_consumer_that_keeps_up_gets_every_chunk() -> None:
    texts = [f"t{k} " for k in range(5)]
    got = await _take(guarded(_paced(texts, 0.01), label="x", idle_timeout_s=5))
    assert [c.text for c in got if c.text] == texts
    assert got[-1].usage == Usage(3, 5)
    assert all(c.at is not None for c in got if c.text)


async def test_a_busy_consumer_gets_what_queued_up_as_one_chunk() -> None:
    texts = [f"t{k} " for k in range(40)]
    got = await _take(guarded(_paced(texts, 0.001), label="x", idle_timeout_s=5),
                      busy_s=0.02)
    assert "".join(c.text for c in got) == "".join(texts), "nothing lost, nothing doubled"
    assert len(got) < len(texts) / 3, f"merged: {len(got)} chunks for {len(texts)}"
    assert got[-1].usage == Usage(3, 40)


async def test_text_before_a_failure_is_delivered_first() -> None:
    async def broken() -> AsyncIterator[Chunk]:
        yield Chunk(text="a")
        yield Chunk(text="b")
        raise ProviderStreamBroken("dropped")

    got: list[str] = []
    with pytest.raises(ProviderStreamBroken):
        async for chunk in guarded(broken(), label="x", idle_timeout_s=5):
            got.append(chunk.text)
            await asyncio.sleep(0.01)
    assert "".join(got) == "ab"


@pytest.mark.parametrize(("texts", "error"), [([], ProviderUnavailable),
                                              (["t0"], ProviderStreamBroken)])
async def test_the_idle_watchdog_fires_once_quiet(texts: list[str], error: type) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    got: list[str] = []
    with pytest.raises(error):
        async for chunk in guarded(_paced(texts, 0.0, stall=True), label="x",
                                   idle_timeout_s=0.2):
            got.append(chunk.text)
    assert got == texts
    assert 0.19 <= loop.time() - started < 2.0
