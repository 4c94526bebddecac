"""The one place that reaches into redis-py beyond its documented API (kept small, so a
redis-py upgrade has one module to check).

redis-py's `RedisCluster` refreshes its slot map only when one of its own commands is
redirected (MOVED) or fails. A listener that only reads pub/sub never sends such a command,
so after a slot migration or a failover it would go on using a map that is wrong for good;
the cluster bus refreshes the map itself when its listener sees a slot move or a node go.

On CLUSTERDOWN (every master refuses commands for about a second of a failover) redis-py's
`RedisCluster` closes all of its connections (`aclose()`), also those other tasks are using
at that moment: a command on one of them fails with uvloop's RuntimeError (a write on a
closed transport) or an AttributeError (`'NoneType' object has no attribute 'writelines'`:
the connection's writer is gone). Both mean "try again", as a connection error does
(`CLOSED_UNDER`).
"""

from __future__ import annotations

from redis.asyncio.cluster import RedisCluster

#: What a command raises when redis-py closed its connection under it (see above).
CLOSED_UNDER = (RuntimeError, AttributeError)


async def refresh_slot_map(cluster: RedisCluster) -> None:
    """Read the cluster's slot map again now (CLUSTER SLOTS from a reachable node)."""
    await cluster.nodes_manager.initialize()
