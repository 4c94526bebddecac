"""An async Python client for chatcast's WebSocket protocol (v1, docs/protocol.md).

For a host's back end, scripts and tests: one WebSocket per `Client`, many chats on it. It
does what the browser client (clients/js) does, so an answer read from Python is exact too:

- every chat it watches has a cursor (the last position applied); after a dropped
  connection it reconnects with full-jitter backoff (the close-code table decides whether
  and how soon) and resubscribes from that cursor, so the text goes on with no hole and no
  duplicate; a delta at or below the cursor is never applied twice;
- `done` is checked: the assembled text and reasoning against `length`/`sha256` and
  `reasoning_length`/`reasoning_sha256`; a copy that does not match is replaced by the
  stored message (the `done` frame's, else the REST history's) and the `Done` says
  `verified=False`;
- reasoning arrives as `ReasoningDelta`s, kept apart from the answer's `TextDelta`s.

    async with chatcast.client.connect("http://127.0.0.1:8000") as c:
        chat = await c.create_chat()
        async for event in c.send(chat.id, "hi"):
            if isinstance(event, chatcast.client.TextDelta):
                print(event.text, end="")
        answer = await c.ask(chat.id, "and then?")   # Answer(text, reasoning, status, usage)

Identity: `token=` (an API token or JWT, sent as `Authorization: Bearer`), `cookies=` (e.g.
the host's session cookie), `headers=` (whatever the host's identity hook reads). With none
of them, in anonymous mode, the first HTTP request gets a `chatcast_session` cookie and the
WebSocket handshake carries it, as a browser does.

The wire vocabulary (request models, parts, digests, close and error codes) is
`chatcast.core`'s: this module imports nothing else of chatcast.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
from pydantic import BaseModel, ValidationError
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from chatcast.core import protocol
from chatcast.core.codes import CLOSE_RETRYABLE, Close, Code
from chatcast.core.errors import BadRequest, ChatcastError, TooLarge
from chatcast.core.retry import Backoff, retry

log = logging.getLogger("chatcast.client")

__all__ = [
    "Answer", "Chat", "ChatEvent", "Client", "ClientClosed", "ConnectionChanged",
    "ConnectionLost", "Done", "MessageCreated", "ReasoningDelta", "Reply", "ServerError",
    "Snapshot", "Start", "TextDelta", "connect",
]

_M = TypeVar("_M", bound=BaseModel)

#: A message row's status → the `done` status it ended with.
_ENDED = {"complete": "completed", "stopped": "stopped", "error": "error",
          "interrupted": "interrupted"}
#: Server frames may be larger than the 64 KiB the server accepts (a snapshot's page).
_MAX_INCOMING = 64 * 1024 * 1024


# ---- errors ------------------------------------------------------------------------------


class ServerError(ChatcastError):
    """The server refused a request (an `error` frame or a JSON error body). `code` is the
    protocol's; `wire_code` the string as sent (a newer server may send a code this client
    does not know); `retryable` as the server said."""

    def __init__(self, body: Mapping[str, Any], status: int | None = None) -> None:
        wire = str(body.get("code", Code.INTERNAL))
        try:
            code = Code(wire)
        except ValueError:
            code = Code.INTERNAL
        extra = {k: v for k, v in body.items() if k not in ("code", "message", "retryable",
                                                            "type", "rid")}
        super().__init__(str(body.get("message", wire)), code=code, **extra)
        self.wire_code = wire
        self.server_retryable = bool(body.get("retryable", False))
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.server_retryable


class ConnectionLost(ConnectionError):
    """The connection dropped before the server answered a request that is not safe to
    resend (`regenerate`, `continue`): it may or may not have been carried out."""


class ClientClosed(ConnectionError):
    """The client was closed, or the server refused it for good (4001, a policy close)."""


# ---- what a client sees ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Chat:
    id: str
    title: str | None
    provider: str | None
    model: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Chat:
        return cls(str(row["id"]), row.get("title"), row.get("provider"), row.get("model"),
                   dict(row))


@dataclass(frozen=True, slots=True)
class Start:
    """A generation began (`message` is the assistant message it writes)."""

    chat: str
    gen: str
    message: str
    provider: str
    model: str


@dataclass(frozen=True, slots=True)
class TextDelta:
    """More answer text, applied once, in order."""

    chat: str
    gen: str
    seq: int
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """More of the model's reasoning (markdown), kept apart from the answer's text."""

    chat: str
    gen: str
    seq: int
    text: str


@dataclass(frozen=True, slots=True)
class Done:
    """A generation ended. `text` and `reasoning` are the whole message (also after a
    `continue`); `verified` is whether the streamed copy matched the server's digests (when
    it did not, `text`/`reasoning` are the stored message's, not the streamed copy)."""

    chat: str
    gen: str
    status: str
    message: dict[str, Any]
    text: str
    reasoning: str
    usage: dict[str, Any] | None
    error: dict[str, Any] | None
    verified: bool
    digests: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The chat's state (on subscribing without a usable cursor, or after a resync)."""

    chat: str
    messages: list[dict[str, Any]]
    active: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class MessageCreated:
    """A message was stored (e.g. a user message sent from another tab)."""

    chat: str
    message: dict[str, Any]


