"""A Redis Cluster command whose connection redis-py closed under it (on CLUSTERDOWN its
client closes every connection, also those other tasks are using) is the bus being
unavailable for a moment, not a bug: seen as an AttributeError from inside redis-py in a
failover test, which ended a generation `error` with a traceback."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from chatcast.server.bus.base import BusUnavailable
from chatcast.server.bus.redis_cluster import RedisClusterBus
from chatcast.server.limits.redis import RedisLimits


async def _closed_under_it() -> None:
    raise AttributeError("'NoneType' object has no attribute 'writelines'")


async def _written_to_a_closed_transport() -> None:
    raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")


@pytest.mark.parametrize("command", [_closed_under_it, _written_to_a_closed_transport])
async def test_a_command_on_a_connection_closed_under_it_is_bus_unavailable(
        command: Callable[[], Awaitable[None]]) -> None:
    bus = RedisClusterBus("redis://127.0.0.1:1")  # not started: nothing connects
    limits = RedisLimits(bus.client)
    try:
        with pytest.raises(BusUnavailable):
            await bus._call(command())  # the bus's commands (restore_log, leases, ...)
        with pytest.raises(BusUnavailable):
            await limits._call(command())  # tickets, the cleanup lock
    finally:
        await bus.close()
