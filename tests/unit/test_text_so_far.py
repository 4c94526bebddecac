"""Replay (a snapshot's active answer) and the reaper (a dead owner's final text) rebuild a
generation's answer by one rule: the checkpoint plus the log's deltas that continue it."""

from __future__ import annotations

from chatcast.core import protocol
from chatcast.server.bus.base import log_entry
from chatcast.server.bus.memory import MemoryBus
from chatcast.server.replay import TextSoFar, text_so_far


def _of(so_far: TextSoFar) -> tuple[str, str, int]:
    return (so_far.content, so_far.reasoning, so_far.seq)


async def test_the_checkpoint_is_continued_by_the_deltas_after_it() -> None:
    bus = MemoryBus()
    await bus.append(protocol.start("c", "g", "m", "demo", "d"))
    await bus.append(protocol.reasoning_delta("c", "g", 1, "hmm"))
    for seq, text in enumerate(["Hel", "lo", " there", "!"], start=2):
        await bus.append(protocol.delta("c", "g", seq, text))
    so_far = await text_so_far(bus, "g", "Hello", "hmm", 3, chat="c")
    assert _of(so_far) == ("Hello there!", "hmm", 5)
    so_far = await text_so_far(bus, "g", "", "", 0, chat="c")
    assert _of(so_far) == ("Hello there!", "hmm", 5) and so_far.reasoning_in_log
    assert not (await text_so_far(bus, "g", "Hel", "hmm", 2, chat="c")).reasoning_in_log
    await bus.append(protocol.done("c", "g", 6, "completed", {"id": "m"}))
    assert _of(await text_so_far(bus, "g", "Hel", "hmm", 2, chat="c")) == ("Hello there!", "hmm", 5)


async def test_a_hole_in_the_log_ends_the_text_and_an_unknown_log_adds_nothing() -> None:
    bus = MemoryBus()
    entries = [log_entry(protocol.start("c", "g", "m", "demo", "d")),
               log_entry(protocol.delta("c", "g", 1, "a")),
               log_entry(protocol.delta("c", "g", 2, "b")),
               log_entry(protocol.delta("c", "g", 4, "d"))]  # 3 is missing
    await bus.restore_log("g", entries, chat="c")
    assert _of(await text_so_far(bus, "g", "", "", 0, chat="c")) == ("ab", "", 2)
    assert _of(await text_so_far(bus, "unknown", "kept", "r", 7, chat="c")) == ("kept", "r", 7)
