"""Orphans: generations whose owning process died. They are marked `interrupted`, keep the
text tabs already saw, and their subscribers get `done{interrupted}`.

An owner is alive as long as its lease is: a generation whose lease is held is never taken,
whatever state SQL shows (e.g. an answer whose final write waits for the database). An
answer that was over before its owner died is saved as it ended (status, text, usage), not
as an interruption: an owner that shut down with its answer unsaved left that answer's
`done` in the bus log (handed over: its tabs have it already), and an owner whose final
write began to wait for the database recorded that `done` beside the log at once
(`GenerationLog.record_end`: it is published once the answer is saved, so an owner that was
killed while it waited still ends with the right status)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Container

from chatcast.core.protocol import Event
from chatcast.server.bus.base import BusUnavailable, GenerationLog, Leases
from chatcast.server.ending import publish_done
from chatcast.server.hooks import EndHook, no_hook
from chatcast.server.replay import text_so_far
from chatcast.store.ids import utcnow
from chatcast.store.models import Generation, Reasoning, message_dict
from chatcast.store.repo import Repo

log = logging.getLogger("chatcast.reaper")


class Reaper:
    def __init__(self, repo: Repo, logs: GenerationLog, leases: Leases,
                 local: Container[str], *, grace_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.repo = repo
        self.logs = logs
        self.leases = leases
        self.local = local  # generations this process runs itself
        #: How long a lease must have been missing, on every sweep since, before its
        #: generation is reaped (L/3 in a server: two lease ticks).
        self.grace_s = grace_s
        self._clock = clock
        #: Gens whose lease was missing at the last sweep, and since when (on every sweep).
        self._missing: dict[str, float] = {}
        self._last_sweep: float | None = None
        #: Told of every generation this sweep ended (server/hooks.py); must not wait.
        self.on_end: EndHook = no_hook

    async def sweep(self) -> int:
        """Interrupt active generations whose owner's lease has been gone for `grace_s` at
        least, on every sweep since it was first seen gone, and on two sweeps in a row at
        least. Raises BusUnavailable or StorageUnavailable while either is down (nothing is
        reaped).

        The rule: a living owner refreshes its leases every L/6, each shard's within 3/4 of
        that, shard by shard, so a lease that lapsed or was lost while its shard could not
        be reached (a Redis restart, a Redis Cluster failover: node timeout + election, a
        few seconds) is back within 1.75 * L/6 of the shard answering again. The sweep
        waits 2 * L/6 from the first sweep that found the lease missing (which the shard
        answered) before it reaps. A sweep that could not finish (the bus or the database
        unavailable) confirms nothing: the generations it did not reach start over. So do
        all of them when the previous sweep was more than twice `grace_s` ago (this
        process did not lead the cleanup meanwhile: what it saw then is stale)."""
        reaped = 0
        now = self._clock()
        missing, self._missing = self._missing, {}
        if self._last_sweep is not None and now - self._last_sweep > 2 * self.grace_s > 0:
            missing = {}
        self._last_sweep = now
        for gen in await self.repo.active_generations():
            if gen.id in self.local:
                continue
            # BusUnavailable ends the sweep: whose lease is gone cannot be told now, and
            # nothing is reaped while the bus is down.
            if await self.leases.lease_owner(gen.id, chat=gen.chat_id) is not None:
                continue
            since = missing.get(gen.id)
            if since is None or now - since < self.grace_s:
                self._missing[gen.id] = now if since is None else since  # confirm later
                continue
            # A living owner cannot add text after this.
            await self.logs.seal(gen.id, chat=gen.chat_id)
            if await self._reap(gen):
                reaped += 1
        return reaped

    async def _reap(self, gen: Generation) -> bool:
        """End a dead owner's generation in SQL (and tell its tabs); False if another
        process ended it first."""
        content, reasoning, seq, handed = await self._recover_text(gen)
        if handed is not None:  # its tabs got this done from the log already
            return await self._save_end(gen, handed, content, reasoning, published=True)
        recorded = await self.logs.recorded_end(gen.id, chat=gen.chat_id)
        if recorded is not None:
            return await self._save_end(gen, recorded, content, reasoning, published=False)
        final = await self.repo.finish(gen.id, "interrupted", content, seq,
                                       meta=gen.meta, only_if_active=True,
                                       reasoning=reasoning)
        if final is None:
            return False  # someone else finished it
        log.warning("generation interrupted: its owner is gone",
                    extra={"gen": gen.id, "chat": gen.chat_id, "owner": gen.owner})
        message = message_dict(final)
        await publish_done(self.logs, gen.chat_id, gen.id, seq, "interrupted", message,
                           None, None)
        self.on_end(gen, "interrupted", message, None, None)
        return True

    async def _save_end(self, gen: Generation, end: Event, content: str,
                        reasoning: Reasoning, *, published: bool) -> bool:
        """Save the end a dead owner left (`end`, its `done`) as it says; its `done` goes
        to the tabs now unless it was `published` already. False if another process ended
        the generation first (then that one published its `done`: the log takes one)."""
        data = end.data
        msg = data.get("message") or {}
        status = str(data["status"])
        final = await self.repo.finish(
            gen.id, status, str(msg.get("content", content)), end.seq - 1,
            usage=data.get("usage"), error=data.get("error"), meta=gen.meta,
            only_if_active=True, reasoning=reasoning, message_meta=msg.get("metadata"))
        if final is None:
            return False
        log.warning("generation saved from the end its owner %s",
                    "handed over" if published else "recorded before it died",
                    extra={"gen": gen.id, "chat": gen.chat_id, "owner": gen.owner,
                           "status": status})
        message = message_dict(final)
        if not published:
            await publish_done(self.logs, gen.chat_id, gen.id, end.seq - 1, status, message,
                               data.get("usage"), data.get("error"))
        self.on_end(gen, status, message, data.get("usage"), data.get("error"))
        return True

    async def _recover_text(self, gen: Generation) -> tuple[str, Reasoning, int, Event | None]:
        """A dead owner's text and reasoning: the SQL checkpoint plus whatever the log has
        after it, so what tabs already showed is kept; and the `done` after it, if the owner
        handed its answer over."""
        active = await self.repo.active_with_message(gen.chat_id)
        if active is None or active[0].id != gen.id:
            msg = await self.repo.get_message(gen.message_id)
            if msg is None:
                return "", Reasoning(), gen.last_seq, None
            return msg.content, _ended(Reasoning.of(msg)), gen.last_seq, None
        checkpoint, msg = active
        reasoning = Reasoning.of(msg)
        try:
            so_far = await text_so_far(self.logs, gen.id, msg.content, reasoning.text,
                                       checkpoint.last_seq, chat=gen.chat_id)
        except BusUnavailable:
            return msg.content, _ended(reasoning), checkpoint.last_seq, None
        reasoning.text = so_far.reasoning
        if so_far.reasoning_in_log:
            reasoning.started_at = reasoning.started_at or gen.started_at
        return so_far.content, _ended(reasoning), so_far.seq, so_far.done


def _ended(reasoning: Reasoning) -> Reasoning:
    """Reasoning of an answer that is over: it ended by now at the latest."""
    if reasoning.text and reasoning.ended_at is None:
        reasoning.ended_at = utcnow()
    return reasoning
