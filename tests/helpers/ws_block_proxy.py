"""A TCP proxy in front of a chatcast server that refuses WebSocket upgrades and passes every
other request through: what a corporate proxy that does not speak WebSockets looks like to a
browser, for any browser engine (no per-engine request interception needed).

Browsers open a dedicated connection for each WebSocket, so looking at the first request of
each connection is enough."""

from __future__ import annotations

from tests.helpers.tcp_proxy import TcpProxy


class WebSocketBlockingProxy(TcpProxy):
    """`refused` counts the WebSocket upgrades answered 403."""

    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        super().__init__(upstream_port, refuse_websockets=True, host=host)
