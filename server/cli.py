"""`chatcast serve | migrate`."""

from __future__ import annotations

import argparse
import logging.config
import sys

import uvicorn
from uvicorn.supervisors import multiprocess

from server.lifecycle import ChatcastServer
from server.logs import log_config
from server.settings import Settings
from store.db import migrate

log = logging.getLogger("chatcast")

MAX_FRAME_BYTES = 64 * 1024


def _migrate(settings: Settings) -> None:
    try:
        migrate(settings.db_url)
    except Exception as exc:  # a clear line, not a traceback, for a wrong DATABASE_URL
        log.error("database migration failed", extra={"error": str(exc).splitlines()[0]})
        raise SystemExit(f"chatcast: cannot migrate the database ({exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0]}); check DATABASE_URL") from None


def _check_redis(url: str) -> None:
    """Fail at once, naming REDIS_URL, instead of starting without the bus (never fall back
    to memory silently: processes would stop seeing each other)."""
    import redis

    from server.bus.redis import redacted_url

    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise SystemExit(f"chatcast: cannot reach Redis at {redacted_url(url)} (REDIS_URL): "
                         f"{exc}") from None
    finally:
        client.close()


def serve(args: argparse.Namespace) -> None:
    settings = Settings()
    if args.workers > 1 and not settings.redis_url:
        raise SystemExit("chatcast: --workers > 1 needs REDIS_URL: with the in-memory bus, "
                         "workers would not see each other's tokens or stops")
    if settings.redis_url:
        _check_redis(settings.redis_url)
    _migrate(settings)
    config = uvicorn.Config(
        "server.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_max_size=MAX_FRAME_BYTES,
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_interval_s,
        log_config=log_config(settings.log_level),
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 5,
        proxy_headers=True,
    )
    if args.workers > 1:
        # uvicorn's supervisor builds each worker's Server by this module-level name.
        multiprocess.Server = ChatcastServer  # type: ignore[attr-defined]
        multiprocess.Multiprocess(config, sockets=[config.bind_socket()]).run()
    else:
        ChatcastServer(config).run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="chatcast", description="Streaming chat server")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the server (migrates first)")
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--port", type=int, default=8000)
    p_serve.add_argument("--workers", type=int, default=1)
    sub.add_parser("migrate", help="apply database migrations")
    args = parser.parse_args(argv)
    settings = Settings()
    logging.config.dictConfig(log_config(settings.log_level))
    if args.command == "migrate":
        _migrate(settings)
        print("database is up to date", file=sys.stderr)
    else:
        serve(args)


if __name__ == "__main__":
    main()
