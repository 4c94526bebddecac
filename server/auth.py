"""Identity: who is calling, in one of three modes (`CHATCAST_AUTH`), or decided by the
host application's own identity hook.

- `anonymous` (default): a signed, HttpOnly `chatcast_session` cookie names an anonymous
  user; a request without a valid cookie gets a new user and the cookie. Every tab of a
  browser shares it. API tokens are accepted too.
- `token`: `Authorization: Bearer <API token>` (made with `chatcast token create`).
- `jwt`: `Authorization: Bearer <JWT>` from the app's own login; `sub` is the user id.

In every mode the SSE route and the WebSocket also accept `?ticket=` (a single-use ticket
from `POST /api/tickets`), for EventSource and browsers that cannot send headers. Bad
credentials that were presented (bearer, ticket) are refused, never replaced by a new
anonymous user; in `token` and `jwt` mode, no credentials are refused too (401 / 4001).

An application that embeds chatcast may pass `authenticate(connection) -> user id | None`
(sync or async; the Starlette `HTTPConnection` of a request, an SSE stream or a WebSocket
handshake, so its own session cookie or header decides). It is asked first: a user id is
that user; None leaves the caller to the mode above (so with `token` or `jwt`, a caller the
hook does not know needs credentials, and with `anonymous` gets an anonymous user). A hook
that raises, or returns something that is not a 1-64 character string, refuses the caller
(401 / 4001, logged), never falling back to an anonymous user.
"""

from __future__ import annotations

import inspect
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from itsdangerous import BadSignature, URLSafeSerializer
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatcast.core.errors import ChatcastError, Unauthorized
from chatcast.server import metrics
from chatcast.server.limits.base import digest
from chatcast.server.responses import error_response
from chatcast.store.ids import new_id

if TYPE_CHECKING:
    from chatcast.server.jwt_auth import JwtVerifier
    from chatcast.server.limits import Limits
    from chatcast.server.settings import Settings
    from chatcast.store.repo import Repo

log = logging.getLogger("chatcast.auth")

#: The host application's identity hook: the caller's user id, or None (not known to it).
Authenticate: TypeAlias = Callable[[HTTPConnection], "str | Awaitable[str | None] | None"]

COOKIE = "chatcast_session"
COOKIE_MAX_AGE = 400 * 24 * 3600
TOKEN_PREFIX = "cc_"
#: Routes where `?ticket=` is accepted (besides the WebSocket).
TICKET_PATH = re.compile(r"^/api/chats/[^/]+/events$")
MAX_USER_ID = 64


