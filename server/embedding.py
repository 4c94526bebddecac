"""The ASGI app `create_app` returns: chatcast's routes, with start-up and shutdown that also
happen when chatcast is mounted in another app (`app.mount("/chat", chatcast_app)`), where
Starlette and FastAPI never run a mounted app's lifespan.

- Run on its own (`chatcast serve`, `uvicorn --factory chatcast.server.app:create_app`), or
  with its lifespan run by the host (`FastAPI(lifespan=chatcast_app.lifespan)`), it starts
  and stops with the lifespan, as any ASGI app.
- Mounted, it starts on the first request or WebSocket that reaches it (migrating the
  database first, as `chatcast serve` does), and registers its shutdown on the process's
  SIGTERM and SIGINT: the first such signal closes chatcast the way `chatcast serve` does
  (clients told 1001, SSE streams ended, running answers given the grace period and then
  ended `interrupted`, hooks and webhooks drained), and only then is handed to the server's
  own handler (uvicorn's), so the server's graceful shutdown finds nothing of chatcast's left
  to wait for. A second signal goes to the server at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable
from types import FrameType
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from chatcast.core.codes import Code
from chatcast.server.responses import plain_error
from chatcast.server.services import Embedding, Services
from chatcast.server.settings import Settings
from chatcast.store.db import migrate_async

log = logging.getLogger("chatcast")

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class ChatcastApp:
    """chatcast as one ASGI app; `lifespan` is its lifespan, for a host that runs it."""

    def __init__(self, inner: ASGIApp, settings: Settings, embedding: Embedding) -> None:
        self.inner = inner
        self.settings = settings
        self.embedding = embedding
        self.services: Services | None = None
        self._lock: asyncio.Lock | None = None
        self._closed = False
        self._stopping = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.inner(scope, receive, send)
            return
        state = scope.get("state") or {}
        if not isinstance(state.get("svc"), Services):  # mounted: no lifespan ran for it
            svc = await self._started_lazily()
            if svc is None or self._closed:
                if scope["type"] == "http":
                    refusal = plain_error(Code.INTERNAL, "chatcast is not running", 503)
                    await refusal(scope, receive, send)
                else:  # a WebSocket: refused before the handshake
                    await send({"type": "websocket.close", "code": 1013})
                return
            scope["state"] = {**state, "svc": svc}
        await self.inner(scope, receive, send)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[dict[str, Any]]:
        """Start chatcast, yield its state, close it: the app's own lifespan, and the one a
        host may run (`FastAPI(lifespan=chatcast_app.lifespan)`) instead of the lazy
        start."""
        svc = await self.open()
        # Everything built at start-up lives as long as the process: take it out of the
        # collector's full passes, which otherwise stall the event loop for tens of ms.
        gc.collect()
        gc.freeze()
        try:
            yield {"svc": svc}
        finally:
            await self.close()

    async def open(self) -> Services:
        """Start chatcast's services once (later calls return them)."""
        svc = await self._start(migrate=False)
        assert svc is not None
        return svc

    async def close(self) -> None:
        """Close chatcast's services (once): its clients, its answers, its resources."""
        svc, self.services = self.services, None
        if svc is None or self._closed:
            return
        self._closed = True
        if not svc.shutting_down.is_set():  # (`chatcast serve` has begun it already)
            await svc.begin_shutdown()
        await svc.close()

    async def _started_lazily(self) -> Services | None:
        """The services, started by the first request to a mounted app (None if they could
        not be: that request is refused, the next one tries again)."""
        if self.services is not None or self._closed:
            return self.services
        try:
            return await self._start(migrate=True)
        except Exception:
            log.exception("chatcast failed to start")
            return None

    async def _start(self, *, migrate: bool) -> Services | None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.services is None and not self._closed:
                if migrate:  # as `chatcast serve` does before it starts
                    await migrate_async(self.settings.db_url)
                try:
                    self.services = await Services.start(self.settings, self.embedding)
                except ValueError as exc:  # a setting that cannot work: say which, once
                    log.error("chatcast cannot start: %s", exc)
                    raise
                if migrate:
                    self._register_shutdown()
            return self.services

    def _register_shutdown(self) -> None:
        """Chain chatcast's close onto the process's SIGTERM and SIGINT (see the module
        doc). Signals can only be taken in the main thread; elsewhere the host must run
        `lifespan`."""
        if threading.current_thread() is not threading.main_thread():
            log.warning("chatcast started outside the main thread: its shutdown is not tied "
                        "to signals; run chatcast_app.lifespan in the host's lifespan")
            return
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            previous = signal.getsignal(sig)

            def handler(signum: int, frame: FrameType | None,
                        previous: _Handler = previous) -> None:
                if self._stopping:  # a second signal: the server's, at once
                    _chain(previous, signum, frame)
                    return
                self._stopping = True
                loop.call_soon_threadsafe(self._stop_then_chain, previous, signum, frame)

            signal.signal(sig, handler)

    def _stop_then_chain(self, previous: _Handler, signum: int, frame: FrameType | None) -> None:
        async def stop() -> None:
            log.info("shutting down chatcast (signal %s)", signal.Signals(signum).name)
            try:
                await self.close()
            except Exception:
                log.exception("chatcast shutdown failed")
            _chain(previous, signum, frame)

        task = asyncio.get_running_loop().create_task(stop(), name="chatcast-shutdown")
        _keep.add(task)
        task.add_done_callback(_keep.discard)


_keep: set[asyncio.Task[None]] = set()


def _chain(previous: _Handler, signum: int, frame: FrameType | None) -> None:
    """Hand the signal to the handler that was there before chatcast's."""
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
