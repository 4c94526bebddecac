"""The app factory: routes, middleware, and the app that owns all resources (started by its
lifespan, or by its first request when it is mounted in another app: server/embedding.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from chatcast.core.codes import Code
from chatcast.core.errors import ChatcastError
from chatcast.server import api
from chatcast.server.auth import Authenticate, IdentityMiddleware, origin_allowed
from chatcast.server.embedding import ChatcastApp
from chatcast.server.hooks import AnswerHook
from chatcast.server.responses import error_response, plain_error
from chatcast.server.services import Embedding
from chatcast.server.settings import Settings
from chatcast.server.transports import aisdk
from chatcast.server.transports.ws import WebSocketFastPath, ws_endpoint

STATIC = Path(__file__).parent / "static"
CLIENT_JS = Path(__file__).parent.parent / "clients" / "js"

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; "
       "object-src 'none'; form-action 'self'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}


async def index(request: Request) -> Response:
    page = STATIC / "index.html"
    if not page.exists():
        return Response("chatcast is running; the web UI is not installed.",
                        media_type="text/plain")
    return FileResponse(page, headers=SECURITY_HEADERS)


async def openapi(request: Request) -> Response:
    schema = api.SCHEMAS.get_schema(routes=request.app.routes)
    return Response(orjson.dumps(schema, option=orjson.OPT_NON_STR_KEYS),
                    media_type="application/json")


class CrossSiteGuard:
    """Cookie-authenticated unsafe HTTP methods must come from an allowed Origin (CSRF).
    Requests carrying `Authorization: Bearer` are exempt: a cross-site page cannot make a
    browser send that header (it would need a CORS preflight, which chatcast never grants),
    and the credential is checked anyway."""

    def __init__(self, app: Any, allowed: list[str]) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            request = Request(scope)
            bearer = request.headers.get("authorization", "").lower().startswith("bearer ")
            if not bearer and not origin_allowed(request, self.allowed):
                refusal = plain_error(Code.UNAUTHORIZED, "cross-site request refused", 403)
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def on_chatcast_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ChatcastError)
    return error_response(exc)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = Code.NOT_FOUND if exc.status_code == 404 else Code.BAD_REQUEST
    return plain_error(code, str(exc.detail), exc.status_code)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    """Whatever escaped a route or a middleware still answers in the protocol's shape: a
    refusal raised outside the routes (e.g. storage unavailable in the identity middleware)
    as itself, anything else as `internal` (logged with its traceback by the server)."""
    if isinstance(exc, ChatcastError):
        return error_response(exc)
    return error_response(ChatcastError("internal error", code=Code.INTERNAL))


def create_app(settings: Settings | None = None, *,
               providers: Mapping[str, object] | None = None,
               authenticate: Authenticate | None = None,
               on_done: AnswerHook | None = None, on_stopped: AnswerHook | None = None,
               on_error: AnswerHook | None = None, **overrides: Any) -> ChatcastApp:
    """The chatcast ASGI app (public as `chatcast.create_app`).

    With no arguments it is the app `chatcast serve` runs, configured from the environment.
    `settings` replaces the environment; `overrides` are settings by field name
    (`provider="rag"`, `redis_url=...`) over either (an unknown name is a TypeError).
    `providers` maps names to the application's own providers (an async generator
    function `answer(messages, context)`, an object with such an `answer` method, or one
    with `stream`; see `chatcast.providers.custom`), added to the configured ones.
    `authenticate(connection) -> user id | None` is the identity hook (see
    `chatcast.server.auth`). `on_done`, `on_stopped` (stopped or interrupted) and
    `on_error` hear of every answer this process ends (see `chatcast.server.hooks`).

    The app runs on its own or mounted in a Starlette/FastAPI app (it then starts on its
    first request and closes on SIGTERM/SIGINT; see `chatcast.server.embedding`)."""
    unknown = sorted(set(overrides) - set(Settings.model_fields))
    if unknown:
        raise TypeError(f"create_app() got unknown settings: {', '.join(unknown)}")
    if settings is None:
        settings = Settings(**overrides)
    elif overrides:
        settings = Settings(**{**settings.model_dump(), **overrides})
    embedding = Embedding(dict(providers or {}), authenticate, on_done, on_stopped, on_error)
    chatcast: ChatcastApp | None = None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        assert chatcast is not None
        async with chatcast.lifespan(app) as state:
            yield state

    routes = [
        Route("/", index, include_in_schema=False),
        Route("/openapi.json", openapi, include_in_schema=False),
        WebSocketRoute("/ws", ws_endpoint),
        *api.ROUTES,
        *aisdk.ROUTES,
        Mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static"),
        Mount("/client", StaticFiles(directory=CLIENT_JS, check_dir=False), name="client"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(CrossSiteGuard, allowed=settings.allowed_origins),
                    Middleware(IdentityMiddleware, anonymous=settings.auth == "anonymous")],
        exception_handlers={ChatcastError: on_chatcast_error, HTTPException: on_http_error,
                            Exception: on_unexpected},
    )
    # `/ws` sockets skip the app's layers (see WebSocketFastPath); the route above stays
    # for anything that calls the Starlette app directly.
    chatcast = ChatcastApp(WebSocketFastPath(app), settings, embedding)
    return chatcast
