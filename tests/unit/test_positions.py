"""One rule for positions, used by the hub's cursors, long-poll's cursor and snapshots."""

from __future__ import annotations

from chatcast.core import protocol
from chatcast.server import positions
from chatcast.server.positions import DELIVER, GAP, REPEAT, ChatCursor


def test_the_position_after_events() -> None:
    snap = protocol.snapshot("c", [], None)
    snap.data["cursor"] = {"gen": "g1", "seq": 4}
    events = [snap, protocol.start("c", "g2", "m", "demo", "d"), protocol.delta("c", "g2", 1, "x"),
              protocol.message("c", {"id": "m2"})]
    position = None
    trail = []
    for event in events:
        position = positions.moved(position, event)
        trail.append(positions.encode(position))
    assert trail == ["g1:4", "g2:0", "g2:1", "g2:1"]
    assert positions.encode(None) == "-:0"


def test_a_snapshot_resumes_at_the_active_generation_else_after_the_latest() -> None:
    assert positions.resume_point(("g2", 7), ("g1", 9)) == {"gen": "g2", "seq": 7}
    assert positions.resume_point(None, ("g1", 9)) == {"gen": "g1", "seq": 9}
    assert positions.resume_point(None, None) == {"gen": positions.NO_GENERATION, "seq": 0}


def test_a_cursor_delivers_once_in_order_and_sees_gaps() -> None:
    cursor = ChatCursor()
    assert cursor.admit(protocol.start("c", "g", "m", "demo", "d")) == DELIVER
    assert cursor.admit(protocol.delta("c", "g", 1, "a")) == DELIVER
    assert cursor.admit(protocol.delta("c", "g", 1, "a")) == REPEAT
    assert cursor.admit(protocol.delta("c", "g", 3, "c")) == GAP
    assert cursor.position == ("g", 1)
    done = protocol.done("c", "g", 1, "stopped", {"id": "m", "content": "a"})
    assert cursor.admit(done) == DELIVER  # a done from SQL, at what was seen: still final
    assert cursor.admit(done) == REPEAT
    assert cursor.cursor() == protocol.Cursor(gen="g", seq=1)


def test_a_start_heard_again_after_a_snapshot_of_its_generation_moves_nothing() -> None:
    """Live and catch-up overlap: a long-poll's answer can be a snapshot showing the answer
    at seq 1 followed by the live `start` of that answer. Its cursor stays at seq 1 (back at
    0, the next poll would replay seq 1 again, merged into seq 2), and the hub's cursor does
    not send that start at all."""
    snap = protocol.snapshot("c", [], {"gen": "g", "message": "m", "seq": 1, "content": "## "})
    snap.data["cursor"] = {"gen": "g", "seq": 1}
    start = protocol.start("c", "g", "m", "demo", "d")
    position = positions.moved(positions.moved(None, snap), start)
    assert positions.encode(position) == "g:1"
    cursor = ChatCursor()
    assert cursor.admit(snap) == DELIVER
    assert cursor.admit(start) == REPEAT
    assert cursor.admit(protocol.delta("c", "g", 1, "## ")) == REPEAT
    assert cursor.admit(protocol.delta("c", "g", 2, "On ")) == DELIVER
    assert cursor.admit(protocol.start("c", "g2", "m", "demo", "d")) == DELIVER
    assert cursor.position == ("g2", 0)