ConnectionState = Literal["open", "reconnecting", "closed"]


@dataclass(frozen=True, slots=True)
class ConnectionChanged:
    """The connection opened, dropped (`reconnecting`, with why and the pause before the next
    try), or ended for good (`closed`)."""

    state: ConnectionState
    detail: str = ""
    delay_s: float = 0.0


ChatEvent = Start | TextDelta | ReasoningDelta | Done | Snapshot | MessageCreated | \
    ConnectionChanged


@dataclass(frozen=True, slots=True)
class Answer:
    """A finished answer, what `Reply.answer()` and `Client.ask()` return."""

    text: str
    reasoning: str
    status: str
    usage: dict[str, Any] | None
    chat: str
    gen: str
    message: str
    verified: bool
    error: dict[str, Any] | None = None

    @classmethod
    def of(cls, done: Done) -> Answer:
        return cls(done.text, done.reasoning, done.status, done.usage, done.chat, done.gen,
                   str(done.message.get("id", "")), done.verified, done.error)


# ---- per-chat assembly (pure: no I/O) ----------------------------------------------------


@dataclass(slots=True)
class _Gen:
    message: str
    seq: int = 0
    done: bool = False
    text: str = ""
    reasoning: str = ""


def _digest_ok(text: str, length: Any, sha256: Any) -> bool:
    """Does `text` match a `done`'s digest? A field the server did not send checks nothing."""
    have_length, have_sha = protocol.content_digest(text)
    if isinstance(length, int) and length != have_length:
        return False
    return not (isinstance(sha256, str) and sha256 and sha256.lower() != have_sha)


#: The fields of `done` that `_verified` reads.
_DIGESTS = ("length", "sha256", "reasoning_length", "reasoning_sha256")


def _verified(data: Mapping[str, Any], text: str, reasoning: str) -> bool:
    """Do text and reasoning match the digests of a `done`?"""
    return (_digest_ok(text, data.get("length"), data.get("sha256"))
            and _digest_ok(reasoning, data.get("reasoning_length"),
                           data.get("reasoning_sha256")))


