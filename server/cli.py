"""`chatcast serve | migrate | token create | token list | token revoke | chat [URL]`."""

from __future__ import annotations

import argparse
import asyncio
import logging.config
import os
import sys

import uvicorn

from chatcast.core.protocol import MAX_FRAME_BYTES
from chatcast.server.asgi_internals import (
    SANSIO_WS,
    ChatcastServer,
    describe_write_path,
    run_workers,
)
from chatcast.server.logs import log_config
from chatcast.server.settings import Settings
from chatcast.store.db import migrate

log = logging.getLogger("chatcast")


def _migrate(settings: Settings) -> None:
    try:
        migrate(settings.db_url)
    except Exception as exc:  # a clear line, not a traceback, for a wrong DATABASE_URL
        log.error("database migration failed", extra={"error": str(exc).splitlines()[0]})
        raise SystemExit(f"chatcast: cannot migrate the database ({exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0]}); check DATABASE_URL") from None


def _check_redis(url: str, cluster: bool) -> None:
    """Fail at once, naming REDIS_URL, instead of starting without the bus (never fall back
    to memory silently: processes would stop seeing each other), and refuse a Redis that is
    not what CHATCAST_REDIS_CLUSTER says (a cluster node, a plain Redis, a replica)."""
    import redis

    from chatcast.server.bus.redis import mode_problem, redacted_url

    seed = url.split(",")[0].strip() if cluster else url
    seed = seed if "://" in seed else f"redis://{seed}"
    client = redis.Redis.from_url(seed, socket_connect_timeout=3, socket_timeout=3)
    try:
        problem = mode_problem(client.info("replication"), client.info("cluster"),
                               cluster=cluster)
    except redis.RedisError as exc:
        raise SystemExit(f"chatcast: cannot reach Redis at {redacted_url(seed)} (REDIS_URL): "
                         f"{exc}") from None
    finally:
        client.close()
    if problem:
        raise SystemExit(f"chatcast: REDIS_URL {redacted_url(seed)} {problem}")


def serve(args: argparse.Namespace) -> None:
    # The application's own modules named by CHATCAST_PROVIDERS import from the working
    # directory, as they would under `uvicorn` or `python -m` (a console script's path
    # starts at its own folder instead).
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    settings = Settings()
    if args.workers > 1 and not settings.redis_url:
        raise SystemExit("chatcast: --workers > 1 needs REDIS_URL: with the in-memory bus, "
                         "workers would not see each other's tokens or stops")
    if settings.redis_url:
        _check_redis(settings.redis_url, settings.redis_cluster)
    _migrate(settings)
    config = uvicorn.Config(
        "chatcast.server.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        ws=SANSIO_WS,
        ws_max_size=MAX_FRAME_BYTES,
        ws_per_message_deflate=settings.ws_compression,
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_interval_s,
        log_config=log_config(settings.log_level, settings.log_format),
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 5,
        timeout_keep_alive=max(1, round(settings.http_keepalive_s)),
        proxy_headers=True,
    )
    log.info("websocket write path: %s", describe_write_path(SANSIO_WS))
    if args.workers > 1:
        run_workers(config)
    else:
        ChatcastServer(config).run()


async def _token_command(settings: Settings, args: argparse.Namespace) -> None:
    from chatcast.server.auth import new_api_token
    from chatcast.server.limits.base import digest
    from chatcast.store.db import make_engine, session_factory
    from chatcast.store.repo import Repo

    engine = make_engine(settings.db_url)
    repo = Repo(session_factory(engine))
    try:
        if args.action == "create":
            token = new_api_token()
            row = await repo.create_api_token(args.user, args.name or "", digest(token))
            print(token)
            print(f"token {row.id} for user {args.user!r}: shown once, keep it secret",
                  file=sys.stderr)
        elif args.action == "list":
            for row in await repo.list_api_tokens(args.user):
                used = row.last_used_at.isoformat() if row.last_used_at else "never used"
                print(f"{row.id}\t{row.user_id}\t{row.name or '-'}\t"
                      f"{row.created_at.isoformat()}\t{used}")
        elif not await repo.revoke_api_token(args.id):
            raise SystemExit(f"chatcast: no token with id {args.id!r}")
        else:
            print(f"token {args.id} revoked", file=sys.stderr)
    finally:
        await engine.dispose()


def token(args: argparse.Namespace, settings: Settings) -> None:
    """`create` prints a new API token for a user (created if new); only its hash is
    stored, so it is shown this once. `list` shows ids, never values; `revoke ID`."""
    if args.action == "create":
        args.user = args.user.strip()
        if not 1 <= len(args.user) <= 64:
            raise SystemExit("chatcast: --user must be 1-64 characters")
    _migrate(settings)
    asyncio.run(_token_command(settings, args))


def chat(args: argparse.Namespace) -> int:
    """The terminal chat: a client of a server (this one or any other), so it needs none of
    the server's settings."""
    from chatcast.terminal import run

    return run(args.url, token=args.token, chat=args.chat, model=args.model)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="chatcast", description="Streaming chat server")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the server (migrates first)")
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--port", type=int, default=8000)
    p_serve.add_argument("--workers", type=int, default=1)
    sub.add_parser("migrate", help="apply database migrations")
    p_token = sub.add_parser("token", help="manage API tokens")
    token_sub = p_token.add_subparsers(dest="action", required=True)
    p_create = token_sub.add_parser("create", help="print a new API token (shown once)")
    p_create.add_argument("--user", required=True, help="user id the token acts as")
    p_create.add_argument("--name", default="", help="a label to recognise the token by")
    p_list = token_sub.add_parser("list", help="list tokens (ids and labels, never values)")
    p_list.add_argument("--user", default=None, help="only this user's tokens")
    p_revoke = token_sub.add_parser("revoke", help="delete a token by its id")
    p_revoke.add_argument("id", help="the token's id (from `token list`)")
    p_chat = sub.add_parser("chat", help="chat in the terminal with a chatcast server")
    p_chat.add_argument("url", nargs="?", default="http://127.0.0.1:8000",
                        help="the server (default http://127.0.0.1:8000, as scripts/serve)")
    p_chat.add_argument("--token", default=os.environ.get("CHATCAST_TOKEN"),
                        help="API token or JWT (default $CHATCAST_TOKEN; none: anonymous)")
    p_chat.add_argument("--chat", default=None, help="open this chat (an id from /chats)")
    p_chat.add_argument("--model", default=None, help="model of new chats (e.g. demo-thinking)")
    args = parser.parse_args(argv)
    if args.command == "chat":
        raise SystemExit(chat(args))
    settings = Settings()
    logging.config.dictConfig(log_config(settings.log_level, settings.log_format))
    if args.command == "migrate":
        _migrate(settings)
        print("database is up to date", file=sys.stderr)
    elif args.command == "token":
        token(args, settings)
    else:
        serve(args)


if __name__ == "__main__":
    main()
