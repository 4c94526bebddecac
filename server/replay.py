"""Catch-up: what a subscriber with a cursor has missed, or a snapshot of the chat.

"After the cursor" is everything in the chat after it: the rest of that generation and its
`done` from the bus log, then — if newer activity exists — a snapshot. A cursor that cannot
be served (unknown generation, expired log, another chat's generation) yields a snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chatcast.core import protocol
from chatcast.core.protocol import Cursor, Event
from chatcast.server.bus.base import GenerationLog
from chatcast.server.positions import NO_GENERATION, resume_point
from chatcast.store.ids import iso
from chatcast.store.models import Generation, Message, message_dict
from chatcast.store.repo import Repo


class Replay:
    def __init__(self, repo: Repo, logs: GenerationLog, page_size: int = 50) -> None:
        self.repo = repo
        self.logs = logs
        self.page_size = page_size

    async def catch_up(self, chat: str, cursor: Cursor | None) -> list[Event]:
        if cursor is None:
            return [await self.snapshot(chat)]
        if cursor.gen == NO_GENERATION:
            latest = await self.repo.latest_generation(chat)
            return [] if latest is None else [await self.snapshot(chat)]
        gen = await self.repo.generation(cursor.gen)
        if gen is None or gen.chat_id != chat:
            return [await self.snapshot(chat)]
        tail = await self.logs.read_log(gen.id, cursor.seq, chat=chat)
        if tail is None:
            return [await self.snapshot(chat)]
        if gen.status == "active":
            return tail
        has_done = any(e.type == "done" for e in tail)
        if not has_done and cursor.seq != gen.last_seq + 1:
            # Over, yet the log cannot bring this client to its done (e.g. the done was
            # written from SQL by another process after the owner died): show the truth.
            return [await self.snapshot(chat)]
        latest = await self.repo.latest_generation(chat)
        if latest is not None and latest.id != gen.id:
            return [*tail, await self.snapshot(chat)]
        return tail

    async def snapshot(self, chat: str) -> Event:
        state = await self.repo.chat_state(chat, self.page_size)
        messages, has_more, latest = state.messages, state.has_more, state.latest
        active_state = await self._active_state(*state.active) if state.active else None
        active_at = (active_state["gen"], active_state["seq"]) if active_state else None
        # After the latest generation's done (its seq is the last text seq + 1).
        latest_at = (latest.id, latest.last_seq + 1) if latest else None
        cursor = resume_point(active_at, latest_at)
        event = protocol.snapshot(chat, [message_dict(m) for m in messages], active_state)
        event.data["has_more"] = has_more
        event.data["cursor"] = cursor
        return event

    async def _active_state(self, gen: Generation, msg: Message) -> dict[str, Any]:
        """The active answer so far: SQL checkpoint plus the log after it. Reasoning times
        come with the checkpoints (about a second behind): reasoning that began since the
        last one is dated by the generation's start, an end not yet checkpointed is null."""
        so_far = await text_so_far(self.logs, gen.id, msg.content, msg.reasoning, gen.last_seq,
                                   chat=gen.chat_id)
        started, ended = msg.reasoning_started_at, msg.reasoning_ended_at
        if so_far.reasoning_in_log:
            started = started or gen.started_at
        return {"gen": gen.id, "message": gen.message_id, "seq": so_far.seq,
                "content": so_far.content, "reasoning": so_far.reasoning,
                "reasoning_started_at": iso(started), "reasoning_ended_at": iso(ended),
                "provider": gen.provider, "model": gen.model}


@dataclass(slots=True)
class TextSoFar:
    """A generation's answer so far, and the seq it reached."""

    content: str
    reasoning: str
    seq: int
    reasoning_in_log: bool = False  # the log added reasoning the checkpoint did not have
    #: The `done` right after the text, when the log has one (an owner that shut down with
    #: its answer unsaved left it there for the orphan sweep: see Runner._hand_over).
    done: Event | None = None


async def text_so_far(logs: GenerationLog, gen: str, content: str, reasoning: str,
                      checkpoint_seq: int, *, chat: str) -> TextSoFar:
    """A generation's text and reasoning: the SQL checkpoint (up to `checkpoint_seq`) plus
    the deltas of its log that continue it without a hole. What follows a hole cannot be
    placed, so it is left out; a log that is unknown adds nothing."""
    so_far = TextSoFar(content, reasoning, checkpoint_seq)
    for event in await logs.read_log(gen, checkpoint_seq, chat=chat) or ():
        if event.type == "done" and event.seq == so_far.seq + 1:
            so_far.done = event
        if event.type != "delta" or event.seq != so_far.seq + 1:
            break
        part, text = protocol.delta_part(event)
        if part == protocol.REASONING:
            so_far.reasoning += text
            so_far.reasoning_in_log = True
        else:
            so_far.content += text
        so_far.seq = event.seq
    return so_far
