"""The Bus role: per-generation event logs, live fan-out per chat, stop requests, leases.

A process calls `start(on_event, on_stop)` once. After that:
- `append` puts a positioned event (delta or done) into its generation's log *and* fans it
  out to every process watching the chat; `publish` fans out an unpositioned event.
- `watch`/`unwatch` say which chats this process has local subscribers for (the Hub
  reference-counts; the bus sees each chat once).
- `request_stop` reaches the process that owns the generation, whose `on_stop` is called.
- leases let another process tell that an owner died.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from server import protocol
from server.codes import Code
from server.errors import ChatcastError
from server.protocol import Event

#: One entry of a generation's log as its owner keeps it: (seq, the event's JSON). Plain
#: bytes, not Event objects: a long answer has thousands, and the garbage collector does not
#: have to look at these (a tuple of an int and bytes is untracked after its first pass).
LogEntry = tuple[int, bytes]


def log_entry(event: Event) -> LogEntry:
    return (event.seq, event.encode())

EventHandler = Callable[[Event], None]
StopHandler = Callable[[str], None]
ReconnectHandler = Callable[[], None]

log = logging.getLogger("chatcast.bus")


class BusUnavailable(ChatcastError):
    """The bus backend cannot be reached (e.g. Redis down). Raised quickly, never hangs;
    a client that hits it is told `internal` (retryable)."""

    code = Code.INTERNAL


class LogSealed(Exception):
    """The append was refused: the generation was ended (or is being ended) by another
    process. The producer must stop; what it tried to add was not published."""


class Bus(ABC):
    #: Identity of this process, used as lease owner.
    owner: str

    @abstractmethod
    async def start(self, on_event: EventHandler, on_stop: StopHandler, *,
                    on_reconnect: ReconnectHandler | None = None) -> None:
        """Connect and begin delivering live events and stop requests to the handlers.
        `on_reconnect` is called when live delivery resumes after an outage (events may
        have been missed meanwhile: subscribers must catch up from their cursors)."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> bool:
        """True when the backend is reachable (for /readyz)."""

    @abstractmethod
    async def append(self, event: Event) -> bool:
        """Append a start/delta/done to its generation's log and publish it to the chat.
        An event whose seq is not above the log's last is a repeat: ignored. A `done`
        seals the log. Returns True when a stop was requested; raises LogSealed (nothing
        appended) when the log is sealed: another process ended the generation."""

    @abstractmethod
    async def restore_log(self, gen: str, entries: list[LogEntry]) -> None:
        """Write a generation's log again from the owner's copy (start + deltas), after the
        backend lost it (e.g. Redis restarted without persistence). Publishes nothing."""

    @abstractmethod
    async def publish(self, event: Event) -> None:
        """Fan out an event that has no log position (message, start)."""

    @abstractmethod
    async def read_log(self, gen: str, after_seq: int) -> list[Event] | None:
        """Events of `gen` with seq > after_seq, in order; None if the log is unknown
        (never existed, expired, or lost) — the caller then falls back to a snapshot."""

    @abstractmethod
    async def seal(self, gen: str) -> None:
        """No more deltas for `gen`: later appends of deltas raise LogSealed and are
        dropped; its `done` is still accepted. Used before ending another process's
        generation, so the text read from the log afterwards is final."""

    @abstractmethod
    async def end_log(self, gen: str) -> None:
        """The generation is over: keep its log only for the retention period."""

    @abstractmethod
    async def watch(self, chat: str) -> None: ...

    @abstractmethod
    async def unwatch(self, chat: str) -> None: ...

    @abstractmethod
    async def request_stop(self, gen: str) -> None:
        """Ask the owner of `gen` to stop it. Idempotent."""

    @abstractmethod
    async def refresh_lease(self, gen: str, ttl_s: float) -> None:
        """Claim or extend this process's lease on `gen`."""

    @abstractmethod
    async def lease_owner(self, gen: str) -> str | None:
        """The process holding a live lease on `gen`, if any."""

    @abstractmethod
    async def drop_lease(self, gen: str) -> None: ...


async def publish_done(bus: Bus, chat_id: str, gen_id: str, seq: int, status: str,
                       msg: dict[str, Any], usage: dict[str, Any] | None,
                       error: dict[str, Any] | None,
                       lost: list[LogEntry] | None = None) -> None:
    """Publish `done` (after the final content is in SQL). If the bus is down, retry for
    a while; subscribers that miss it resynchronise from SQL when the bus is back."""
    event = protocol.done(chat_id, gen_id, seq + 1, status, msg, usage=usage, err=error)
    delay = 0.25
    for _ in range(12):
        try:
            if lost is not None:
                await bus.restore_log(gen_id, lost)
                lost = None
            await bus.append(event)
            await bus.end_log(gen_id)
            return
        except LogSealed:
            return  # another process published this generation's done
        except BusUnavailable:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    log.error("done not published: bus unavailable", extra={"gen": gen_id, "chat": chat_id})
