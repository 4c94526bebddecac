"""MemoryBus: the Bus for a single process. Logs live in a dict and expire after retention;
nothing in it outlives the process (so the runner records no ends here: see
`Runner._record_end`)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from chatcast.core.protocol import Event
from chatcast.server.bus.base import (
    Bus,
    EventHandler,
    LogEntry,
    LogSealed,
    ReconnectHandler,
    ResyncHandler,
    StopRequestHandler,
)


@dataclass(slots=True)
class _Log:
    # (seq, encoded JSON): a kept log costs its bytes only, not a dict and a str per event
    # (logs stay for the retention period, so under load they are most of the memory).
    events: list[tuple[int, bytes]] = field(default_factory=list)
    expires_at: float | None = None  # monotonic deadline once the generation has ended
    sealed: str | None = None  # "closed": only a done is accepted; "done": nothing is
    end: bytes | None = None  # the recorded end (`record_end`): gone with the process


class MemoryBus(Bus):
    def __init__(self, retention_s: float = 900.0) -> None:
        self.owner = f"mem-{uuid.uuid4().hex[:12]}"
        self.retention_s = retention_s
        self._logs: dict[str, _Log] = {}
        self._stops: set[str] = set()
        self._leases: dict[str, float] = {}
        self._watched: set[str] = set()
        self._on_event: EventHandler | None = None
        self._on_stop_requested: StopRequestHandler | None = None

    async def start(self, on_event: EventHandler, on_stop_requested: StopRequestHandler, *,
                    on_reconnect: ReconnectHandler | None = None,
                    on_resync: ResyncHandler | None = None) -> None:
        # In-process: never disconnects, so `on_reconnect` is never called.
        self._on_event, self._on_stop_requested = on_event, on_stop_requested

    async def close(self) -> None:
        self._logs.clear()

    async def ping(self) -> bool:
        return True

    async def append(self, event: Event) -> bool:
        gen = str(event.gen)
        log = self._logs.get(gen)
        if log is None:
            self._prune()
            log = self._logs[gen] = _Log()
        if log.sealed == "done" or (log.sealed and event.type != "done"):
            raise LogSealed(f"generation {gen} was ended elsewhere")
        if log.events and event.seq <= log.events[-1][0]:
            return gen in self._stops  # a repeat: stored and published once
        log.events.append((event.seq, event.encode()))
        if event.type == "done":
            log.sealed = "done"
        self._fan_out(event)
        return gen in self._stops

    async def seal(self, gen: str, *, chat: str) -> None:
        log = self._logs.setdefault(gen, _Log())
        log.sealed = log.sealed or "closed"

    async def restore_log(self, gen: str, entries: list[LogEntry], *, chat: str) -> None:
        self._logs[gen] = _Log(list(entries))

    async def publish(self, event: Event) -> None:
        self._fan_out(event)

    async def read_log(self, gen: str, after_seq: int, *, chat: str) -> list[Event] | None:
        log = self._logs.get(gen)
        if log is None or (log.expires_at is not None and log.expires_at < time.monotonic()):
            return None
        return [Event.decode(raw) for seq, raw in log.events if seq > after_seq]

    async def end_log(self, gen: str, *, chat: str) -> None:
        log = self._logs.setdefault(gen, _Log())
        log.expires_at = time.monotonic() + self.retention_s
        log.end = None
        self._stops.discard(gen)

    async def record_end(self, done: Event) -> None:
        self._logs.setdefault(str(done.gen), _Log()).end = done.encode()

    async def recorded_end(self, gen: str, *, chat: str) -> Event | None:
        log = self._logs.get(gen)
        return Event.decode(log.end) if log is not None and log.end is not None else None

    async def watch(self, chat: str) -> None:
        self._watched.add(chat)

    async def unwatch(self, chat: str) -> None:
        self._watched.discard(chat)

    async def request_stop(self, gen: str, *, chat: str) -> None:
        self._stops.add(gen)
        if self._on_stop_requested is not None:
            self._on_stop_requested(gen)

    async def refresh_lease(self, gen: str, ttl_s: float, *, chat: str) -> None:
        self._leases[gen] = time.monotonic() + ttl_s

    async def lease_owner(self, gen: str, *, chat: str) -> str | None:
        deadline = self._leases.get(gen)
        return self.owner if deadline is not None and deadline > time.monotonic() else None

    async def drop_lease(self, gen: str, *, chat: str) -> None:
        self._leases.pop(gen, None)

    def _fan_out(self, event: Event) -> None:
        if self._on_event is not None and event.chat in self._watched:
            self._on_event(event)

    def _prune(self) -> None:
        now = time.monotonic()
        for gen in [g for g, log in self._logs.items()
                    if log.expires_at is not None and log.expires_at < now]:
            del self._logs[gen]
