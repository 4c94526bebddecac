"""chatcast.client's per-chat assembly and reconnect policy, on hand-made frames: each
position applied once, a snapshot after a gap reconciled into the missing tail (or a `Done`
for an answer that ended meanwhile), a foreign generation's delta asks for a resync, and the
close-code table."""

from __future__ import annotations

from typing import Any

from chatcast.client import (
    Done,
    ReasoningDelta,
    Snapshot,
    Start,
    TextDelta,
    _ChatState,
    _plan,
    _ws_url,
)
from chatcast.core import protocol
from chatcast.core.codes import Close
from chatcast.core.retry import Backoff


def ev(**data: Any) -> protocol.Event:
    return protocol.Event({"chat": "c1", **data})


def started() -> _ChatState:
    st = _ChatState("c1")
    st.apply(protocol.start("c1", "g1", "m1", "demo", "demo-1"))
    return st


async def test_each_position_once_and_the_done_check() -> None:
    st = started()
    out = []
    for frame in (protocol.reasoning_delta("c1", "g1", 1, "hmm "),
                  protocol.delta("c1", "g1", 2, "Hel"), protocol.delta("c1", "g1", 2, "Hel"),
                  protocol.delta("c1", "g1", 3, "lo")):
        out += st.apply(frame)
    assert [type(e) for e in out] == [ReasoningDelta, TextDelta, TextDelta]
    assert st.cursor == protocol.Cursor(gen="g1", seq=3)
    msg = {"id": "m1", "content": "Hello", "reasoning": "hmm "}
    [done] = st.apply(protocol.done("c1", "g1", 4, "completed", msg))
    assert isinstance(done, Done) and done.verified and done.text == "Hello"
    assert st.apply(protocol.done("c1", "g1", 4, "completed", msg)) == []  # seen already
    assert st.apply(protocol.delta("c1", "g1", 5, "late")) == []


async def test_a_copy_that_differs_fails_the_check() -> None:
    st = started()
    st.apply(protocol.delta("c1", "g1", 1, "Hellp"))
    [done] = st.apply(protocol.done("c1", "g1", 2, "completed", {"id": "m1", "content": "Hello"}))
    assert isinstance(done, Done) and not done.verified
    fixed = st.settle(done, "Hello", "")
    assert fixed.text == "Hello" and not fixed.verified and st.known["m1"] == ("Hello", "")


async def test_a_snapshot_after_a_gap_gives_the_missing_tail() -> None:
    st = started()
    st.apply(protocol.delta("c1", "g1", 1, "Hel"))
    active = {"gen": "g1", "message": "m1", "seq": 7, "content": "Hello, world",
              "reasoning": ""}
    out = st.apply(protocol.snapshot("c1", [], active))
    assert isinstance(out[0], Snapshot)
    assert [(type(e), getattr(e, "text", None)) for e in out[1:]] == [(TextDelta, "lo, world")]
    assert st.cursor == protocol.Cursor(gen="g1", seq=7)
    assert st.apply(protocol.delta("c1", "g1", 7, "x")) == []


async def test_a_snapshot_finishes_an_answer_that_ended_meanwhile() -> None:
    st = started()
    st.apply(protocol.delta("c1", "g1", 1, "Hel"))
    row = {"id": "m1", "gen": "g1", "status": "stopped", "content": "Hello", "reasoning": ""}
    snap = protocol.snapshot("c1", [row], None)
    snap.data["cursor"] = {"gen": "g1", "seq": 3}
    out = st.apply(snap)
    assert [type(e) for e in out] == [Snapshot, TextDelta, Done]
    done = out[-1]
    assert isinstance(done, Done) and (done.status, done.text) == ("stopped", "Hello")
    assert st.cursor == protocol.Cursor(gen="g1", seq=3)


async def test_a_running_answer_first_seen_in_a_snapshot_starts_with_its_text() -> None:
    st = _ChatState("c1")
    active = {"gen": "g2", "message": "m2", "seq": 4, "content": "So far",
              "reasoning": "thought", "provider": "demo", "model": "demo-1"}
    out = st.apply(protocol.snapshot("c1", [], active))
    assert [type(e) for e in out] == [Snapshot, Start, ReasoningDelta, TextDelta]


async def test_a_delta_of_an_unknown_generation_asks_for_a_resync() -> None:
    st = started()
    assert st.apply(ev(type="delta", gen="other", seq=1, part="text", text="x")) == []
    assert st.needs_resync


def test_the_close_code_table() -> None:
    b = Backoff(base_s=0.5, max_s=15.0, jitter=1.0)
    assert not _plan(Close.UNAUTHORIZED, "", True, 0, b).reconnect
    assert not _plan(Close.POLICY, "", True, 0, b).reconnect
    assert not _plan(Close.UNAUTHORIZED, "", False, 0, b).reconnect
    assert _plan(Close.NORMAL, "", False, 3, b).reconnect  # a connect that failed: retry
    going = _plan(Close.GOING_AWAY, "", True, 5, b)
    assert going.reconnect and going.reset and going.delay_s <= 0.1
    limited = _plan(Close.RATE_LIMITED, '{"retry_after": 7}', True, 0, b)
    assert limited.reconnect and 7 <= limited.delay_s <= 7.1
    lost = _plan(1006, "", True, 10, b)
    assert lost.reconnect and 0 <= lost.delay_s <= 15.0


def test_the_websocket_url_keeps_a_mount_prefix() -> None:
    assert _ws_url("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/ws"
    assert _ws_url("https://example.com/chat/") == "wss://example.com/chat/ws"
