"""The process-wide resources, created once in the lifespan and closed on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import HTTPConnection

from chatcast.core.codes import Close
from chatcast.core.retry import Backoff
from chatcast.providers import Registry
from chatcast.server import lifecycle, metrics
from chatcast.server.auth import Authenticate, Authenticator
from chatcast.server.bus.base import Bus
from chatcast.server.cache import make_cache
from chatcast.server.hooks import AnswerHook, Hooks
from chatcast.server.hub import Hub, Subscriber
from chatcast.server.limits import Limits
from chatcast.server.loopwatch import StallWatch
from chatcast.server.replay import Replay
from chatcast.server.runner import Runner
from chatcast.server.settings import Settings
from chatcast.server.webhooks import Webhook
from chatcast.store.db import make_engine, session_factory
from chatcast.store.repo import Repo

log = logging.getLogger("chatcast")


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def make_bus(settings: Settings) -> Bus:
    url = settings.bus_url
    if url.startswith("memory://"):
        from chatcast.server.bus.memory import MemoryBus
        return MemoryBus(retention_s=settings.log_retention_s)
    if url.startswith(REDIS_SCHEMES):
        from chatcast.server.bus.redis import RedisBus
        if settings.redis_cluster:
            from chatcast.server.bus.redis_cluster import RedisClusterBus
            return RedisClusterBus(url, retention_s=settings.log_retention_s,
                                   max_connections=settings.redis_max_connections)
        return RedisBus(url, retention_s=settings.log_retention_s,
                        max_connections=settings.redis_max_connections)
    raise ValueError(f"unsupported bus URL {url!r}: use memory:// or redis://")


def make_limits(settings: Settings, bus: Bus) -> Limits:
    """Limits shared the way the bus is, chosen by the same URL: through Redis (on the bus's
    connection pool) when the bus is Redis, else in this process."""
    if settings.bus_url.startswith(REDIS_SCHEMES):
        from chatcast.server.bus.redis import RedisBus
        from chatcast.server.limits.redis import RedisLimits
        if not isinstance(bus, RedisBus):
            raise TypeError(f"a Redis URL needs a RedisBus, got {type(bus).__name__}")
        return RedisLimits(bus.client)
    from chatcast.server.limits.memory import MemoryLimits
    return MemoryLimits()


def make_webhook(settings: Settings) -> Webhook | None:
    """The outgoing webhook, when CHATCAST_WEBHOOK_URL is set (it needs a secret to sign)."""
    if not settings.webhook_url:
        return None
    if not settings.webhook_secret:
        raise ValueError("CHATCAST_WEBHOOK_URL needs CHATCAST_WEBHOOK_SECRET (the key its "
                         "requests are signed with)")
    return Webhook(settings.webhook_url, settings.webhook_secret,
                   max_attempts=settings.webhook_max_attempts,
                   backoff=Backoff(settings.webhook_retry_base_s, settings.webhook_retry_max_s,
                                   jitter=0.2),
                   timeout_s=settings.webhook_timeout_s,
                   counted=lambda outcome: metrics.WEBHOOK_DELIVERIES.labels(outcome).inc(),
                   failed=lambda reason: metrics.WEBHOOK_FAILURES.labels(reason).inc())


@dataclass(frozen=True, slots=True)
class Embedding:
    """What the application that embeds chatcast gives it in code (see `create_app`)."""

    providers: Mapping[str, object] = field(default_factory=dict)
    authenticate: Authenticate | None = None
    on_done: AnswerHook | None = None
    on_stopped: AnswerHook | None = None
    on_error: AnswerHook | None = None


@dataclass
class Services:
    settings: Settings
    repo: Repo
    bus: Bus
    registry: Registry
    hub: Hub
    runner: Runner
    replay: Replay
    limits: Limits
    auth: Authenticator
    engine: AsyncEngine
    hooks: Hooks
    shutting_down: asyncio.Event = field(default_factory=asyncio.Event)
    #: Open WebSockets per user on this process (for max_sockets_per_user).
    sockets: dict[str, int] = field(default_factory=dict)
    _maintenance: asyncio.Task[None] | None = None
    stalls: StallWatch = field(default_factory=lambda: StallWatch(on_stall=metrics.loop_stall))

    def subscriber(self, transport: str) -> Subscriber:
        return Subscriber(transport, self.settings.outbox_max_frames,
                          self.settings.outbox_max_bytes)

    @classmethod
    async def start(cls, settings: Settings, embedding: Embedding | None = None) -> Services:
        embedding = embedding or Embedding()
        # What can be refused is checked before anything is opened.
        registry = Registry.from_settings(settings, embedding.providers)
        hooks = Hooks(on_done=embedding.on_done, on_stopped=embedding.on_stopped,
                      on_error=embedding.on_error, webhook=make_webhook(settings))
        engine = make_engine(settings.db_url)
        repo = Repo(session_factory(engine),
                    max_active_per_user=settings.max_generations_per_user)
        bus = make_bus(settings)
        registry.on_failure = metrics.provider_failure
        metrics.init_providers(list(registry.providers))
        # The bus plays every role; each user gets the ones it needs.
        replay = Replay(repo, bus, settings.history_page_size)
        hub = Hub(bus, replay.catch_up)
        runner = Runner(settings, repo, bus, registry)
        runner.on_end = runner.reaper.on_end = hooks.ended
        await bus.start(hub.on_event, runner.on_stop_requested, on_reconnect=hub.resync_all,
                        on_resync=hub.resync_chats)
        limits = make_limits(settings, bus)
        runner.answers.store = make_cache(settings, bus)
        try:
            auth = Authenticator(settings, repo, limits, embedding.authenticate)
        except ValueError:
            await bus.close()
            await engine.dispose()
            raise
        svc = cls(settings, repo, bus, registry, hub, runner, replay, limits, auth, engine,
                  hooks)
        lifecycle.on_shutdown_begin(svc.begin_shutdown)
        svc._maintenance = asyncio.create_task(runner.maintain(may_reap=svc.lead_cleanup),
                                               name="runner-maintenance")
        svc.stalls.start()
        log.info("chatcast ready", extra={"bus": bus.__class__.__name__, "auth": settings.auth,
                                          "provider": registry.default,
                                          "database": engine.url.get_backend_name()})
        return svc

    async def lead_cleanup(self) -> bool:
        """Whether this process runs the periodic cleanup (the orphan sweep) now: one
        process per deployment holds the lock and keeps it while it lives; another takes
        over within two sweep periods after it dies."""
        ttl = self.settings.lease_ttl_s / 3  # two sweeps (one every lease_ttl_s / 6)
        # BusUnavailable goes to the maintenance loop, which reports the outage (nothing is
        # reaped while the bus is down).
        return await self.limits.lead("cleanup", self.bus.owner, ttl)

    async def begin_shutdown(self) -> None:
        """Stop taking clients: readiness fails, every connection is told 1001."""
        self.shutting_down.set()
        await self.hub.close_all(Close.GOING_AWAY)

    async def close(self) -> None:
        lifecycle.forget(self.begin_shutdown)
        self.shutting_down.set()
        self.stalls.close()
        # Leases stay alive while running generations use their grace period.
        await self.runner.close(self.settings.shutdown_grace_s)
        await self.hooks.close(self.settings.shutdown_grace_s)
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        await self.hub.close()
        await self.bus.close()
        await self.registry.aclose()
        await self.engine.dispose()


def services(conn: HTTPConnection) -> Services:
    svc: Services = conn.state.svc
    return svc


def user_id(conn: HTTPConnection) -> str:
    uid: str = conn.scope["state"]["user_id"]
    return uid
