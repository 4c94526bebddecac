"""The exactness helper: rebuild a chat's text from the events a client received, the way a
careful client would, and prove it equals what the server says it produced.

Feed every event of one chat, in the order received, to `Assembler.apply`. It follows
docs/protocol.md: `snapshot` replaces state, `message` adds a message, `start` opens a generation
(a continue-generation appends to its existing message), `delta` appends text, `done` closes.
A `delta`/`done` whose `seq` is not above the cursor of its generation is *not* applied and is
recorded as a duplicate; any duplicate or protocol problem makes `check_done` fail, so a server
that repeats or skips text cannot pass a streaming test.

Reasoning (a `delta` with `part: "reasoning"`) is assembled into the message's `reasoning`
and verified against `done.reasoning_length` / `reasoning_sha256`. With `v1=True` the
assembler is a client written against protocol v1 that knows nothing of reasoning: it reads
only `text` of every delta, exactly as such a client does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from chatcast.core.protocol import Event

EventLike = Mapping[str, Any] | Event


@dataclass(frozen=True, slots=True)
class Cursor:
    gen: str
    seq: int

    def as_dict(self) -> dict[str, Any]:
        """The `cursor` field of a WS `subscribe`."""
        return {"gen": self.gen, "seq": self.seq}

    def as_text(self) -> str:
        """The SSE `Last-Event-ID` / `?cursor=` form."""
        return f"{self.gen}:{self.seq}"


def digest(text: str) -> tuple[int, str]:
    """(code points, sha256 of UTF-8), as `done.length` / `done.sha256`."""
    return len(text), hashlib.sha256(text.encode()).hexdigest()


def as_data(event: EventLike) -> dict[str, Any]:
    return dict(event.data) if isinstance(event, Event) else dict(event)


class Assembler:
    """Assembled state of one chat. `chat=None` adopts the chat of the first event."""

    def __init__(self, chat: str | None = None, *, strict: bool = False,
                 v1: bool = False) -> None:
        self.chat = chat
        self.strict = strict  # raise at once instead of recording
        self.v1 = v1  # know nothing of reasoning
        self.cursor: Cursor | None = None
        self.messages: dict[str, dict[str, Any]] = {}  # id -> message, content as assembled
        self.gen_message: dict[str, str] = {}  # gen -> assistant message id
        self.last_seq: dict[str, int] = {}  # gen -> highest seq applied
        self.done: dict[str, dict[str, Any]] = {}  # gen -> its done event
        self.done_text: dict[str, str] = {}  # gen -> its message's text when done arrived
        self.done_reasoning: dict[str, str] = {}  # gen -> its message's reasoning then
        self.finished: set[str] = set()  # gens a snapshot showed as over
        self.duplicates: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.applied = 0

    # -- feeding -----------------------------------------------------------------------

    def feed(self, events: Iterable[EventLike]) -> Assembler:
        for event in events:
            self.apply(event)
        return self

    def apply(self, event: EventLike) -> None:
        data = as_data(event)
        kind = data.get("type")
        chat = data.get("chat")
        if chat is None or kind not in ("snapshot", "message", "start", "delta", "done"):
            return  # ack, error, pong, ...: not chat state
        if self.chat is None:
            self.chat = str(chat)
        if chat != self.chat:
            return
        self.applied += 1
        if kind == "snapshot":
            self._snapshot(data)
        elif kind == "message":
            msg = dict(data["message"])
            self.messages.setdefault(str(msg["id"]), msg)
        elif kind == "start":
            self._start(data)
        elif kind == "delta":
            self._delta(data)
        else:
            self._done(data)

    def _snapshot(self, data: dict[str, Any]) -> None:
        for msg in data.get("messages") or []:
            self.messages[str(msg["id"])] = dict(msg)
            if msg.get("gen") and msg.get("status") not in (None, "streaming"):
                self.finished.add(str(msg["gen"]))
        active = data.get("active")
        if active:
            gen, mid, seq = str(active["gen"]), str(active["message"]), int(active["seq"])
            msg = self.messages.setdefault(mid, {"id": mid, "role": "assistant", "gen": gen})
            msg["content"] = str(active.get("content", ""))
            if not self.v1:
                msg["reasoning"] = str(active.get("reasoning") or "")
            self.gen_message[gen] = mid
            self.last_seq[gen] = seq
            self.finished.discard(gen)
            self.cursor = Cursor(gen, seq)
        else:
            self.cursor = None

    def _start(self, data: dict[str, Any]) -> None:
        gen, mid = str(data["gen"]), str(data["message"])
        if gen in self.gen_message:
            return  # already known (e.g. from a snapshot); never reset its text
        msg = self.messages.setdefault(mid, {"id": mid, "role": "assistant", "content": ""})
        msg["gen"] = gen  # a continue-generation keeps the message's text and appends to it
        msg.setdefault("content", "")
        self.gen_message[gen] = mid
        self.last_seq[gen] = 0
        self.cursor = Cursor(gen, 0)

    def _delta(self, data: dict[str, Any]) -> None:
        gen, seq = str(data["gen"]), int(data["seq"])
        if not self._positioned(data, gen, seq):
            return
        mid = self.gen_message[gen]
        msg = self.messages[mid]
        if not self.v1 and data.get("part") == "reasoning":
            if data["text"] != "":
                self._problem(f"reasoning delta {gen}:{seq} with text {data['text']!r}")
            msg["reasoning"] = str(msg.get("reasoning") or "") + str(data["reasoning"])
        elif not self.v1 and data.get("part") not in ("text", None):  # None: an older server
            self._problem(f"delta {gen}:{seq} without a known part: {data.get('part')!r}")
        else:
            msg["content"] = str(msg.get("content", "")) + str(data["text"])
        self.last_seq[gen] = seq
        self.cursor = Cursor(gen, seq)

    def _done(self, data: dict[str, Any]) -> None:
        gen, seq = str(data["gen"]), int(data["seq"])
        if not self._positioned(data, gen, seq):
            return
        self.done[gen] = data
        self.done_text[gen] = self.text(gen)
        self.done_reasoning[gen] = self.reasoning(gen)
        final = data.get("message") or {}
        msg = self.messages[self.gen_message[gen]]
        for key, value in final.items():
            # What we assembled stays ours; check_done compares it with the final row.
            if key != "content" and (self.v1 or key != "reasoning"):
                msg[key] = value
        self.last_seq[gen] = seq
        self.cursor = Cursor(gen, seq)

    def _positioned(self, data: dict[str, Any], gen: str, seq: int) -> bool:
        if gen in self.done:
            self._duplicate(data, f"{data['type']} {gen}:{seq} after that generation's done")
            return False
        if gen not in self.gen_message:
            if gen in self.finished:
                self._problem(f"{data['type']} {gen}:{seq} for a generation the snapshot "
                              "showed as finished")
            else:
                self._problem(f"{data['type']} {gen}:{seq} before any start/snapshot of it")
            return False
        if seq <= self.last_seq[gen]:
            self._duplicate(data, f"{data['type']} {gen}:{seq} not above cursor "
                                  f"{gen}:{self.last_seq[gen]}")
            return False
        return True

    def _duplicate(self, data: dict[str, Any], why: str) -> None:
        self.duplicates.append(data)
        if self.strict:
            raise AssertionError(f"duplicate: {why}")
        self.problems.append(f"duplicate: {why}")

    def _problem(self, why: str) -> None:
        if self.strict:
            raise AssertionError(why)
        self.problems.append(why)

    # -- reading -----------------------------------------------------------------------

    def text(self, gen: str) -> str:
        """The assembled text of the message that `gen` writes."""
        return str(self.messages[self.gen_message[gen]].get("content", ""))

    def reasoning(self, gen: str) -> str:
        """The assembled reasoning of the message that `gen` writes ("" for a v1 client)."""
        if self.v1:
            return ""
        return str(self.messages[self.gen_message[gen]].get("reasoning") or "")

    def message_text(self, message_id: str) -> str:
        return str(self.messages[message_id].get("content", ""))

    def seed(self, message_id: str, content: str) -> None:
        """Tell the assembler a message's text known from elsewhere (e.g. SQL or REST)."""
        self.messages.setdefault(message_id, {"id": message_id})["content"] = content

    def assert_clean(self) -> None:
        assert not self.problems, "protocol problems:\n  " + "\n  ".join(self.problems)

    def check_done(self, done: EventLike | None = None, *, gen: str | None = None) -> str:
        """Assert the generation of `done` (or the recorded done of `gen`) was assembled
        exactly: no duplicates or problems, text == done.message.content, and length and
        sha256 match. Returns the assembled text."""
        if done is None:
            assert gen is not None, "check_done needs a done event or gen="
            assert gen in self.done, f"no done received for generation {gen}"
            data = self.done[gen]
        else:
            data = as_data(done)
        assert data.get("type") == "done", f"not a done event: {data.get('type')}"
        gen = str(data["gen"])
        self.assert_clean()
        assert gen in self.gen_message, f"generation {gen} never started here"
        # A later continue-generation appends to the same message: compare what it was then.
        text = self.done_text.get(gen, self.text(gen))
        final = str((data.get("message") or {}).get("content", ""))
        assert text == final, (
            f"assembled text of {gen} differs from done.message.content "
            f"(assembled {len(text)} chars, final {len(final)}):\n"
            f"  assembled: {text[:200]!r}\n  final:     {final[:200]!r}")
        length, sha = digest(text)
        assert length == data["length"], f"length {length} != done.length {data['length']}"
        assert sha == data["sha256"], "sha256 of assembled text != done.sha256"
        if not self.v1:
            reasoning = self.done_reasoning.get(gen, self.reasoning(gen))
            final_reasoning = str((data.get("message") or {}).get("reasoning") or "")
            assert reasoning == final_reasoning, (
                f"assembled reasoning of {gen} differs from done.message.reasoning:\n"
                f"  assembled: {reasoning[:200]!r}\n  final:     {final_reasoning[:200]!r}")
            length, sha = digest(reasoning)
            assert length == data["reasoning_length"], "reasoning length != done's"
            assert sha == data["reasoning_sha256"], "reasoning sha256 != done's"
        return text
