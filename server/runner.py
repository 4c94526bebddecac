"""The Runner owns generations: it pulls chunks from the provider, numbers them, appends them
to the bus, checkpoints partial text to SQL, and ends each with exactly one terminal event.
It is the only writer of assistant message content.

A generation belongs to this process, not to the socket that asked for it: closing every
tab does not stop it; only a stop request (from any process, through the bus) does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from chatcast.core import protocol
from chatcast.core.codes import Code
from chatcast.core.errors import NotFound
from chatcast.core.retry import Backoff, retry
from chatcast.providers import (
    ChatMessage,
    Chunk,
    ProviderError,
    ProviderFailure,
    ProviderStreamBroken,
    ProviderUnavailable,
    Registry,
)
from chatcast.providers.history import trim_history
from chatcast.server import metrics
from chatcast.server.answers import Answers, message_meta
from chatcast.server.bus.base import Bus, BusUnavailable, LogEntry, LogSealed, log_entry
from chatcast.server.ending import publish_done
from chatcast.server.hooks import EndHook, no_hook
from chatcast.server.outages import Outages
from chatcast.server.pacing import Pacer
from chatcast.server.reaper import Reaper
from chatcast.server.settings import Settings
from chatcast.store.ids import iso, utcnow
from chatcast.store.models import (
    TERMINAL_TO_MESSAGE,
    Generation,
    Message,
    Reasoning,
    message_dict,
)
from chatcast.store.repo import Checkpoint, Repo, Started

log = logging.getLogger("chatcast.runner")


class State(IntEnum):
    """Where a generation this process runs is in its life. Ordered: a reason to end that
    comes later outranks an earlier, weaker one (a stop during shutdown ends `stopped`),
    never the other way round; once the final write has begun nothing changes it."""

    STREAMING = 0        # the pump runs
    TIMED_OUT = 1        # the wall-clock limit passed: ends `error`
    SHUTTING_DOWN = 2    # this process is stopping: ends `interrupted`
    STOPPING = 3         # a stop was requested: ends `stopped`
    ENDED_ELSEWHERE = 4  # another process took it for dead and sealed its log: `interrupted`
    FINISHING = 5        # the final write has begun: no more checkpoints

    @property
    def status(self) -> str:
        """The terminal status this state ends in (when no error decided it)."""
        return _STATUS[self]


_STATUS = {State.STREAMING: "completed", State.TIMED_OUT: "error",
           State.SHUTTING_DOWN: "interrupted", State.STOPPING: "stopped",
           State.ENDED_ELSEWHERE: "interrupted", State.FINISHING: "completed"}

TIME_LIMIT_ERROR = {"code": str(Code.PROVIDER_UNAVAILABLE),
                    "message": "the answer took longer than the time limit"}
#: The final SQL write is retried after 0.2 s, doubling to 5 s, jittered (so the processes
#: of a deployment do not all hit a database that just came back at once), with no limit on
#: the number of tries: an answer's end is never given up while the process lives.
FINAL_WRITE_BACKOFF = Backoff(base_s=0.2, max_s=5.0, jitter=0.5)
#: Bus tries for the `done` that hands an unsaved answer over at shutdown (shutdown cannot
#: wait for long).
HANDOVER_ATTEMPTS = 3
#: The share of a tick (L/6) one shard's lease refresh may take: it ends before the next
#: round is due, and a living owner's lease that lapsed is back within 1.75 ticks of its
#: shard answering again, before the sweep can reap it (two ticks, see `Reaper`).
LEASE_REFRESH_SHARE = 0.75


@dataclass(slots=True)
class LogCopy:
    """What this process appended to a generation's log (start + deltas), to write the log
    again if the bus lost it."""

    entries: list[LogEntry] = field(default_factory=list)
    lost: bool = False  # the bus lost the log: write `entries` again before the next append


@dataclass(slots=True)
class Running:
    """A generation this process is producing."""

    gen: Generation
    chat_id: str
    message_id: str
    content: str
    reasoning: Reasoning = field(default_factory=Reasoning)
    #: The answer's message row as it started (its id, times, …), for a `done` built from
    #: memory when the answer is handed over at shutdown.
    assistant: Message | None = None
    #: The user message a send stored, announced to the chat's other tabs by the task.
    announce: Message | None = None
    seq: int = 0
    state: State = State.STREAMING
    pump: asyncio.Task[None] | None = None
    usage: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    log: LogCopy = field(default_factory=LogCopy)
    history: list[Message] | None = None  # the conversation, if the start read it already
    checkpointed: int = 0  # the seq the last SQL checkpoint reached
    checkpointed_chars: int = 0  # and the length of the content it wrote
    saving_since: float | None = None  # the final write failed first then (monotonic)
    end_recorded: bool = False  # its end is in the shared bus for the orphan sweep
    # Where the pump is, not a state of the generation: inside a bus call, whose outcome a
    # cancellation would leave unknown, so a halt then takes effect when the call returns.
    in_bus_call: bool = False
    answered: bool = False  # this generation has sent answer text
    thought: bool = False  # this generation has sent reasoning
    started: float = field(default_factory=time.monotonic)
    first_output_at: float | None = None  # the first text or reasoning
    stop_at: float | None = None  # when the stop reached this process
    chunks: int = 0  # output chunks from the provider (tokens, when it reports no usage)

    def advance(self, state: State) -> bool:
        """Move to `state` if it outranks the current one; whether it did."""
        if state <= self.state:
            return False
        self.state = state
        return True


class Runner:
    def __init__(self, settings: Settings, repo: Repo, bus: Bus, registry: Registry) -> None:
        self.settings = settings
        self.repo = repo
        self.bus = bus
        self.registry = registry
        self.running: dict[str, Running] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._starts: set[asyncio.Future[Started]] = set()
        self.outages = Outages()
        self.reaper = Reaper(repo, bus, bus, self.running,
                             grace_s=settings.lease_ttl_s / 3)
        self._checkpoints: asyncio.Task[None] | None = None
        # Orders checkpoints before final writes (a late checkpoint never overwrites them).
        self._write_lock = asyncio.Lock()
        self.pacer = Pacer(settings.coalesce_max_ms / 1000)
        self.answers = Answers(settings, registry)
        #: Told of every generation this process ended, once its `done` is published
        #: (server/hooks.py); must not wait.
        self.on_end: EndHook = no_hook

    # Commands ------------------------------------------------------------------------

    async def send(self, user_id: str, chat_id: str, content: str,
                   client_msg_id: str | None) -> Started:
        return await self._unless_started(self._send(user_id, chat_id, content, client_msg_id))

    async def regenerate(self, user_id: str, chat_id: str, message_id: str | None) -> Started:
        return await self._unless_started(self._regenerate(user_id, chat_id, message_id))

    async def continue_(self, user_id: str, gen_id: str) -> Started:
        return await self._unless_started(self._continue(user_id, gen_id))

    async def _unless_started(self, start: Coroutine[Any, Any, Started]) -> Started:
        """Run a start (SQL rows, then the generation's task) so that the caller's
        cancellation — its socket closed, its request abandoned — cannot stop it half-way:
        once the rows may be committed, the generation must run to a terminal state. The
        caller still sees its cancellation; the start goes on without it."""
        task = asyncio.ensure_future(start)
        self._starts.add(task)
        task.add_done_callback(_settled)
        task.add_done_callback(self._starts.discard)
        return await asyncio.shield(task)

    async def _send(self, user_id: str, chat_id: str, content: str,
                    client_msg_id: str | None) -> Started:
        chat = await self.repo.get_chat(user_id, chat_id)
        provider, model = self.registry.resolve(chat.provider, chat.model)
        started = await self.repo.start_send(user_id, chat_id, content, client_msg_id,
                                             provider, model, self.bus.owner, chat=chat)
        if not started.repeated:
            assert started.user_message is not None
            await self._launch(started, announce=started.user_message)
        return started

    async def _regenerate(self, user_id: str, chat_id: str, message_id: str | None) -> Started:
        chat = await self.repo.get_chat(user_id, chat_id)
        provider, model = self.registry.resolve(chat.provider, chat.model)
        started = await self.repo.start_regenerate(user_id, chat_id, message_id, provider,
                                                   model, self.bus.owner)
        await self._launch(started)
        return started

    async def _continue(self, user_id: str, gen_id: str) -> Started:
        started = await self.repo.start_continue(user_id, gen_id, self.bus.owner)
        await self._launch(started)
        return started

    async def request_stop(self, user_id: str, gen_id: str | None,
                           chat_id: str | None) -> Generation:
        """Ask the owner of a generation (by id, or the chat's active one) to stop it, for
        everyone. Idempotent: a finished one is returned as is.

        A generation this process runs for this user is stopped at once, without a SQL read
        first (under load the read can wait behind checkpoints for a second or more, and the
        answer would go on growing meanwhile)."""
        local = self._local(user_id, gen_id, chat_id)
        if local is not None:
            await self.bus.request_stop(local.gen.id, chat=local.chat_id)
            return local.gen
        if gen_id is not None:
            gen = await self.repo.get_generation(user_id, gen_id)
        else:
            assert chat_id is not None
            await self.repo.get_chat(user_id, chat_id)
            found = await self.repo.active_generation(chat_id) or \
                await self.repo.latest_generation(chat_id)
            if found is None:
                raise NotFound("generation")
            gen = found
        if gen.status == "active":
            await self.bus.request_stop(gen.id, chat=gen.chat_id)
        return gen

    def _local(self, user_id: str, gen_id: str | None, chat_id: str | None) -> Running | None:
        if gen_id is not None:
            r = self.running.get(gen_id)
        else:
            r = next((r for r in self.running.values() if r.chat_id == chat_id), None)
        return r if r is not None and r.gen.user_id == user_id else None

    def progress(self, gen_id: str) -> tuple[str, int, str] | None:
        """(text so far, seq, reasoning so far) of a generation this process runs, else
        None."""
        r = self.running.get(gen_id)
        return (r.content, r.seq, r.reasoning.text) if r is not None else None

    def on_stop_requested(self, gen_id: str) -> None:
        """Bus callback: a stop was requested for `gen_id` (maybe by another process); if
        this process runs it, it ends `stopped`."""
        running = self.running.get(gen_id)
        if running is not None and running.state < State.STOPPING:
            running.stop_at = time.monotonic()
            self._halt(running, State.STOPPING)

    @staticmethod
    def _halt(r: Running, reason: State) -> None:
        """End the pump at the next safe point, for `reason` (unless it is ending for a
        stronger one already). The pump is cancelled only while it waits on the provider
        (or the pacer): a stop, the time limit or shutdown that arrives during a bus call
        takes effect when that call returns (the pump checks its state then), so the runner
        always knows whether the bus took the event, and its seq, content and log match
        what the tabs were sent."""
        if not r.advance(reason):
            return
        if r.pump is not None and not r.pump.done() and not r.in_bus_call:
            r.pump.cancel()

    # The generation itself -----------------------------------------------------------

    async def _launch(self, started: Started, announce: Message | None = None) -> None:
        """Start the generation's task; return once its `start` is on the bus.

        Everything after the SQL rows exist runs inside the task (announcing the user
        message too), so neither a caller that goes away (its socket closed, its request
        cancelled) nor a bus call that fails can leave the generation half-started: whatever
        happens, the task ends it with one terminal state. A task that ends without its end
        (cancelled before it ran) is at least not left in `running` (see `_task_ended`)."""
        gen = started.generation
        base = started.base_reasoning
        running = Running(gen, gen.chat_id, gen.message_id, started.base_content,
                          Reasoning(base.text, base.started_at, base.ended_at),
                          assistant=started.assistant, announce=announce,
                          history=started.history)
        self.running[gen.id] = running
        begun: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = asyncio.get_running_loop().create_task(self._run(running, begun),
                                                      name=f"generation-{gen.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _task: self._task_ended(running, begun))
        if self._checkpoints is None or self._checkpoints.done():
            self._checkpoints = asyncio.get_running_loop().create_task(
                self._checkpoint_loop(), name="runner-checkpoints")
        self.pacer.start()
        await begun

    def _task_ended(self, r: Running, begun: asyncio.Future[None]) -> None:
        """A generation's task is over. Normally its end removed it from `running`; if not
        (the task was cancelled before it could end the generation), it is removed here and
        its SQL row is left to the orphan sweep, which ends it within a lease period."""
        if not begun.done():
            begun.set_result(None)
        if self.running.get(r.gen.id) is r:
            del self.running[r.gen.id]
            if r.pump is not None:  # `_run` had counted it
                metrics.ACTIVE_GENERATIONS.dec()
            log.error("generation task ended before the generation did; the orphan sweep "
                      "ends it", extra={"gen": r.gen.id, "chat": r.chat_id, "seq": r.seq})

    async def _begin(self, r: Running) -> None:
        if r.announce is not None:  # the user message, to the chat's other tabs
            event = protocol.message(r.chat_id, message_dict(r.announce))
            try:
                await self.bus.publish(event)
            except BusUnavailable:
                pass  # other tabs resync from SQL when the bus is back
            except Exception:  # the answer goes on; the tabs see the message in history
                log.exception("user message not announced", extra={"gen": r.gen.id})
        await self._refresh_lease(r)
        # `start` opens the generation's log at seq 0, so a cursor (gen, 0) is replayable
        # before the first delta exists.
        await self._append(r, protocol.start(r.chat_id, r.gen.id, r.message_id,
                                             r.gen.provider, r.gen.model))
        log.info("generation started", extra={"gen": r.gen.id, "chat": r.chat_id,
                                              "provider": r.gen.provider, "model": r.gen.model})

    async def _run(self, r: Running, begun: asyncio.Future[None]) -> None:
        """Drive the pump under the wall-clock limit and always end with one terminal state:
        an error's, else the one the generation's state ends in."""
        error: dict[str, Any] | None = None
        metrics.ACTIVE_GENERATIONS.inc()
        r.pump = asyncio.create_task(self._pump(r, begun), name=f"pump-{r.gen.id}")
        try:
            async with asyncio.timeout(self.settings.generation_timeout_s):
                # Shielded, so that neither the time limit nor a cancellation of this task
                # cancels the pump wherever it happens to be (inside a bus call, the outcome
                # would be unknown): they end this wait, and the pump is halted at a safe
                # point (`_halt`).
                await asyncio.shield(r.pump)
        except TimeoutError:
            error = TIME_LIMIT_ERROR
            metrics.PROVIDER_FAILURES.labels(r.gen.provider, "wall_clock_limit").inc()
            self._halt(r, State.TIMED_OUT)
        except asyncio.CancelledError:
            # The pump was cancelled before it ran its own handler (a stop that came first:
            # its state says so), or this task was cancelled (shutdown).
            self._halt(r, State.SHUTTING_DOWN)
        except ProviderFailure as exc:
            error = _provider_error(exc)
            metrics.PROVIDER_ERRORS.labels(r.gen.provider, error["code"]).inc()
            log.warning("provider failed", extra={"gen": r.gen.id, "chat": r.chat_id,
                                                  "error": exc.message, "status": exc.status})
        except Exception:
            log.exception("generation failed", extra={"gen": r.gen.id, "chat": r.chat_id})
            error = {"code": str(Code.INTERNAL), "message": "internal error"}
        finally:
            if not r.pump.done():  # halted above: it ends at its next safe point
                await asyncio.gather(r.pump, return_exceptions=True)
            if not begun.done():
                begun.set_result(None)
            await self._finish(r, "error" if error is not None else r.state.status, error)

    async def _pump(self, r: Running, begun: asyncio.Future[None]) -> None:
        """Provider → bus, while the generation is streaming. Halted (see `_halt`) by a stop
        request, the time limit or shutdown; the provider's stream is closed then."""
        stream: AsyncGenerator[Chunk, None] | None = None
        try:
            await self._begin(r)
            begun.set_result(None)
            if r.state is not State.STREAMING:
                return
            history = await self._history(r)
            started_at = time.monotonic()
            stream = self.answers.stream(r.gen, history, r.meta)
            async for chunk in stream:
                if chunk.usage is not None:
                    r.usage = chunk.usage.as_dict()
                if not chunk.output:
                    continue
                r.chunks += 1
                cached = bool(r.meta.get("cached"))
                provider = "cache" if cached else r.meta.get("provider") or r.gen.provider
                if not (r.answered or r.thought):  # first visible output, of either part
                    r.first_output_at = now = time.monotonic()
                    r.meta["ttft_ms"] = round((now - started_at) * 1000, 1)
                    if not cached:
                        metrics.TTFT.labels(provider).observe(now - started_at)
                ts = (chunk.at or time.time()) if self.settings.demo_timestamps else None
                if chunk.reasoning and not await self._think(r, chunk.reasoning, ts):
                    return
                if chunk.text:
                    if not r.answered:  # what the user waits for, from the request
                        now = time.monotonic()
                        r.meta["ttfa_ms"] = round((now - started_at) * 1000, 1)
                        metrics.TTFA.labels(provider).observe(now - r.started)
                    if not await self._say(r, chunk.text, ts):
                        return
                hold = self.pacer.hold_s()
                if hold:  # overloaded: let the next chunks gather into one delta
                    await asyncio.sleep(hold)
        except asyncio.CancelledError:
            if r.state is State.STREAMING:
                raise  # not a halt
        finally:
            r.meta["tokens"] = r.seq
            if r.meta.get("retries"):
                metrics.PROVIDER_RETRIES.labels(r.gen.provider).inc(r.meta["retries"])
            if stream is not None:  # closes the provider's stream now, not when collected
                await stream.aclose()

    async def _think(self, r: Running, reasoning: str, ts: float | None) -> bool:
        """Publish and keep more reasoning; False when the generation must end."""
        if not r.thought and r.reasoning.text:
            # A continue that reasons again: a paragraph of its own after the kept reasoning.
            reasoning = _paragraph_break(r.reasoning.text) + reasoning
        event = protocol.reasoning_delta(r.chat_id, r.gen.id, r.seq + 1, reasoning, ts)
        if not await self._publish(r, event):
            return False
        r.thought = True
        r.reasoning.text += reasoning
        if r.reasoning.started_at is None:
            r.reasoning.started_at = utcnow()
        if not r.answered:
            r.reasoning.ended_at = None  # (a continue reopens it)
        return r.state is State.STREAMING

    async def _say(self, r: Running, text: str, ts: float | None) -> bool:
        """Publish and keep more answer text; False when the generation must end. The first
        text ends the reasoning."""
        event = protocol.delta(r.chat_id, r.gen.id, r.seq + 1, text, ts)
        if not await self._publish(r, event):
            return False
        if not r.answered and r.reasoning.started_at is not None \
                and r.reasoning.ended_at is None:
            r.reasoning.ended_at = utcnow()
        r.answered = True
        r.content += text
        return r.state is State.STREAMING

    async def _publish(self, r: Running, event: protocol.Event) -> bool:
        """Append one delta at the next seq. False if it was not shown (another process
        ended the generation); a stop requested meanwhile moves the state."""
        try:
            stop_requested = await self._append(r, event)
        except LogSealed:  # another process ended it: this chunk was never shown
            r.log.entries.pop()
            self._halt(r, State.ENDED_ELSEWHERE)
            return False
        r.seq += 1
        if stop_requested:  # the bus saw the request before its message arrived
            self._halt(r, State.STOPPING)
        return True

    async def _append(self, r: Running, event: protocol.Event) -> bool:
        """Append to the bus; returns whether a stop was requested. While the bus is down
        the generation goes on (text is kept here and checkpointed to SQL); when the bus is
        back, the whole log is written again before anything new is published.

        Not interrupted by a halt (see `_halt`): when it returns, the caller knows whether
        the bus took the event."""
        r.log.entries.append(log_entry(event))
        r.in_bus_call = True
        try:
            if r.log.lost:
                await self.bus.restore_log(r.gen.id, r.log.entries[:-1], chat=r.chat_id)
                r.log.lost = False
                log.warning("bus back: generation log restored",
                            extra={"gen": r.gen.id, "chat": r.chat_id, "seq": r.seq})
            return await self.bus.append(event)
        except BusUnavailable as exc:
            if not r.log.lost:
                log.warning("bus unavailable: streaming on, log to be restored",
                            extra={"gen": r.gen.id, "chat": r.chat_id, "seq": r.seq,
                                   "reason": exc.message})
            r.log.lost = True
            return False
        finally:
            r.in_bus_call = False

    async def _checkpoint_loop(self) -> None:
        """Every checkpoint interval, the partial text of every running generation that
        advanced, written in one transaction: one SQL round trip per interval instead of one
        per generation, and the pumps never wait for SQL. Ends when nothing runs."""
        while self.running:
            await asyncio.sleep(self.settings.checkpoint_interval_s)
            # A failed checkpoint loses nothing (the text is in memory and in the bus log, the
            # next one writes it all): an outage is logged once, and the loop goes on.
            with self.outages.tick("checkpoint"):
                await self._checkpoint_once()

    async def _checkpoint_once(self) -> None:
        async with self._write_lock:
            due = [r for r in self.running.values()
                   if r.state is not State.FINISHING and r.seq > r.checkpointed]
            items = [Checkpoint(r.gen.id, r.message_id, r.content, r.seq,
                                Reasoning(r.reasoning.text, r.reasoning.started_at,
                                          r.reasoning.ended_at)) for r in due]
            if not items:
                return
            await self.repo.checkpoint_many(items)
            self.outages.store.back()
            for r, item in zip(due, items, strict=True):
                r.checkpointed = item.seq
                r.checkpointed_chars = len(item.content)

    async def _refresh_lease(self, r: Running) -> None:
        with contextlib.suppress(BusUnavailable):  # logged by _append; leases come back
            await self.bus.refresh_lease(r.gen.id, self.settings.lease_ttl_s / 2,
                                         chat=r.chat_id)

    async def _history(self, r: Running) -> list[ChatMessage]:
        rows, r.history = r.history, None
        if rows is None:
            rows = await self.repo.history(r.chat_id, upto_message=r.message_id)
        regenerates = (r.gen.meta or {}).get("regenerates")
        if regenerates:  # a new answer to that message: what came after it is not context
            rows = [m for m in rows if m.id <= regenerates]
        messages = _conversation(rows)
        if r.content:  # continue: the model sees its own partial answer last
            messages.append(ChatMessage("assistant", r.content))
        return trim_history(messages, self.settings.history_max_chars,
                            system_prompt=self.settings.system_prompt)

    async def _finish(self, r: Running, status: str, error: dict[str, Any] | None) -> None:
        """Commit the final content to SQL (retried until it lands), then publish `done`.
        Cancelled meanwhile (shutdown while the database is still unavailable), the answer
        is handed over or its loss logged (`_hand_over`)."""
        try:
            msg = await self._commit_final(r, status, error)
        except asyncio.CancelledError:
            await self._hand_over(r, status, error)
            self._forget(r, status)
            raise
        self._forget(r, status)
        if msg is not None:
            final = message_dict(msg)
            await publish_done(self.bus, r.chat_id, r.gen.id, r.seq, status, final,
                               r.usage, error, lost=r.log.entries if r.log.lost else None)
            self.on_end(r.gen, status, final, r.usage, error)
        if r.stop_at is not None and status == "stopped":
            metrics.STOP_LATENCY.observe(time.monotonic() - r.stop_at)
        with contextlib.suppress(BusUnavailable):
            await self.bus.drop_lease(r.gen.id, chat=r.chat_id)
        extra = {"gen": r.gen.id, "chat": r.chat_id, "status": status, "seq": r.seq,
                 "duration_s": round(time.monotonic() - r.started, 3)}
        if r.meta.get("cached"):
            extra["cache"] = r.meta["cache"]
        if r.saving_since is not None:
            extra["saving_s"] = round(time.monotonic() - r.saving_since, 3)
        log.info("generation ended", extra=extra)

    def _forget(self, r: Running, status: str) -> None:
        """The generation is no longer this process's: out of `running`, counted."""
        self.running.pop(r.gen.id, None)
        metrics.ACTIVE_GENERATIONS.dec()
        self._observe_end(r, status)

    def _observe_end(self, r: Running, status: str) -> None:
        now = time.monotonic()
        metrics.GENERATIONS.labels(status).inc()
        metrics.GENERATION_DURATION.labels(status).observe(now - r.started)
        if status != "completed" or r.meta.get("cached") or r.first_output_at is None:
            return
        tokens = (r.usage or {}).get("output_tokens") or r.chunks
        if tokens > 1 and now > r.first_output_at:
            provider = r.meta.get("provider") or r.gen.provider
            metrics.TOKENS_PER_S.labels(provider).observe(tokens / (now - r.first_output_at))

    async def _commit_final(self, r: Running, status: str,
                            error: dict[str, Any] | None) -> Message | None:
        """The final content, status and usage to SQL, if another process has not ended the
        generation; the message as written, or None.

        Retried until it lands (only a cancellation ends the wait): meanwhile the generation
        stays in `running`, so its lease is kept and no orphan sweep takes it, its text stays
        here and in the bus log, and the chat's tabs are told once (`saving`) that the
        answer is complete but not yet saved. With a shared bus its end is recorded there
        first (`_record_end`), in case this process dies before the write lands."""
        r.state = State.FINISHING
        if r.reasoning.started_at is not None and r.reasoning.ended_at is None:
            r.reasoning.ended_at = utcnow()  # it never got to its answer

        async def write() -> Message | None:
            try:
                async with self._write_lock:
                    msg = await self.repo.finish(
                        r.gen.id, status, r.content, r.seq, usage=r.usage, error=error,
                        meta=r.meta, only_if_active=True, reasoning=r.reasoning,
                        message_meta=message_meta(r.meta))
            except Exception as exc:
                self.outages.failed(exc, "final write")
                first = r.saving_since is None
                if first:
                    r.saving_since = time.monotonic()
                if not r.end_recorded:  # before the tabs hear `saving`
                    await self._record_end(r, status, error)
                if first:
                    await self._tell_saving(r, status)
                raise
            self.outages.store.back()
            if msg is None and r.saving_since is not None:
                # A try whose answer was lost with the connection may have landed.
                return await self._landed(r, status)
            return msg

        return await retry(write, retry_on=Exception, backoff=FINAL_WRITE_BACKOFF,
                           attempts=None)

    async def _record_end(self, r: Running, status: str,
                          error: dict[str, Any] | None) -> None:
        """The final write failed: with a shared bus (Redis) the answer's `done`, built from
        memory, is recorded beside its log (not published). If this process is then killed
        or crashes (no shutdown, so no hand-over), another process's orphan sweep saves the
        answer from it once the database is back, with its status and usage, and publishes
        its `done`. Tried again with each failed write until the bus takes it. Nothing
        outlives the memory bus: there it is not recorded."""
        if not self.bus.shared:
            return
        done = protocol.done(r.chat_id, r.gen.id, r.seq + 1, status,
                             self._final_dict(r, status), usage=r.usage, err=error)
        try:
            await self.bus.record_end(done)
        except Exception as exc:  # an outage (or a bug) logged once; tried again
            self.outages.failed(exc, "end record")
            return
        self.outages.succeeded("end record")
        r.end_recorded = True

    async def _tell_saving(self, r: Running, status: str) -> None:
        """The final write failed: the tabs learn that the answer is complete (its length
        and digest let them check what they have) and that its `done` follows once it is
        saved."""
        log.warning("answer complete; saving it waits for the database",
                    extra={"gen": r.gen.id, "chat": r.chat_id, "status": status,
                           "seq": r.seq})
        event = protocol.saving(r.chat_id, r.gen.id, r.seq, status, r.content,
                                r.reasoning.text, r.usage)
        try:
            await self.bus.publish(event)
        except BusUnavailable:
            pass  # the tabs are resynchronised from SQL once both are back
        except Exception:
            log.exception("saving event not published", extra={"gen": r.gen.id})

    async def _landed(self, r: Running, status: str) -> Message | None:
        """After failed tries, the write found the generation already ended: by one of our
        own tries (its reply lost with the connection) if SQL holds exactly our end — unless
        its `done` is in the log already: then another process's sweep, taking this process
        for dead, saved it from the end recorded in the bus and published (and reported)
        it, and nothing is left to do here."""
        gen = await self.repo.generation(r.gen.id)
        msg = await self.repo.get_message(r.message_id)
        if gen is None or msg is None or gen.status != status or gen.last_seq != r.seq \
                or msg.content != r.content:
            return None
        if r.end_recorded:
            with contextlib.suppress(BusUnavailable):
                tail = await self.bus.read_log(r.gen.id, r.seq, chat=r.chat_id)
                if any(e.type == "done" for e in tail or ()):
                    return None
        return msg

    async def _hand_over(self, r: Running, status: str, error: dict[str, Any] | None) -> None:
        """Shutdown came while the final write still failed. With a shared bus (Redis) the
        answer's `done` goes into its log, built from memory, and the lease is dropped: the
        orphan sweep of another (or the next) process finds it there and writes it to SQL
        as it is, status and usage included, once the database is back. With the memory
        bus nothing outlives the process: the log says exactly what is lost."""
        if self.bus.shared:
            msg = self._final_dict(r, status)
            if await publish_done(self.bus, r.chat_id, r.gen.id, r.seq, status, msg, r.usage,
                                  error, lost=r.log.entries if r.log.lost else None,
                                  attempts=HANDOVER_ATTEMPTS):
                with contextlib.suppress(BusUnavailable):
                    await self.bus.drop_lease(r.gen.id, chat=r.chat_id)
                log.warning("answer handed over unsaved at shutdown: another process saves "
                            "it from the bus log when the database is back",
                            extra={"gen": r.gen.id, "chat": r.chat_id, "status": status,
                                   "seq": r.seq})
                return
            if r.end_recorded:  # its end went into the bus when saving began
                log.warning("answer left unsaved at shutdown: another process saves it "
                            "from the end recorded in the bus when both are back",
                            extra={"gen": r.gen.id, "chat": r.chat_id, "status": status,
                                   "seq": r.seq})
                return
        log.error("answer lost at shutdown: the database is unavailable; after a restart "
                  "it is interrupted with the text of its last checkpoint",
                  extra={"gen": r.gen.id, "chat": r.chat_id, "status": status,
                         "seq": r.seq, "saved_seq": r.checkpointed,
                         "chars": len(r.content),
                         "lost_chars": len(r.content) - r.checkpointed_chars,
                         "usage_lost": r.usage is not None})

    def _final_dict(self, r: Running, status: str) -> dict[str, Any]:
        """The answer's message as the final write would have left it, from memory."""
        out: dict[str, Any] = message_dict(r.assistant) if r.assistant is not None else {
            "id": r.message_id, "chat": r.chat_id, "role": "assistant", "gen": r.gen.id,
            "provider": r.gen.provider, "model": r.gen.model, "client_msg_id": None,
            "created_at": None}
        out.update(content=r.content, status=TERMINAL_TO_MESSAGE[status], usage=r.usage,
                   reasoning=r.reasoning.text,
                   reasoning_started_at=iso(r.reasoning.started_at),
                   reasoning_ended_at=iso(r.reasoning.ended_at),
                   metadata=message_meta(r.meta), completed_at=iso(utcnow()))
        return out

    # Leases and orphans --------------------------------------------------------------

    async def maintain(self, may_reap: Callable[[], Awaitable[bool]] | None = None) -> None:
        """Keep this process's leases alive and reap other processes' dead generations
        (only while `may_reap()` says so: one process of a deployment sweeps at a time).

        Leases live L/2 (L = lease_ttl_s). They are refreshed every L/6 (a tick) on a fixed
        schedule of their own, independently of token flow and of the sweep, shard by shard
        (`Leases.lease_shard`): each shard's refresh is bounded by `LEASE_REFRESH_SHARE` of a
        tick, so one shard that cannot be reached (a Redis Cluster master that died, before
        its replica takes over) delays the leases of no other shard. The sweep (every tick
        after the previous one) reaps a generation only when its lease has been missing for
        two ticks (L/3) on every sweep since (`Reaper`): a living owner re-creates a lease
        lost with a restarted Redis, lapsed or lost in a failover within one tick plus one
        bounded refresh (L/6 + 3/4 * L/6) of reaching the shard again, before that. A dead
        owner's generation is still reaped within L: its lease lapses within L/2, a sweep
        sees it missing within a tick, and reaps it two ticks later."""
        tick = self.settings.lease_ttl_s / 6
        leases = asyncio.get_running_loop().create_task(self._keep_leases(tick),
                                                        name="runner-leases")
        try:
            while True:
                await asyncio.sleep(tick)
                await self._maintain_once(may_reap)
        finally:
            leases.cancel()
            await asyncio.gather(leases, return_exceptions=True)

    async def _keep_leases(self, tick: float) -> None:
        """Refresh every lease once a tick, on a fixed schedule (a slow round does not push
        the next one back)."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due += tick
            await asyncio.sleep(max(due - loop.time(), 0.0))
            due = max(due, loop.time() - tick)  # far behind (a stalled loop): no burst
            with self.outages.tick("lease refresh round"):
                await self.refresh_leases(tick * LEASE_REFRESH_SHARE)

    async def refresh_leases(self, timeout_s: float) -> None:
        """One round of lease refreshes: the leases of each shard together, every shard at
        once, each shard's given `timeout_s`. A shard that fails or does not answer in time
        is reported (an outage, or a bug with its traceback) and costs no other shard its
        refresh; its leases are tried again next round."""
        shards: dict[str, dict[str, str]] = {}
        for r in list(self.running.values()):
            shard = self.bus.lease_shard(r.gen.id, chat=r.chat_id)
            shards.setdefault(shard, {})[r.gen.id] = r.chat_id
        if shards:
            await asyncio.gather(*(self._refresh_shard(shard, leases, timeout_s)
                                   for shard, leases in shards.items()))

    async def _refresh_shard(self, shard: str, leases: dict[str, str], timeout_s: float) -> None:
        with self.outages.tick("lease refresh"):
            try:
                async with asyncio.timeout(timeout_s):
                    await self.bus.refresh_leases(leases, self.settings.lease_ttl_s / 2)
            except TimeoutError as exc:
                raise BusUnavailable(f"no answer to the lease refresh of {len(leases)} "
                                     f"generations within {timeout_s:.2f} s"
                                     f"{f' ({shard})' if shard else ''}") from exc

    async def _maintain_once(self, may_reap: Callable[[], Awaitable[bool]] | None) -> None:
        """One round of the sweep side of `maintain`. Nothing in it may end the loop: a failed
        sweep is reported (an outage once, a bug with its traceback) and the next round
        comes as usual."""
        with self.outages.tick("outage probe"):
            await self._probe_outages()
        # The bus is back when its ping says so (commands and live delivery both work),
        # not when one command worked: that would end an outage while the listener still
        # reconnects, and /readyz would start another.
        lead = False
        with self.outages.tick("cleanup lock"):
            lead = may_reap is None or await may_reap()
        if lead:
            with self.outages.tick("orphan sweep", self.outages.store):
                await self.reaper.sweep()

    async def _probe_outages(self) -> None:
        """A component that is down is asked each round whether it is back, so that the end
        of its outage is logged (and its gauge set) also on a process with nothing to do."""
        if not self.outages.store.up and await self.repo.ping():
            self.outages.store.back()
        if not self.outages.bus.up and await self.bus.ping():
            self.outages.bus.back()

    async def close(self, grace_s: float, finish_s: float = 10.0) -> None:
        """Let running generations finish within the grace period, then interrupt the rest:
        each is halted at a safe point and ends `interrupted` with its `done` (given
        `finish_s` more for its final write); only what is still running after that is
        cancelled outright."""
        if self._starts:  # starts under way become generations first
            await asyncio.wait(set(self._starts), timeout=grace_s)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)
        for r in list(self.running.values()):
            self._halt(r, State.SHUTTING_DOWN)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=finish_s)
        for task in list(self._tasks):
            log.error("generation cancelled at shutdown before it ended",
                      extra={"generation_task": task.get_name()})
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            await asyncio.gather(self._checkpoints, return_exceptions=True)
        await self.pacer.close()


def _settled(task: asyncio.Future[Started]) -> None:
    """A start whose caller went away: its error has nobody to go to but the log."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.debug("start failed: %s", exc)


def _conversation(rows: list[Message]) -> list[ChatMessage]:
    """User and assistant turns; of several answers to one message, only the newest."""
    out: list[ChatMessage] = []
    for m in rows:
        if m.role not in ("user", "assistant", "system") or not m.content:
            continue
        if m.role == "assistant" and out and out[-1].role == "assistant":
            out[-1] = ChatMessage("assistant", m.content)
        else:
            out.append(ChatMessage(m.role, m.content))  # type: ignore[arg-type]
    return out


def _paragraph_break(before: str) -> str:
    """What separates new reasoning from `before` as a paragraph of its own."""
    if before.endswith("\n\n"):
        return ""
    return "\n" if before.endswith("\n") else "\n\n"


def _provider_error(exc: ProviderFailure) -> dict[str, Any]:
    code = Code.PROVIDER_UNAVAILABLE if isinstance(exc, ProviderUnavailable) else \
        Code.PROVIDER_ERROR
    if isinstance(exc, ProviderError | ProviderStreamBroken):
        code = Code.PROVIDER_ERROR
    return {"code": str(code), "message": exc.message}
