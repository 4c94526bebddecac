"""Orphans: generations whose owning process died. They are marked `interrupted`, keep the
text tabs already saw, and their subscribers get `done{interrupted}`."""

from __future__ import annotations

import logging
from collections.abc import Container

from chatcast.server.bus.base import BusUnavailable, GenerationLog, Leases
from chatcast.server.ending import publish_done
from chatcast.server.replay import text_so_far
from chatcast.store.ids import utcnow
from chatcast.store.models import Generation, Reasoning, message_dict
from chatcast.store.repo import Repo

log = logging.getLogger("chatcast.reaper")


class Reaper:
    def __init__(self, repo: Repo, logs: GenerationLog, leases: Leases,
                 local: Container[str]) -> None:
        self.repo = repo
        self.logs = logs
        self.leases = leases
        self.local = local  # generations this process runs itself
        self._missing: set[str] = set()  # gens whose lease was missing at the last check

    async def sweep(self) -> int:
        """Interrupt active generations whose owner's lease is gone on two sweeps in a row
        (a living owner re-creates a lease lost with Redis before the second)."""
        reaped = 0
        missing, self._missing = self._missing, set()
        for gen in await self.repo.active_generations():
            if gen.id in self.local:
                continue
            try:
                if await self.leases.lease_owner(gen.id) is not None:
                    continue
            except BusUnavailable:
                return reaped  # cannot tell now; nothing is reaped while the bus is down
            if gen.id not in missing:
                self._missing.add(gen.id)  # confirm on the next sweep
                continue
            try:
                await self.logs.seal(gen.id)  # a living owner cannot add text after this
            except BusUnavailable:
                return reaped
            content, reasoning, seq = await self._recover_text(gen)
            final = await self.repo.finish(gen.id, "interrupted", content, seq,
                                           meta=gen.meta, only_if_active=True,
                                           reasoning=reasoning)
            if final is None:
                continue  # someone else finished it
            reaped += 1
            log.warning("generation interrupted: its owner is gone",
                        extra={"gen": gen.id, "chat": gen.chat_id, "owner": gen.owner})
            await publish_done(self.logs, gen.chat_id, gen.id, seq, "interrupted",
                               message_dict(final), None, None)
        return reaped

    async def _recover_text(self, gen: Generation) -> tuple[str, Reasoning, int]:
        """A dead owner's text and reasoning: the SQL checkpoint plus whatever the log has
        after it, so what tabs already showed is kept."""
        active = await self.repo.active_with_message(gen.chat_id)
        if active is None or active[0].id != gen.id:
            msg = await self.repo.get_message(gen.message_id)
            if msg is None:
                return "", Reasoning(), gen.last_seq
            return msg.content, _ended(Reasoning.of(msg)), gen.last_seq
        checkpoint, msg = active
        reasoning = Reasoning.of(msg)
        try:
            so_far = await text_so_far(self.logs, gen.id, msg.content, reasoning.text,
                                       checkpoint.last_seq)
        except BusUnavailable:
            return msg.content, _ended(reasoning), checkpoint.last_seq
        reasoning.text = so_far.reasoning
        if so_far.reasoning_in_log:
            reasoning.started_at = reasoning.started_at or gen.started_at
        return so_far.content, _ended(reasoning), so_far.seq


def _ended(reasoning: Reasoning) -> Reasoning:
    """Reasoning of an answer that is over: it ended by now at the latest."""
    if reasoning.text and reasoning.ended_at is None:
        reasoning.ended_at = utcnow()
    return reasoning
