"""The chatcast → UI message stream mapping, sans I/O."""

from __future__ import annotations

from typing import Any

from chatcast.server.aisdk_map import Follow, sse, ui_history, ui_message


def delta(seq: int, text: str, gen: str = "g1", **extra: Any) -> dict[str, Any]:
    return {"type": "delta", "chat": "c1", "gen": gen, "seq": seq, "part": "text",
            "text": text, **extra}


def thought(seq: int, text: str) -> dict[str, Any]:
    return {"type": "delta", "chat": "c1", "gen": "g1", "seq": seq, "part": "reasoning",
            "text": "", "reasoning": text}


def done(seq: int, status: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"type": "done", "chat": "c1", "gen": "g1", "seq": seq, "status": status,
            "message": {"id": "m1", "content": content}, **extra}


def follow(**kw: Any) -> Follow:
    return Follow("g1", "m1", "c1", "demo", "demo-1", **kw)


def types(chunks: list[dict[str, Any]]) -> list[str]:
    return [c["type"] for c in chunks]


def text_of(chunks: list[dict[str, Any]], part: str = "text") -> str:
    return "".join(c["delta"] for c in chunks if c["type"] == f"{part}-delta")


def test_a_completed_answer_streams_as_one_text_part() -> None:
    f = follow()
    out = f.opening()
    assert out[0] == {"type": "start", "messageId": "m1", "messageMetadata": {
        "chat": "c1", "gen": "g1", "provider": "demo", "model": "demo-1",
        "status": "streaming"}}
    out += f.feed(delta(1, "Hel")) + f.feed(delta(2, "lo"))
    out += f.feed(done(3, "completed", "Hello", usage={"input_tokens": 1}))
    assert types(out) == ["start", "start-step", "text-start", "text-delta", "text-delta",
                          "text-end", "message-metadata", "finish-step", "finish"]
    assert text_of(out) == "Hello"
    assert out[-1] == {"type": "finish", "finishReason": "stop"}
    assert out[-3]["messageMetadata"] == {"status": "completed", "usage": {"input_tokens": 1}}
    assert f.finished and f.feed(delta(4, "late")) == []
    assert sse(out[-1]) == b'data: {"type":"finish","finishReason":"stop"}\n\n'


def test_replayed_and_foreign_deltas_are_not_emitted() -> None:
    f = follow()
    f.opening()
    first = f.feed(delta(1, "a")) + f.feed(delta(2, "b"))
    assert f.feed(delta(2, "b")) == [] and f.feed(delta(1, "a")) == []
    assert f.feed(delta(3, "zzz", gen="other")) == []
    assert f.feed({"type": "message", "chat": "c1", "message": {}}) == []
    assert text_of(first) == "ab"


def test_done_adds_only_the_text_not_emitted_yet() -> None:
    f = follow()
    out = f.opening() + f.feed(delta(1, "ab"))
    out += f.feed(done(5, "completed", "abcdef"))  # deltas 2-4 were never seen
    assert text_of(out) == "abcdef"


def test_a_snapshot_of_the_running_answer_fills_in_what_is_missing() -> None:
    f = follow()
    out = f.opening("Hel", seq=1)  # resume: the message so far
    snap = {"type": "snapshot", "chat": "c1", "messages": [],
            "active": {"gen": "g1", "message": "m1", "seq": 3, "content": "Hello w"}}
    out += f.feed(snap)
    assert f.seq == 3
    out += f.feed(delta(3, "o w")) + f.feed(delta(4, "orld"))
    assert text_of(out) == "Hello world"


def test_a_snapshot_showing_the_answer_over_finishes_the_stream() -> None:
    f = follow()
    out = f.opening() + f.feed(delta(1, "Hi"))
    snap = {"type": "snapshot", "chat": "c1", "active": None, "messages": [
        {"id": "m1", "content": "Hi there", "status": "stopped", "usage": None}]}
    out += f.feed(snap)
    assert text_of(out) == "Hi there" and types(out)[-1] == "abort" and f.finished


def test_a_snapshot_without_the_answer_ends_it_as_interrupted() -> None:
    f = follow()
    out = f.opening() + f.feed({"type": "snapshot", "chat": "c1", "active": None,
                                "messages": []})
    assert out[-1] == {"type": "finish", "finishReason": "other"} and f.finished


def test_stopped_is_an_abort_without_finish() -> None:
    out = (f := follow()).opening() + f.feed(delta(1, "part")) + f.feed(
        done(2, "stopped", "part"))
    assert types(out)[-4:] == ["text-end", "message-metadata", "finish-step", "abort"]
    assert out[-1] == {"type": "abort", "reason": "stopped"}
    assert "finish" not in types(out)


def test_a_failed_answer_ends_with_an_error_chunk_and_its_safe_message() -> None:
    f = follow()
    err = {"code": "provider_error", "message": "the model refused the request"}
    out = f.opening() + f.feed(done(1, "error", "", error=err))
    assert {"type": "error", "errorText": "the model refused the request"} in out
    assert out[-1] == {"type": "finish", "finishReason": "error"}
    assert out[-4]["messageMetadata"] == {"status": "error", "error": err}
    assert "text-start" not in types(out)  # no empty text part