def route_path(scope: Scope) -> str:
    """The path below where the app is mounted (`/api/chats` for `/chat/api/chats` when it
    is mounted at `/chat`); the whole path when it is not."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root):] or "/"
    return path


def new_api_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class Identity:
    """The signed session cookie of anonymous users."""

    def __init__(self, secret: str) -> None:
        self._signer = URLSafeSerializer(secret, salt="chatcast-session")

    def user_from_cookie(self, value: str | None) -> str | None:
        if not value:
            return None
        try:
            data = self._signer.loads(value)
        except BadSignature:
            return None
        return data if isinstance(data, str) else None

    def cookie_header(self, user_id: str, *, secure: bool) -> bytes:
        value = self._signer.dumps(user_id)
        attrs = f"{COOKIE}={value}; Path=/; Max-Age={COOKIE_MAX_AGE}; HttpOnly; SameSite=Lax"
        return (attrs + ("; Secure" if secure else "")).encode()


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    via: str  # "cookie", "new" (a new anonymous user: set the cookie), "token", "jwt",
    #           "ticket", "hook" (the host's identity hook)

    @property
    def is_new(self) -> bool:
        return self.via == "new"


class Authenticator:
    def __init__(self, settings: Settings, repo: Repo, limits: Limits,
                 hook: Authenticate | None = None) -> None:
        self.mode = settings.auth
        self.hook = hook
        self.cookies = Identity(settings.signing_key())
        self.repo = repo
        self.limits = limits
        self.ticket_ttl_s = settings.ticket_ttl_s
        self.jwt: JwtVerifier | None = None
        if self.mode == "jwt":
            from chatcast.server.jwt_auth import JwtVerifier
            self.jwt = JwtVerifier(settings)

    async def authenticate(self, conn: HTTPConnection, *, ticket_ok: bool) -> Principal:
        """Who is calling; raises Unauthorized. Never logs or echoes a credential."""
        if self.hook is not None:
            user = await self._ask_hook(conn)
            if user is not None:
                return Principal(user, "hook")
        bearer = _bearer(conn.headers.get("authorization"))
        if bearer is not None:
            return await self._bearer(bearer)
        ticket = conn.query_params.get("ticket") if ticket_ok else None
        if ticket:
            user = await self.limits.redeem_ticket(ticket)
            if user is None:
                raise Unauthorized("invalid, used or expired ticket")
            return Principal(user, "ticket")
        if self.mode != "anonymous":
            raise Unauthorized("credentials required: Authorization: Bearer … or ?ticket=")
        user = self.cookies.user_from_cookie(conn.cookies.get(COOKIE))
        return Principal(user, "cookie") if user else Principal(new_id(), "new")

    async def _ask_hook(self, conn: HTTPConnection) -> str | None:
        assert self.hook is not None
        try:
            result = self.hook(conn)
            user = await result if inspect.isawaitable(result) else result
        except Exception:
            log.exception("identity hook raised: caller refused",
                          extra={"path": route_path(conn.scope)})
            raise Unauthorized("identity check failed") from None
        if user is None:
            return None
        if not isinstance(user, str) or not 1 <= len(user) <= MAX_USER_ID:
            log.error("identity hook returned %s, not a user id of 1-%d characters: caller "
                      "refused", type(user).__name__, MAX_USER_ID)
            raise Unauthorized("identity check failed")
        return user

    async def _bearer(self, value: str) -> Principal:
        if self.jwt is not None:
            return Principal(self.jwt.verify(value), "jwt")
        user = await self.repo.user_for_token(digest(value)) \
            if value.startswith(TOKEN_PREFIX) else None
        if user is None:
            raise Unauthorized("invalid API token")
        return Principal(user, "token")

    async def issue_ticket(self, user_id: str) -> str:
        return await self.limits.issue_ticket(user_id, self.ticket_ttl_s)


def _bearer(header: str | None) -> str | None:
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None  # another scheme (e.g. a proxy's Basic auth) is not ours
    return value.strip()  # an empty one is refused like a wrong one


class IdentityMiddleware:
    """Puts `user_id` into the scope's state for HTTP requests: every request in anonymous
    mode (setting the cookie on the response for a new user), `/api/` requests (below where
    the app is mounted) in the other modes. Refusals are 401 JSON errors. WebSockets
    authenticate in their own handshake."""

    def __init__(self, app: ASGIApp, anonymous: bool) -> None:
        self.app = app
        self.anonymous = anonymous

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_path(scope) if scope["type"] == "http" else ""
        if scope["type"] != "http" or not (self.anonymous or path.startswith("/api/")):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        auth: Authenticator = scope["state"]["svc"].auth
        ticket_ok = scope["method"] == "GET" and bool(TICKET_PATH.match(path))
        try:
            who = await auth.authenticate(conn, ticket_ok=ticket_ok)
        except ChatcastError as exc:
            if isinstance(exc, Unauthorized):
                metrics.AUTH_REFUSED.inc()
            response = error_response(exc)
            response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        scope["state"]["user_id"] = who.user_id
        scope["state"]["auth_via"] = who.via
        if not who.is_new:
            await self.app(scope, receive, send)
            return
        cookie = auth.cookies.cookie_header(who.user_id, secure=scope.get("scheme") == "https")

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"set-cookie", cookie)]
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def origin_allowed(conn: HTTPConnection, allowed: list[str]) -> bool:
    """An absent Origin (non-browser client) is allowed; a browser's must be listed, or be
    this server's own origin when no list is configured."""
    origin = conn.headers.get("origin")
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if allowed:
        return origin in allowed or "*" in allowed
    host = conn.headers.get("host", "")
    scheme = "https" if conn.url.scheme in ("https", "wss") else "http"
    return origin == f"{scheme}://{host}"

