"""One bus suite for every backend: the `bus` fixture yields a started `BusProbe` per backend.

A backend also gives a `peer`: the bus as another process sees it. For the memory backend the
peer is the same object (one process); for Redis it is a second RedisBus on the same server
(for a Redis Cluster a second RedisClusterBus, seeded with a node),
so the same tests prove cross-process fan-out, stop requests and leases.
To add a backend: add its name to BACKENDS and a branch to `_new_bus`.
"""

# Waits take `timeout=` with a default on purpose: a bus that drops an event must fail fast.

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pytest

from chatcast.core.protocol import Event
from chatcast.server.bus.base import Bus
from chatcast.server.bus.memory import MemoryBus
from chatcast.server.bus.redis import RedisBus
from chatcast.server.bus.redis_cluster import RedisClusterBus

BACKENDS = ["memory", "redis", "cluster"]
DEFAULT_RETENTION_S = 60.0


class BusProbe:
    """A started bus plus everything its handlers were given, awaitable."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.events: list[Event] = []
        self.stops: list[str] = []
        self._arrived = asyncio.Event()

    async def start(self) -> BusProbe:
        await self.bus.start(self._on_event, self._on_stop)
        return self

    def _on_event(self, event: Event) -> None:
        self.events.append(event)
        self._arrived.set()

    def _on_stop(self, gen: str) -> None:
        self.stops.append(gen)
        self._arrived.set()

    def events_of(self, chat: str) -> list[dict[str, Any]]:
        return [e.data for e in self.events if e.chat == chat]

    async def wait_event(self, pred: Callable[[Event], bool], timeout: float = 5.0) -> Event:
        """The first received event matching `pred` (already received or arriving)."""
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events:
                    if pred(event):
                        return event
                self._arrived.clear()
                await self._arrived.wait()

    async def wait_events(self, chat: str, count: int,
                          timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until `count` events of `chat` arrived; return them all."""
        async with asyncio.timeout(timeout):
            while len(got := self.events_of(chat)) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return got

    async def wait_stop(self, gen: str, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while gen not in self.stops:
                self._arrived.clear()
                await self._arrived.wait()


@dataclass
class Backend:
    name: str
    url: str | None  # the server behind it, if any


class BusFactory(Protocol):
    async def __call__(self, *, retention_s: float = DEFAULT_RETENTION_S) -> BusProbe: ...


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    name: str = request.param
    if name == "redis":
        return Backend(name, request.getfixturevalue("redis_url"))
    if name == "cluster":
        return Backend(name, request.getfixturevalue("redis_cluster_session").seeds)
    return Backend(name, None)


def _new_bus(backend: Backend, retention_s: float, key_prefix: str) -> Bus:
    if backend.name == "memory":
        return MemoryBus(retention_s=retention_s)
    if backend.name == "redis":
        # The test's own key prefix: tests sharing the session's Redis never see each other.
        assert backend.url is not None
        return RedisBus(backend.url, retention_s=retention_s, prefix=key_prefix)
    if backend.name == "cluster":  # seeded with one node only: the client finds the rest
        assert backend.url is not None
        return RedisClusterBus(backend.url.split(",")[0], retention_s=retention_s,
                               prefix=key_prefix)
    raise AssertionError(f"unknown bus backend {backend.name}")


@pytest.fixture
async def make_bus(backend: Backend, key_prefix: str) -> AsyncIterator[BusFactory]:
    """`await make_bus(retention_s=...)`: a started bus of the current backend."""
    probes: list[BusProbe] = []

    async def make(*, retention_s: float = DEFAULT_RETENTION_S) -> BusProbe:
        probe = BusProbe(_new_bus(backend, retention_s, key_prefix))
        probes.append(probe)
        return await probe.start()

    yield make
    for probe in probes:
        await probe.bus.close()


@pytest.fixture
async def bus(make_bus: BusFactory) -> BusProbe:
    """The bus of "this process" (a started BusProbe; the Bus is `bus.bus`)."""
    return await make_bus()


@pytest.fixture
async def peer(backend: Backend, bus: BusProbe, make_bus: BusFactory) -> BusProbe:
    """The bus of "another process" sharing the backend (memory: the same one)."""
    if backend.name == "memory":
        return bus
    return await make_bus()
