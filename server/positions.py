"""Positions in a chat's event stream: where a client is, which events it already has, and
where it resumes. One rule for every transport:

- a cursor starts where the client says it is: what it already has is a repeat, whether it
  comes from the catch-up or is heard live only afterwards;
- `start` opens a generation at seq 0 (a start of a generation the client has is a repeat:
  every generation, a `continue` too, has a new id); a positioned event (delta, done) moves to its
  (gen, seq); a `snapshot` moves to the cursor it carries.
- an event at or below what the client has of its generation is a repeat (replay and live
  overlap); one above the next is a gap (this process missed some: catch up from the log).
- a `done` may come from SQL after the log was lost, at or below what the client saw; it
  still ends the generation.
"""

from __future__ import annotations

from typing import Any

from chatcast.core.protocol import Cursor, Event

NO_GENERATION = "-"  # cursor.gen of a client whose snapshot showed no generation yet

#: A position as a plain tuple (gen, seq): it changes with every delivered frame; a `Cursor`
#: is built only when one is needed.
Position = tuple[str, int]

# What `ChatCursor.admit` says of an event.
DELIVER, REPEAT, GAP = 0, 1, 2

_KEEP_GENS = 8  # generations whose last seq a cursor remembers (a chat has one at a time)


def moved(position: Position | None, event: Event) -> Position | None:
    """The position after `event` (unchanged by events that carry none)."""
    if event.type == "snapshot":
        cursor = event.data.get("cursor")
        return (cursor["gen"], int(cursor["seq"])) if cursor else None
    if event.type == "start":
        gen = str(event.gen)
        # A start heard again after a snapshot that showed its generation under way (live
        # and catch-up overlap) does not take the position back to the generation's start.
        return position if position is not None and position[0] == gen else (gen, 0)
    if event.is_positioned:
        return (str(event.gen), event.seq)
    return position


def resume_point(active: Position | None, latest: Position | None) -> dict[str, Any]:
    """The cursor a snapshot carries: the active generation's position, else just after the
    latest generation's `done` (last text seq + 1), else before any generation."""
    gen, seq = active or latest or (NO_GENERATION, 0)
    return {"gen": gen, "seq": seq}


def encode(position: Position | None) -> str:
    """A position as the opaque `gen:seq` string of long-poll and SSE ids."""
    gen, seq = position or (NO_GENERATION, 0)
    return f"{gen}:{seq}"


class ChatCursor:
    """One client's position in one chat, and what it already has of each generation."""

    __slots__ = ("finished", "position", "seen")

    def __init__(self, start: Cursor | None = None) -> None:
        self.seen: dict[str, int] = {}  # gen → last seq delivered (or had by the client)
        self.position: Position | None = None
        if start is not None and start.gen != NO_GENERATION:
            self.seen[start.gen] = start.seq
            self.position = (start.gen, start.seq)
        # gens whose done was delivered; most cursors never need one (an empty set is 216 B)
        self.finished: set[str] | None = None

    def cursor(self) -> Cursor | None:
        return Cursor(gen=self.position[0], seq=self.position[1]) if self.position else None

    def admit(self, event: Event) -> int:
        """Whether to deliver `event` (DELIVER, and the position moves), drop it (REPEAT), or
        catch up first (GAP)."""
        if event.type == "snapshot":
            self._reset(event)
        elif event.type == "start":
            gen = str(event.gen)
            if gen in self.seen:
                return REPEAT  # the client has this generation already (every one is new)
            self.seen[gen] = 0
            self.position = (gen, 0)
        elif event.is_positioned:
            return self._advance(event)
        return DELIVER

    def _reset(self, snapshot: Event) -> None:
        data = snapshot.data
        active = data.get("active")
        self.seen.clear()
        self.finished = {m["gen"] for m in data["messages"]
                         if m.get("gen") and m.get("status") != "streaming"} or None
        if active:
            self.seen[active["gen"]] = int(active["seq"])
            if self.finished:
                self.finished.discard(active["gen"])
        self.position = moved(self.position, snapshot)

    def _advance(self, event: Event) -> int:
        gen = str(event.gen)
        if self.finished and gen in self.finished:
            return REPEAT  # its done (or a snapshot showing it over) was delivered already
        last = self.seen.get(gen)
        if event.type == "done" and last is not None and event.seq <= last:
            last = event.seq - 1  # a done from SQL after the log was lost: still final
        if last is not None and event.seq <= last:
            return REPEAT
        if last is not None and event.seq > last + 1:
            return GAP  # bus events are single positions: a jump means some were missed
        self.seen[gen] = event.seq
        self.position = (gen, event.seq)
        if event.type == "done":
            if self.finished is None:
                self.finished = set()
            self.finished.add(gen)
        if len(self.seen) > _KEEP_GENS:
            gone = next(iter(self.seen))
            self.seen.pop(gone)
            if self.finished:
                self.finished.discard(gone)
        return DELIVER
