"""A generation's `done` reaches the log however the bus is: a lost log is written again
first, a log another process sealed takes nothing, and a bus that stays down is given up
on (logged) after the bounded retries."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from chatcast.core import protocol
from chatcast.core.retry import Backoff
from chatcast.server import ending
from chatcast.server.bus.base import BusUnavailable, log_entry
from chatcast.server.bus.memory import MemoryBus


async def test_a_lost_log_is_restored_before_the_done() -> None:
    bus = MemoryBus()
    lost = [log_entry(protocol.start("c", "g", "m", "demo", "d")),
            log_entry(protocol.delta("c", "g", 1, "hi"))]
    await ending.publish_done(bus, "c", "g", 1, "completed", {"id": "m"}, None, None, lost=lost)
    events = await bus.read_log("g", -1, chat="c")
    assert events is not None
    assert [(e.type, e.seq) for e in events] == [("start", 0), ("delta", 1), ("done", 2)]


async def test_a_sealed_log_takes_no_done_and_a_dead_bus_is_given_up_on(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    bus = MemoryBus()
    await bus.append(protocol.done("c", "g", 3, "interrupted", {"id": "m"}))  # by another
    await ending.publish_done(bus, "c", "g", 1, "stopped", {"id": "m"}, None, None)
    events = await bus.read_log("g", -1, chat="c")
    assert events is not None and [e.data["status"] for e in events] == ["interrupted"]

    calls: list[Any] = []

    async def down(*args: Any) -> bool:
        calls.append(args)
        raise BusUnavailable("down")

    monkeypatch.setattr(bus, "append", down)
    monkeypatch.setattr(ending, "DONE_BACKOFF", Backoff(base_s=0.001, max_s=0.001))
    with caplog.at_level(logging.ERROR, logger="chatcast.ending"):
        await ending.publish_done(bus, "c", "g2", 1, "completed", {"id": "m"}, None, None)
    assert len(calls) == ending.DONE_ATTEMPTS
    assert "done not published" in caplog.text
