"""Catch-up: what a subscriber with a cursor has missed, or a snapshot of the chat.

"After the cursor" is everything in the chat after it: the rest of that generation and its
`done` from the bus log, then — if newer activity exists — a snapshot. A cursor that cannot
be served (unknown generation, expired log, another chat's generation) yields a snapshot.
"""

from __future__ import annotations

from typing import Any

from server import protocol
from server.bus.base import Bus
from server.protocol import Cursor, Event
from store.ids import iso
from store.models import Generation, Message, message_dict
from store.repo import Repo

NO_GENERATION = "-"  # cursor.gen of a client whose snapshot showed no generation yet


class Replay:
    def __init__(self, repo: Repo, bus: Bus, page_size: int = 50) -> None:
        self.repo = repo
        self.bus = bus
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
        tail = await self.bus.read_log(gen.id, cursor.seq)
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
        messages, has_more = await self.repo.messages_page(chat, limit=self.page_size)
        active = await self.repo.active_with_message(chat)
        active_state = await self._active_state(*active) if active else None
        if active_state is not None:
            cursor: dict[str, Any] | None = {"gen": active_state["gen"],
                                             "seq": active_state["seq"]}
        else:
            latest = await self.repo.latest_generation(chat)
            cursor = ({"gen": latest.id, "seq": latest.last_seq + 1} if latest
                      else {"gen": NO_GENERATION, "seq": 0})
        event = protocol.snapshot(chat, [message_dict(m) for m in messages], active_state)
        event.data["has_more"] = has_more
        event.data["cursor"] = cursor
        return event

    async def _active_state(self, gen: Generation, msg: Message) -> dict[str, Any]:
        """The active answer so far: SQL checkpoint plus the log after it. Reasoning times
        come with the checkpoints (about a second behind): reasoning that began since the
        last one is dated by the generation's start, an end not yet checkpointed is null."""
        content, reasoning, seq = msg.content, msg.reasoning, gen.last_seq
        started, ended = msg.reasoning_started_at, msg.reasoning_ended_at
        tail = await self.bus.read_log(gen.id, seq) or []
        for ev in tail:
            if ev.type == "delta":
                part, text = protocol.delta_part(ev)
                if part == protocol.REASONING:
                    reasoning += text
                    started = started or gen.started_at
                else:
                    content += text
                seq = ev.seq
        return {"gen": gen.id, "message": gen.message_id, "seq": seq, "content": content,
                "reasoning": reasoning, "reasoning_started_at": iso(started),
                "reasoning_ended_at": iso(ended), "provider": gen.provider,
                "model": gen.model}