class _ChatState:
    """One watched chat: its cursor, the text of every generation seen, and the queues of
    those listening. `apply` turns one server event into what listeners get: each position
    once, a snapshot reconciled with what was already applied."""

    def __init__(self, chat: str) -> None:
        self.chat = chat
        self.cursor: protocol.Cursor | None = None
        self.gens: dict[str, _Gen] = {}
        self.known: dict[str, tuple[str, str]] = {}  # message id → (content, reasoning)
        self.listeners: set[asyncio.Queue[ChatEvent]] = set()
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.needs_resync = False

    def listen(self) -> asyncio.Queue[ChatEvent]:
        queue: asyncio.Queue[ChatEvent] = asyncio.Queue()
        self.listeners.add(queue)
        return queue

    def publish(self, event: ChatEvent) -> None:
        for queue in self.listeners:
            queue.put_nowait(event)

    def apply(self, ev: protocol.Event) -> list[ChatEvent]:
        data = ev.data
        if ev.type == "delta":
            return self._delta(ev)
        if ev.type == "start":
            return self._start(str(data["gen"]), str(data["message"]),
                               str(data.get("provider", "")), str(data.get("model", "")))
        if ev.type == "done":
            done = self._done(ev)
            return [done] if done else []
        if ev.type == "snapshot":
            return self._snapshot(data)
        if ev.type == "message" and isinstance(data.get("message"), dict):
            msg = data["message"]
            self._remember(msg)
            return [MessageCreated(self.chat, msg)]
        return []

    def _remember(self, msg: Mapping[str, Any]) -> None:
        if msg.get("id"):
            self.known[str(msg["id"])] = (str(msg.get("content") or ""),
                                          str(msg.get("reasoning") or ""))

    def _start(self, gen: str, message: str, provider: str, model: str) -> list[ChatEvent]:
        if gen in self.gens:
            return []  # seen already (replayed)
        # A `continue` writes on the same message: its deltas append to the kept text.
        text, reasoning = self.known.get(message, ("", ""))
        self.gens[gen] = _Gen(message, 0, False, text, reasoning)
        self.cursor = protocol.Cursor(gen=gen, seq=0)
        return [Start(self.chat, gen, message, provider, model)]

    def _delta(self, ev: protocol.Event) -> list[ChatEvent]:
        gen = ev.gen or ""
        g = self.gens.get(gen)
        if g is None:
            # Text of a generation never seen starting: something was missed; a snapshot
            # repairs it.
            self.needs_resync = True
            return []
        if g.done or ev.seq <= g.seq:
            return []  # already applied
        part, piece = protocol.delta_part(ev)
        g.seq = ev.seq
        self.cursor = protocol.Cursor(gen=gen, seq=ev.seq)
        if part == protocol.REASONING:
            g.reasoning += piece
            return [ReasoningDelta(self.chat, gen, ev.seq, piece)]
        g.text += piece
        return [TextDelta(self.chat, gen, ev.seq, piece)]

    def _done(self, ev: protocol.Event) -> Done | None:
        gen = ev.gen or ""
        data = ev.data
        g = self.gens.get(gen)
        if g is not None and g.done:
            return None  # seen already
        raw = data.get("message")
        final: dict[str, Any] = raw if isinstance(raw, dict) else {}
        if g is None:  # joined after the text: the stored row is all there is
            g = self.gens[gen] = _Gen(str(final.get("id", "")), 0, False,
                                      str(final.get("content") or ""),
                                      str(final.get("reasoning") or ""))
        g.done = True
        g.seq = max(g.seq, ev.seq)
        self.cursor = protocol.Cursor(gen=gen, seq=g.seq)
        self.known[g.message] = (g.text, g.reasoning)
        return Done(self.chat, gen, str(data.get("status", "")), final, g.text, g.reasoning,
                    data.get("usage"), data.get("error"), _verified(data, g.text, g.reasoning),
                    {k: data[k] for k in _DIGESTS if k in data})

    def settle(self, done: Done, text: str, reasoning: str) -> Done:
        """Replace a finished answer's copy by the stored one (after a failed check)."""
        g = self.gens.get(done.gen)
        if g is not None:
            g.text, g.reasoning = text, reasoning
            self.known[g.message] = (text, reasoning)
        return dataclasses.replace(done, text=text, reasoning=reasoning)

    def _catch_up(self, gen: str, g: _Gen, content: str, reasoning: str,
                  seq: int) -> list[ChatEvent]:
        """What a listener still needs so that its copy becomes (content, reasoning): the
        missing tails as deltas. A copy that is not a prefix (never expected) is replaced
        silently; the `done` check reports it."""
        out: list[ChatEvent] = []
        if reasoning.startswith(g.reasoning) and len(reasoning) > len(g.reasoning):
            out.append(ReasoningDelta(self.chat, gen, seq, reasoning[len(g.reasoning):]))
        if content.startswith(g.text) and len(content) > len(g.text):
            out.append(TextDelta(self.chat, gen, seq, content[len(g.text):]))
        g.text, g.reasoning, g.seq = content, reasoning, max(g.seq, seq)
        return out

    def _snapshot(self, data: Mapping[str, Any]) -> list[ChatEvent]:
        messages = [m for m in data.get("messages") or [] if isinstance(m, dict)]
        active = data.get("active") if isinstance(data.get("active"), dict) else None
        out: list[ChatEvent] = [Snapshot(self.chat, messages, active)]
        rows = {str(m.get("id")): m for m in messages}
        self.cursor = None
        self.needs_resync = False
        active_gen = str(active["gen"]) if active else None
        for gen, g in self.gens.items():
            if g.done or gen == active_gen:
                continue
            row = rows.get(g.message)
            if row is None or row.get("gen") != gen or row.get("status") not in _ENDED:
                continue
            # It ended while we were away: finish it from the stored row.
            content, reasoning = str(row.get("content") or ""), str(row.get("reasoning") or "")
            out += self._catch_up(gen, g, content, reasoning, g.seq)
            g.done = True
            out.append(Done(self.chat, gen, _ENDED[str(row["status"])], row, content,
                            reasoning, row.get("usage"), None, True))
        for m in messages:
            self._remember(m)
            ended = m.get("gen")
            if isinstance(ended, str) and ended not in self.gens and m.get("status") in _ENDED:
                self.gens[ended] = _Gen(str(m["id"]), 0, True, str(m.get("content") or ""),
                                      str(m.get("reasoning") or ""))
        if active is not None and active_gen is not None:
            seq = int(active.get("seq") or 0)
            content = str(active.get("content") or "")
            reasoning = str(active.get("reasoning") or "")
            running = self.gens.get(active_gen)
            if running is None:
                running = self.gens[active_gen] = _Gen(str(active["message"]))
                out.append(Start(self.chat, active_gen, running.message,
                                 str(active.get("provider", "")), str(active.get("model", ""))))
            out += self._catch_up(active_gen, running, content, reasoning, seq)
            self.cursor = protocol.Cursor(gen=active_gen, seq=seq)
        else:
            cur = data.get("cursor")
            if isinstance(cur, dict) and cur.get("gen") not in (None, "-"):
                with contextlib.suppress(ValidationError):
                    self.cursor = protocol.Cursor(gen=cur["gen"], seq=int(cur.get("seq", 0)))
        return out


