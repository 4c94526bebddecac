"""The bus, in four roles a backend implements (memory for one process, Redis for many):

- `GenerationLog`: per-generation event logs; `append` puts a positioned event (start,
  delta, done) into its log *and* fans it out to every process watching the chat.
- `ChatFanout`: live events per chat (`publish` for unpositioned ones, `watch`/`unwatch`).
- `StopRequests`: a stop request reaches the process that owns the generation (its
  `on_stop_requested`).
- `Leases`: another process can tell that an owner died.

Every call about a generation names its chat too (`chat=`): a backend may keep all of a
chat's generations together (Redis Cluster: one hash slot per chat, so one script appends,
publishes on the chat's sharded channel and checks for a stop).

A process calls `Bus.start(on_event, on_stop_requested)` once; each user of the bus is given
only the roles it needs (the hub the fan-out, replay the log, the reaper the log and the
leases).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping

from chatcast.core.codes import Code
from chatcast.core.errors import ChatcastError
from chatcast.core.protocol import Event

#: One entry of a generation's log as its owner keeps it: (seq, the event's JSON). Plain
#: bytes, not Event objects: a long answer has thousands, and the garbage collector does not
#: have to look at these (a tuple of an int and bytes is untracked after its first pass).
LogEntry = tuple[int, bytes]


def log_entry(event: Event) -> LogEntry:
    return (event.seq, event.encode())

EventHandler = Callable[[Event], None]
StopRequestHandler = Callable[[str], None]
ReconnectHandler = Callable[[], None]
#: Live delivery of these chats was interrupted and is back (e.g. their slot moved to another
#: Redis Cluster node): their subscribers catch up from their cursors.
ResyncHandler = Callable[[Collection[str]], None]

log = logging.getLogger("chatcast.bus")


class BusUnavailable(ChatcastError):
    """The bus backend cannot be reached (e.g. Redis down). Raised quickly, never hangs;
    a client that hits it is told `internal` (retryable)."""

    code = Code.INTERNAL


class LogSealed(Exception):
    """The append was refused: the generation was ended (or is being ended) by another
    process. The producer must stop; what it tried to add was not published."""


class GenerationLog(ABC):
    """Role: each generation's log of positioned events (start at seq 0, deltas, done), the
    source of every catch-up. Appending also fans the event out to the chat's watchers."""

    @abstractmethod
    async def append(self, event: Event) -> bool:
        """Append a start/delta/done to its generation's log and publish it to the chat.
        An event whose seq is not above the log's last is a repeat: ignored. A `done`
        seals the log. Returns whether a stop was requested for the generation; raises
        LogSealed (nothing appended) when the log is sealed: another process ended it."""

    @abstractmethod
    async def restore_log(self, gen: str, entries: list[LogEntry], *, chat: str) -> None:
        """Write a generation's log again from the owner's copy (start + deltas), after the
        backend lost it (e.g. Redis restarted without persistence). Publishes nothing."""

    @abstractmethod
    async def read_log(self, gen: str, after_seq: int, *, chat: str) -> list[Event] | None:
        """Events of `gen` with seq > after_seq, in order; None if the log is unknown
        (never existed, expired, or lost) — the caller then falls back to a snapshot."""

    @abstractmethod
    async def seal(self, gen: str, *, chat: str) -> None:
        """No more deltas for `gen`: later appends of deltas raise LogSealed and are
        dropped; its `done` is still accepted. Used before ending another process's
        generation, so the text read from the log afterwards is final."""

    @abstractmethod
    async def end_log(self, gen: str, *, chat: str) -> None:
        """The generation is over: keep its log only for the retention period (and forget
        its recorded end)."""

    @abstractmethod
    async def record_end(self, done: Event) -> None:
        """Keep the `done` of an answer whose final write waits for the database beside its
        generation's log: not in the log and not published (the tabs get a `done` only once
        the answer is saved). If the owner dies before it saves the answer, the orphan
        sweep reads this (`recorded_end`) and saves the answer as it ended, not as an
        interruption. A later record replaces it; `end_log` forgets it."""

    @abstractmethod
    async def recorded_end(self, gen: str, *, chat: str) -> Event | None:
        """The `done` recorded for `gen` (see `record_end`), if any."""


class ChatFanout(ABC):
    """Role: live events per chat, delivered to every process watching it (`on_event`)."""

    @abstractmethod
    async def publish(self, event: Event) -> None:
        """Fan out an event that has no log position (message, start)."""

    @abstractmethod
    async def watch(self, chat: str) -> None:
        """Deliver the chat's live events to this process from now on (the Hub counts its
        subscribers; the bus sees each chat once)."""

    @abstractmethod
    async def unwatch(self, chat: str) -> None: ...


class StopRequests(ABC):
    """Role: a request to stop a generation reaches the process that owns it, whose bus
    calls `on_stop_requested`."""

    @abstractmethod
    async def request_stop(self, gen: str, *, chat: str) -> None:
        """Ask the owner of `gen` to stop it. Idempotent."""


class Leases(ABC):
    """Role: the owner of a generation keeps a lease on it, so another process can tell
    that the owner died."""

    #: Identity of this process, used as lease owner.
    owner: str

    @abstractmethod
    async def refresh_lease(self, gen: str, ttl_s: float, *, chat: str) -> None:
        """Claim or extend this process's lease on `gen`."""

    def lease_shard(self, gen: str, *, chat: str) -> str:
        """Which part of the backend holds `gen`'s lease (a Redis Cluster node). Leases on
        different parts are refreshed independently, so one part that cannot be reached
        delays the refresh of no other. One part here."""
        return ""

    async def refresh_leases(self, leases: Mapping[str, str], ttl_s: float) -> None:
        """Claim or extend this process's leases on several generations (gen → chat) of one
        part (`lease_shard`) at once; raises as `refresh_lease` does (then some may have
        been refreshed)."""
        for gen, chat in leases.items():
            await self.refresh_lease(gen, ttl_s, chat=chat)

    @abstractmethod
    async def lease_owner(self, gen: str, *, chat: str) -> str | None:
        """The process holding a live lease on `gen`, if any."""

    @abstractmethod
    async def drop_lease(self, gen: str, *, chat: str) -> None: ...


class Bus(GenerationLog, ChatFanout, StopRequests, Leases):
    """One backend playing every role, connected once per process."""

    #: Whether other processes (and the next run of this one) see this bus: what is in its
    #: logs outlives this process, so an unsaved answer can be handed over at shutdown.
    shared: bool = False

    @abstractmethod
    async def start(self, on_event: EventHandler, on_stop_requested: StopRequestHandler, *,
                    on_reconnect: ReconnectHandler | None = None,
                    on_resync: ResyncHandler | None = None) -> None:
        """Connect and begin delivering live events (`on_event`) and stop requests
        (`on_stop_requested`). `on_reconnect` is called when live delivery resumes after an outage
        (events may have been missed meanwhile: subscribers must catch up from their
        cursors); `on_resync` when that happened to some chats only."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> bool:
        """True when the backend is reachable (for /readyz)."""
