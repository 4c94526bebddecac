"""Identity: an anonymous user named by a signed, HttpOnly `chatcast_session` cookie.

Every tab of a browser shares the cookie and so the user. A request without a valid cookie
gets a new anonymous user id; the response sets the cookie.
"""

from __future__ import annotations

from http.cookies import SimpleCookie

from itsdangerous import BadSignature, URLSafeSerializer
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from store.ids import new_id

COOKIE = "chatcast_session"
COOKIE_MAX_AGE = 400 * 24 * 3600


class Identity:
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

    def resolve(self, conn: HTTPConnection) -> tuple[str, bool]:
        """(user id, is_new) for a request or WebSocket handshake."""
        user = self.user_from_cookie(conn.cookies.get(COOKIE))
        return (user, False) if user else (new_id(), True)


class IdentityMiddleware:
    """Puts `user_id` into the scope's state for HTTP requests and sets the cookie on the
    response when the user is new. WebSockets resolve identity in their own handshake."""

    def __init__(self, app: ASGIApp, identity: Identity) -> None:
        self.app = app
        self.identity = identity

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        user_id, is_new = self.identity.resolve(HTTPConnection(scope))
        scope.setdefault("state", {})["user_id"] = user_id
        if not is_new:
            await self.app(scope, receive, send)
            return
        cookie = self.identity.cookie_header(user_id, secure=scope.get("scheme") == "https")

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


def parse_cookie(header: str) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    jar.load(header)
    return {k: m.value for k, m in jar.items()}