# ---- reconnect policy --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    reconnect: bool
    delay_s: float
    reset: bool
    why: str


def _retry_after(reason: str) -> float | None:
    """`retry_after` of a 4029 close: its reason is JSON `{"retry_after": s}`."""
    try:
        obj = orjson.loads(reason)
    except orjson.JSONDecodeError:
        return None
    value = obj.get("retry_after") if isinstance(obj, dict) else obj
    return float(value) if isinstance(value, int | float) else None


def _plan(code: int, reason: str, established: bool, attempt: int, backoff: Backoff) -> _Plan:
    """What to do after a close: the JS client's policy (clients/js/backoff.js)."""
    if code == Close.UNAUTHORIZED:
        return _Plan(False, 0, False, "unauthorized (4001): re-authenticate")
    if not established:
        return _Plan(True, backoff.delay(attempt), False, "connect failed")
    if code in CLOSE_RETRYABLE and not CLOSE_RETRYABLE[code]:
        return _Plan(False, 0, False, f"closed ({code})")
    quick = backoff.delay(0) * 0.2  # another process (or the restarted one) is ready
    if code in (Close.GOING_AWAY, Close.SLOW_CONSUMER):
        return _Plan(True, quick, True, "server going away" if code == Close.GOING_AWAY
                     else "slow consumer")
    if code == Close.RATE_LIMITED:
        after = _retry_after(reason)
        return _Plan(True, (5.0 if after is None else after) + quick, False, "rate limited")
    return _Plan(True, backoff.delay(attempt), False, f"connection lost ({code})")


# ---- the client --------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Pending:
    frame: dict[str, Any]
    idempotent: bool
    future: asyncio.Future[dict[str, Any]]
    sent: bool = False
    subscribe: bool = False  # made anew, with the then cursor, on every connection


def _ws_url(base: str) -> str:
    parts = urlsplit(base)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws", "", ""))


def _frame(model: BaseModel, rid: str) -> dict[str, Any]:
    frame = model.model_dump(exclude_none=True)
    frame["rid"] = rid
    return frame


def _model(cls: type[_M], **fields: Any) -> _M:
    """A request built through core's own request model: the same names and limits as the
    server's parser, checked before anything is sent."""
    try:
        return cls.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise BadRequest(protocol.describe_validation(exc)) from None