def test_interrupted_is_other_unless_the_client_asked() -> None:
    plain = (f := follow()).opening() + f.feed(done(1, "interrupted", ""))
    assert plain[-1] == {"type": "finish", "finishReason": "other"}
    asked = (g := follow(interrupted_reason=True)).opening() + g.feed(
        done(1, "interrupted", ""))
    assert asked[-1] == {"type": "finish", "finishReason": "interrupted"}


def test_reasoning_is_its_own_part_before_the_text() -> None:
    f = follow()
    out = f.opening()
    out += f.feed(thought(1, "thinking ")) + f.feed(thought(2, "hard"))
    out += f.feed(delta(3, "Answer"))
    out += f.feed(done(4, "completed", "Answer"))
    assert types(out) == ["start", "start-step", "reasoning-start", "reasoning-delta",
                          "reasoning-delta", "reasoning-end", "text-start", "text-delta",
                          "text-end", "message-metadata", "finish-step", "finish"]
    assert text_of(out, "reasoning") == "thinking hard" and text_of(out) == "Answer"
    ids = {c["type"]: c["id"] for c in out if "id" in c}
    assert ids["reasoning-start"] == ids["reasoning-end"] != ids["text-start"]


def test_reasoning_after_the_answer_began_opens_another_run() -> None:
    f = follow()
    out = f.opening() + f.feed(thought(1, "a")) + f.feed(delta(2, "B"))
    out += f.feed(thought(3, "c")) + f.feed(delta(4, "D"))
    out += f.feed(done(5, "completed", "BD", ))
    runs = [c["id"] for c in out if c["type"].endswith("-start") and c["type"] != "start"]
    assert runs == ["reasoning-1", "text-2", "reasoning-3", "text-4"]
    assert text_of(out, "reasoning") == "ac" and text_of(out) == "BD"


def test_done_fills_in_reasoning_not_seen() -> None:
    f = follow()
    out = f.opening() + f.feed(thought(1, "th"))
    msg = {"id": "m1", "content": "", "reasoning": "thought long"}
    out += f.feed({"type": "done", "gen": "g1", "seq": 3, "status": "stopped", "message": msg})
    assert text_of(out, "reasoning") == "thought long" and "text-start" not in types(out)


def test_resume_replays_reasoning_and_text_so_far() -> None:
    f = follow()
    out = f.opening("Ans", "I thought", seq=5)
    assert types(out) == ["start", "start-step", "reasoning-start", "reasoning-delta",
                          "reasoning-end", "text-start", "text-delta"]
    out += f.feed(done(7, "completed", "Answer", ))
    assert text_of(out) == "Answer" and text_of(out, "reasoning") == "I thought"


def test_history_as_ui_messages() -> None:
    user = ui_message({"id": "01a", "chat": "c1", "role": "user", "content": "hi",
                       "status": "complete", "gen": "g1", "client_msg_id": "ui-1"})
    assert user["id"] == "ui-1" and user["parts"] == [{"type": "text", "text": "hi"}]
    assert user["metadata"]["id"] == "01a" and user["metadata"]["status"] == "completed"
    answer = ui_message({"id": "m1", "chat": "c1", "role": "assistant", "content": "yo",
                         "status": "streaming", "gen": "g1", "usage": None})
    assert answer["id"] == "m1" and answer["role"] == "assistant"
    assert answer["parts"] == [{"type": "step-start"},
                               {"type": "text", "text": "yo", "state": "streaming"}]
    empty = ui_message({"id": "m2", "role": "assistant", "content": "", "status": "error"})
    assert empty["parts"] == [{"type": "step-start"}]
    thinker = ui_message({"id": "m3", "role": "assistant", "content": "A", "status": "complete",
                          "reasoning": "R", "reasoning_started_at": "t0",
                          "reasoning_ended_at": "t1"})
    assert thinker["parts"] == [{"type": "step-start"},
                                {"type": "reasoning", "text": "R", "state": "done"},
                                {"type": "text", "text": "A", "state": "done"}]
    assert thinker["metadata"]["reasoning_ended_at"] == "t1"
    still = ui_message({"id": "m4", "role": "assistant", "content": "", "status": "streaming",
                        "reasoning": "hmm"})
    assert still["parts"] == [{"type": "step-start"},
                              {"type": "reasoning", "text": "hmm", "state": "streaming"}]


def test_history_keeps_the_newest_of_regenerated_answers() -> None:
    rows = [{"id": "q1", "role": "user", "content": "q"},
            {"id": "a1", "role": "assistant", "content": "old", "status": "complete"},
            {"id": "a2", "role": "assistant", "content": "new", "status": "complete"},
            {"id": "q2", "role": "user", "content": "q2"},
            {"id": "a3", "role": "assistant", "content": "x", "status": "streaming"}]
    assert [m["id"] for m in ui_history(rows)] == ["q1", "a2", "q2", "a3"]
