"""An SSE response leaves the hub however it ends, also when the client is gone before the
first byte (the body is then never iterated, so its own `finally` cannot clean up)."""

from __future__ import annotations

from collections.abc import MutableMapping
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.requests import ClientDisconnect

from chatcast.core.protocol import Cursor, Event
from chatcast.server.bus.memory import MemoryBus
from chatcast.server.hub import Hub, Subscriber
from chatcast.server.transports import sse


async def _nothing(chat: str, cursor: Cursor | None) -> list[Event]:
    return []


def _svc(hub: Hub) -> Any:
    return SimpleNamespace(hub=hub, shutting_down=SimpleNamespace(is_set=lambda: False),
                           settings=SimpleNamespace(sse_heartbeat_s=15.0))


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
async def test_client_gone_before_the_first_byte_leaves_no_subscriber(
        spec_version: str) -> None:
    bus = MemoryBus()
    hub = Hub(bus, _nothing)
    await bus.start(hub.on_event, lambda gen: None)
    sub = Subscriber("sse")
    await hub.subscribe(sub, "chat-1", None)
    assert hub.chats == {"chat-1": {sub}}
    response = sse._stream(_svc(hub), sub)
    started: list[str] = []

    async def receive() -> MutableMapping[str, Any]:  # the client has already hung up
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        started.append(message["type"])
        if spec_version == "2.4":  # a server on ASGI 2.4 raises from send once the peer left
            raise OSError("connection reset by peer")

    scope = {"type": "http", "asgi": {"spec_version": spec_version}}
    if spec_version == "2.4":
        with pytest.raises(ClientDisconnect):
            await response(scope, receive, send)
        assert started == ["http.response.start"]  # the body was never iterated
    else:
        await response(scope, receive, send)
    assert hub.chats == {} and sub not in hub.connections and sub.chats == {}
    await hub.close()
    await bus.close()