class Client:
    """One connection to a chatcast server (see the module's docstring). Use it as an async
    context manager, or call `open()` and `close()`.

    `backoff`: reconnect pauses (full jitter by default: 0.5 s doubling to 15 s).
    `request_timeout_s`: how long a request waits for its `ack`, also while reconnecting.
    `stall_check_s`: a running answer silent for that long is looked up by REST; if it ended
    unheard (an event lost with a crashed process), the chat is re-synced."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, token: str | None = None,
                 cookies: Mapping[str, str] | None = None,
                 headers: Mapping[str, str] | None = None,
                 backoff: Backoff | None = None, open_timeout_s: float = 10.0,
                 request_timeout_s: float = 30.0, stall_check_s: float = 15.0,
                 trust_env: bool = True) -> None:
        self.url = url.rstrip("/")
        self.ws_url = _ws_url(self.url)
        self.backoff = backoff or Backoff(base_s=0.5, max_s=15.0, jitter=1.0)
        self.open_timeout_s = open_timeout_s
        self.request_timeout_s = request_timeout_s
        self.stall_check_s = stall_check_s
        self._headers = dict(headers or {})
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.AsyncClient(base_url=self.url, headers=self._headers,
                                      cookies=dict(cookies or {}), trust_env=trust_env,
                                      timeout=httpx.Timeout(30.0, connect=open_timeout_s))
        self.state: ConnectionState = "reconnecting"
        self.reconnects = 0  # connections after the first
        self._chats: dict[str, _ChatState] = {}
        self._pending: dict[str, _Pending] = {}
        self._rid = 0
        self._ws: ClientConnection | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closed = False
        self._failure: BaseException | None = None
        self._opened: asyncio.Future[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        await self.open()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def open(self) -> None:
        """Check identity over HTTP (in anonymous mode this gets the session cookie the
        WebSocket then carries), then connect the WebSocket (and keep it connected)."""
        try:
            await self._api("GET", "/api/chats")
            self._opened = asyncio.get_running_loop().create_future()
            self._runner = asyncio.create_task(self._run(), name="chatcast-client")
            await asyncio.wait_for(asyncio.shield(self._opened), self.open_timeout_s * 3)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close for good: waiting requests fail with `ClientClosed`."""
        self._closed = True
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        self._fail_all(ClientClosed("client closed"))
        self._broadcast(ConnectionChanged("closed", "client closed"))
        await self.http.aclose()

    async def reconnect(self) -> None:
        """Drop the connection now; the client reconnects and resumes as after any drop."""
        if self._ws is not None:
            await self._ws.close(Close.INTERNAL, "client reconnect")

    def _handshake_headers(self) -> dict[str, str]:
        headers = dict(self._headers)
        # The jar holds only what was given and what this server set.
        cookies = "; ".join(f"{c.name}={c.value}" for c in self.http.cookies.jar)
        if cookies:
            headers["Cookie"] = cookies
        return headers

    async def _run(self) -> None:
        attempt = 0
        while not self._closed:
            established = False
            code, reason = 1006, ""
            try:
                async with ws_connect(self.ws_url, additional_headers=self._handshake_headers(),
                                      open_timeout=self.open_timeout_s,
                                      max_size=_MAX_INCOMING, ping_interval=20,
                                      ping_timeout=20, close_timeout=5) as ws:
                    self._ws = ws
                    established = True
                    await self._established(ws)
                    try:
                        async for raw in ws:
                            await self._on_frame(raw)
                    except ConnectionClosed:
                        pass
                    if ws.protocol.close_code is not None:  # (websockets 13 has it here)
                        code = ws.protocol.close_code
                        reason = ws.protocol.close_reason or ""
            except (OSError, TimeoutError, WebSocketException) as exc:
                reason = reason or f"{exc.__class__.__name__}: {exc}"
            finally:
                self._ws = None
            if established and self.state == "open":
                attempt = 0
            plan = _plan(code, reason, established, attempt, self.backoff)
            self._connection_lost()
            if not plan.reconnect or self._closed:
                self._give_up(code, plan.why)
                return
            attempt = 0 if plan.reset else attempt + 1
            self.state = "reconnecting"
            self._broadcast(ConnectionChanged("reconnecting", plan.why, plan.delay_s))
            log.info("chatcast connection lost; reconnecting",
                     extra={"why": plan.why, "delay_s": round(plan.delay_s, 3)})
            await asyncio.sleep(plan.delay_s)

    async def _established(self, ws: ClientConnection) -> None:
        if self._opened is not None and not self._opened.done():
            self._opened.set_result(None)
        else:
            self.reconnects += 1
        self.state = "open"
        for st in self._chats.values():
            await self._send_subscribe(st)
        for p in list(self._pending.values()):
            if not p.sent:
                await self._dispatch(p)
        self._broadcast(ConnectionChanged("open"))

    def _connection_lost(self) -> None:
        for rid, p in list(self._pending.items()):
            if p.subscribe:
                del self._pending[rid]  # its chat's waiter is answered by the next one
                continue
            if not p.sent:
                continue
            if p.idempotent:
                p.sent = False  # resent with the same rid and client_msg_id
                continue
            del self._pending[rid]
            if not p.future.done():
                p.future.set_exception(ConnectionLost(
                    f"the connection dropped before the server answered {p.frame['type']}"))
        for st in self._chats.values():
            if st.subscribed.done():
                st.subscribed = asyncio.get_running_loop().create_future()

    def _give_up(self, code: int, why: str) -> None:
        self.state = "closed"
        err: BaseException = ClientClosed(why)
        if code == Close.UNAUTHORIZED:
            err = ServerError({"code": Code.UNAUTHORIZED, "message": why}, 401)
        self._failure = err
        if self._opened is not None and not self._opened.done():
            self._opened.set_exception(err)
        self._broadcast(ConnectionChanged("closed", why))
        self._fail_all(err)

    def _fail_all(self, err: BaseException) -> None:
        for p in self._pending.values():
            if not p.future.done():
                p.future.set_exception(err)
        self._pending.clear()
        for st in self._chats.values():
            if not st.subscribed.done():
                st.subscribed.set_exception(err)
                st.subscribed.exception()  # retrieved: no "never retrieved" warning

    def _broadcast(self, event: ConnectionChanged) -> None:
        for st in self._chats.values():
            st.publish(event)

    # -- frames -------------------------------------------------------------------------

    async def _on_frame(self, raw: str | bytes) -> None:
        try:
            ev = protocol.Event(orjson.loads(raw))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("chatcast: malformed frame skipped", extra={"frame": str(raw)[:300]})
            return
        if ev.type in ("ack", "error"):
            rid = ev.data.get("rid")
            p = self._pending.pop(rid, None) if isinstance(rid, str) else None
            if p is not None and not p.future.done():
                if ev.type == "ack":
                    p.future.set_result(ev.data)
                else:
                    p.future.set_exception(ServerError(ev.data))
            elif ev.type == "error":
                log.warning("chatcast: server error", extra={"error": ev.data})
            return
        st = self._chats.get(ev.chat)
        if st is None:
            return
        try:
            events = st.apply(ev)
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            log.warning("chatcast: could not apply a frame",
                        extra={"frame": str(raw)[:300], "error": str(exc)})
            return
        for event in events:
            if isinstance(event, Done) and not event.verified:
                event = await self._settle(st, event)
            st.publish(event)
        if st.needs_resync:
            await self.resync(st.chat)

    async def _settle(self, st: _ChatState, done: Done) -> Done:
        """The streamed copy failed its check: take the stored message instead — the one in
        `done` when it matches the digests, else the REST history's."""
        log.warning("chatcast: answer failed verification; using the stored copy",
                    extra={"chat": done.chat, "gen": done.gen})
        candidates = [done.message]
        with contextlib.suppress(httpx.HTTPError, ServerError):
            page = await self.messages(done.chat, limit=20)
            candidates += [m for m in page if m.get("id") == done.message.get("id")]
        for row in candidates:
            text, reasoning = str(row.get("content") or ""), str(row.get("reasoning") or "")
            if _verified(done.digests, text, reasoning):
                return st.settle(done, text, reasoning)
        row = candidates[-1]
        return st.settle(done, str(row.get("content") or ""), str(row.get("reasoning") or ""))

    async def _send(self, frame: dict[str, Any]) -> bool:
        ws = self._ws
        if ws is None:
            return False
        try:
            await ws.send(orjson.dumps(frame).decode())
        except ConnectionClosed:
            return False
        return True

    async def _dispatch(self, p: _Pending) -> None:
        p.sent = await self._send(p.frame)

    def _next_rid(self) -> str:
        self._rid += 1
        return f"r{self._rid}"

    async def _request(self, model: BaseModel, *, idempotent: bool) -> dict[str, Any]:
        if self._failure is not None:
            raise self._failure
        rid = self._next_rid()
        frame = _frame(model, rid)
        size = len(orjson.dumps(frame))
        if size > protocol.MAX_FRAME_BYTES:
            # The server would close the whole connection (1009) for one such frame.
            raise TooLarge(f"the request is {size} bytes; a frame may have at most "
                           f"{protocol.MAX_FRAME_BYTES}")
        p = _Pending(frame, idempotent, asyncio.get_running_loop().create_future())
        self._pending[rid] = p
        await self._dispatch(p)
        try:
            return await asyncio.wait_for(asyncio.shield(p.future), self.request_timeout_s)
        finally:
            self._pending.pop(rid, None)

    # -- chats --------------------------------------------------------------------------

    async def _send_subscribe(self, st: _ChatState) -> None:
        rid = self._next_rid()
        p = _Pending(_frame(_model(protocol.Subscribe, type="subscribe", chat=st.chat,
                                   cursor=st.cursor), rid),
                     True, asyncio.get_running_loop().create_future(), subscribe=True)
        self._pending[rid] = p
        waiter = st.subscribed

        def acked(fut: asyncio.Future[dict[str, Any]]) -> None:
            self._pending.pop(rid, None)
            exc = None if fut.cancelled() else fut.exception()
            if waiter.done() or fut.cancelled():
                return
            if exc is None:
                waiter.set_result(None)
            else:
                if isinstance(exc, ServerError) and exc.code == Code.NOT_FOUND:
                    self._chats.pop(st.chat, None)
                waiter.set_exception(exc)
                waiter.exception()

        p.future.add_done_callback(acked)
        await self._dispatch(p)

    async def subscribe(self, chat: str) -> None:
        """Watch a chat (done by `send`, `events`, … when needed); resumed after drops."""
        st = self._chats.get(chat)
        if st is None:
            st = self._chats[chat] = _ChatState(chat)
            if self._ws is not None:
                await self._send_subscribe(st)
        if self._failure is not None:
            raise self._failure
        await asyncio.wait_for(asyncio.shield(st.subscribed), self.request_timeout_s)

    async def unsubscribe(self, chat: str) -> None:
        if self._chats.pop(chat, None) is not None:
            await self._send({"type": "unsubscribe", "chat": chat})

    async def resync(self, chat: str) -> None:
        """Ask for a fresh snapshot of a chat (what follows a gap that cannot be replayed)."""
        st = self._chats.get(chat)
        if st is None:
            return
        st.cursor = None
        st.needs_resync = False
        if st.subscribed.done():
            st.subscribed = asyncio.get_running_loop().create_future()
        await self._send({"type": "unsubscribe", "chat": chat})
        await self._send_subscribe(st)

    async def events(self, chat: str) -> AsyncIterator[ChatEvent]:
        """Every event of a chat from now on (a snapshot first), as long as the caller
        iterates; ends when the client closes."""
        await self.subscribe(chat)
        st = self._chats[chat]
        queue = st.listen()
        try:
            while True:
                event = await queue.get()
                yield event
                if isinstance(event, ConnectionChanged) and event.state == "closed":
                    return
        finally:
            st.listeners.discard(queue)

    def cursor(self, chat: str) -> protocol.Cursor | None:
        """The last position applied in a chat (None before any)."""
        st = self._chats.get(chat)
        return st.cursor if st else None

    # -- commands -----------------------------------------------------------------------

    def send(self, chat: str, content: str, *, client_msg_id: str | None = None) -> Reply:
        """Post a user message and stream its answer: iterate the `Reply` for its events,
        or `await reply.answer()`. Resent after a drop with the same `client_msg_id`, which
        makes it one message and one generation whatever happens to the connection."""
        model = _model(protocol.Send, type="send", chat=chat, content=content,
                       client_msg_id=client_msg_id or uuid.uuid4().hex)
        return Reply(self, chat, model, idempotent=True)

    async def ask(self, chat: str, content: str) -> Answer:
        """`send` and wait for the whole answer."""
        return await self.send(chat, content).answer()

    def regenerate(self, chat: str, message: str | None = None) -> Reply:
        """A new answer for the last (or the given) user message."""
        model = _model(protocol.Regenerate, type="regenerate", chat=chat, message=message)
        return Reply(self, chat, model, idempotent=False)

    def continue_generation(self, chat: str, gen: str) -> Reply:
        """Continue a stopped or interrupted answer from its partial text; the `Done` (and
        `Answer`) carry the whole message."""
        return Reply(self, chat, _model(protocol.Continue, type="continue", gen=gen),
                     idempotent=False)

    async def stop(self, chat: str | None = None, *, gen: str | None = None) -> str:
        """Stop a generation (by id, or the chat's running one) for everyone. Idempotent;
        returns `stopping` or the status it had already ended with."""
        ack = await self._request(_model(protocol.Stop, type="stop", gen=gen, chat=chat),
                                  idempotent=True)
        return str(ack.get("status", ""))

    # -- REST ---------------------------------------------------------------------------

    async def _api(self, method: str, path: str, body: Any = None,
                   params: Mapping[str, Any] | None = None) -> Any:
        """One REST call; JSON errors raise `ServerError`. A read is retried (with the
        reconnect backoff, three tries) when the connection fails under it: a pooled
        connection may have died with the network, as the WebSocket did. A write is not
        (it may have been carried out)."""
        async def call() -> httpx.Response:
            return await self.http.request(method, path, json=body, params=params,
                                           headers={"Accept": "application/json"})

        res = await retry(call, retry_on=httpx.TransportError, backoff=self.backoff,
                          attempts=3 if method == "GET" else 1)
        try:
            data = orjson.loads(res.content) if res.content else None
        except orjson.JSONDecodeError:
            data = None
        if res.is_error:
            err = data.get("error") if isinstance(data, dict) else None
            raise ServerError(err if isinstance(err, dict) else
                              {"code": Code.INTERNAL, "message": f"HTTP {res.status_code}"},
                              res.status_code)
        return data

    async def create_chat(self, title: str | None = None, *, provider: str | None = None,
                          model: str | None = None) -> Chat:
        body = {k: v for k, v in (("title", title), ("provider", provider),
                                  ("model", model)) if v is not None}
        return Chat.of(await self._api("POST", "/api/chats", body))

    async def chats(self) -> list[Chat]:
        """The caller's chats, most recently active first."""
        return [Chat.of(c) for c in (await self._api("GET", "/api/chats"))["chats"]]

    async def messages(self, chat: str, *, limit: int = 50,
                       before: str | None = None) -> list[dict[str, Any]]:
        """A page of history (oldest → newest), the newest page unless `before` is given."""
        params: dict[str, Any] = {"limit": limit}
        if before:
            params["before"] = before
        body = await self._api("GET", f"/api/chats/{chat}/messages", params=params)
        return list(body["messages"])

    async def generation(self, gen: str) -> dict[str, Any]:
        return dict(await self._api("GET", f"/api/generations/{gen}"))


