"""Graceful shutdown. uvicorn closes WebSockets with 1012 and waits for endless SSE
responses; chatcast first tells its own clients 1001 ("going away: reconnect at once") and
ends SSE streams, then lets uvicorn stop. Running generations get the grace period in the
app's lifespan shutdown (Runner.close). The hook into uvicorn is in `asgi_internals.py`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

ShutdownHook = Callable[[], Awaitable[None]]

# Process-wide by nature: uvicorn owns the process's life, the app registers into it.
_hooks: list[ShutdownHook] = []


def on_shutdown_begin(hook: ShutdownHook) -> None:
    _hooks.append(hook)


def forget(hook: ShutdownHook) -> None:
    if hook in _hooks:
        _hooks.remove(hook)


async def run_shutdown_hooks() -> None:
    """Called by the server (`asgi_internals.ChatcastServer`) as its shutdown begins."""
    for hook in list(_hooks):
        await hook()