class Reply:
    """The answer to one `send` / `regenerate` / `continue`: iterate it for its events
    (`Start`, `ReasoningDelta`, `TextDelta`, `ConnectionChanged` while it reconnects, and
    `Done` last), or `await answer()`. The request goes out when iteration begins. `gen`,
    `message` (the assistant message's id) and `user_message` are set once it is acked."""

    def __init__(self, client: Client, chat: str, request: BaseModel, *,
                 idempotent: bool) -> None:
        self.client = client
        self.chat = chat
        self.request = request
        self.idempotent = idempotent
        self.gen: str | None = None
        self.message: str | None = None
        self.user_message: dict[str, Any] | None = None
        self.done: Done | None = None
        self._iterator: AsyncIterator[ChatEvent] | None = None

    def __aiter__(self) -> AsyncIterator[ChatEvent]:
        if self._iterator is None:
            self._iterator = self._events()
        return self._iterator

    async def answer(self) -> Answer:
        """Wait for the end (consuming the events not iterated yet)."""
        async for _event in self:
            pass
        if self.done is None:
            raise ClientClosed("the answer did not finish")
        return Answer.of(self.done)

    async def stop(self) -> str:
        """Stop this answer (once it has started)."""
        return await self.client.stop(self.chat, gen=self.gen)

    async def _events(self) -> AsyncIterator[ChatEvent]:
        client = self.client
        await client.subscribe(self.chat)
        st = client._chats[self.chat]
        queue = st.listen()  # before the request: its events may arrive before its ack
        try:
            ack = await client._request(self.request, idempotent=self.idempotent)
            self.gen = str(ack["gen"])
            self.message = ack.get("assistant")
            if isinstance(ack.get("message"), dict):
                self.user_message = ack["message"]
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), client.stall_check_s)
                except TimeoutError:
                    await self._check_stalled()
                    continue
                if isinstance(event, ConnectionChanged):
                    yield event
                    if event.state == "closed":
                        raise client._failure or ClientClosed(event.detail)
                    continue
                if isinstance(event, Snapshot | MessageCreated) or event.gen != self.gen:
                    continue
                yield event
                if isinstance(event, Done):
                    self.done = event
                    return
        finally:
            st.listeners.discard(queue)

    async def _check_stalled(self) -> None:
        """Silence: is the answer still running? One that ended unheard is re-synced (the
        snapshot finishes it)."""
        if self.gen is None or self.client.state != "open":
            return
        with contextlib.suppress(httpx.HTTPError, ServerError):
            if (await self.client.generation(self.gen)).get("status") != "active":
                await self.client.resync(self.chat)


def connect(url: str = "http://127.0.0.1:8000", **options: Any) -> Client:
    """A `Client` for `async with` (see `Client` for the options)."""
    return Client(url, **options)
