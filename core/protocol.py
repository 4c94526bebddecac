"""Protocol v1: the one event vocabulary of every transport. Pure data, no I/O.

Client requests are parsed into typed objects (or a `ChatcastError` saying exactly what is
wrong); server events are `Event`s whose JSON is encoded once and shared by every subscriber.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from chatcast.core.errors import BadRequest, ChatcastError, TooLarge, UnknownType

VERSION = 1
MAX_FRAME_BYTES = 64 * 1024
# The parts of an answer a `delta` can carry (its `part` field).
TEXT = "text"
REASONING = "reasoning"
PARTS = (TEXT, REASONING)

Id = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
Rid = Annotated[str, StringConstraints(max_length=128)]


class Cursor(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    gen: Id
    seq: Annotated[int, Field(ge=0)]


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    rid: Rid | None = None


class Subscribe(_Req):
    type: Literal["subscribe"]
    chat: Id
    cursor: Cursor | None = None


class Unsubscribe(_Req):
    type: Literal["unsubscribe"]
    chat: Id


class Send(_Req):
    type: Literal["send"]
    chat: Id
    content: str
    client_msg_id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None


class Stop(_Req):
    type: Literal["stop"]
    gen: Id | None = None
    chat: Id | None = None


class Regenerate(_Req):
    type: Literal["regenerate"]
    chat: Id
    message: Id | None = None


class Continue(_Req):
    type: Literal["continue"]
    gen: Id


class Ping(_Req):
    type: Literal["ping"]


Request = Annotated[
    Subscribe | Unsubscribe | Send | Stop | Regenerate | Continue | Ping,
    Field(discriminator="type"),
]
_request_adapter: TypeAdapter[Request] = TypeAdapter(Request)
REQUEST_TYPES = ("subscribe", "unsubscribe", "send", "stop", "regenerate", "continue", "ping")


def parse_request(raw: str | bytes) -> Request:
    """Parse one client frame. Raises BadRequest / UnknownType with a readable message;
    the exception's `rid` attribute carries the request id when it could be read."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BadRequest("a frame must be a JSON object")
    rid = obj.get("rid") if isinstance(obj.get("rid"), str) else None
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise _with_rid(BadRequest("missing field 'type'"), rid)
    if kind not in REQUEST_TYPES:
        raise _with_rid(UnknownType(f"unknown type {kind[:40]!r}"), rid)
    try:
        req = _request_adapter.validate_python(obj)
    except ValidationError as exc:
        raise _with_rid(BadRequest(describe_validation(exc)), rid) from None
    if isinstance(req, Stop) and req.gen is None and req.chat is None:
        raise _with_rid(BadRequest("stop needs 'gen' or 'chat'"), rid)
    return req


def describe_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"][1:])  # [0] is the request type
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts)


def _with_rid(err: ChatcastError, rid: str | None) -> ChatcastError:
    err.rid = rid  # type: ignore[attr-defined]
    return err


def check_content(content: str, max_chars: int) -> str:
    if not content.strip():
        raise BadRequest("content must not be empty")
    if len(content) > max_chars:
        raise TooLarge(f"content is {len(content)} characters; the limit is {max_chars}")
    return content


def content_digest(text: str) -> tuple[int, str]:
    """(length in code points, sha256 of UTF-8) — what `done` carries for verification."""
    return len(text), hashlib.sha256(text.encode()).hexdigest()


@dataclass(slots=True, eq=False)
class Event:
    """A server → client event. `data` is the JSON object (its type, chat, gen and seq are
    read once, at construction, and must not change); its JSON bytes and text are
    computed once, on first use, and shared by every subscriber."""

    data: dict[str, Any]
    _raw: bytes | None = field(default=None, repr=False)
    _text: str | None = field(default=None, repr=False)
    # Read for every subscriber an event is delivered to: taken from `data` once.
    type: str = field(init=False, repr=False)
    chat: str = field(init=False, repr=False)
    gen: str | None = field(init=False, repr=False)
    seq: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        data = self.data
        self.type = str(data["type"])
        self.chat = str(data.get("chat", ""))
        gen = data.get("gen")
        self.gen = str(gen) if gen is not None else None
        self.seq = int(data.get("seq", 0))

    @property
    def is_positioned(self) -> bool:
        """Deltas and dones have a position (gen, seq) in their generation's log."""
        return self.type in ("delta", "done")

    def encode(self) -> bytes:
        if self._raw is None:
            # orjson's bytes keep a 4 KiB allocation whatever their length (measured with
            # tracemalloc: 4,098 B for an 80-byte delta); events live on in logs and outboxes,
            # so keep an exact-size copy (~88 B).
            self._raw = bytes(memoryview(orjson.dumps(self.data)))
        return self._raw

    def text(self) -> str:
        """The JSON as str, for WebSocket text frames; computed once."""
        if self._text is None:
            self._text = self.encode().decode()
        return self._text

    @classmethod
    def decode(cls, raw: bytes) -> Event:
        return cls(orjson.loads(raw), raw)


def ack(rid: str | None, **result: Any) -> Event:
    return Event({"type": "ack", "rid": rid, **result})


def error(err: ChatcastError, rid: str | None = None) -> Event:
    return Event({"type": "error", "rid": rid, **err.body()})


def pong(rid: str | None = None) -> Event:
    return Event({"type": "pong", "rid": rid} if rid else {"type": "pong"})


def snapshot(chat: str, messages: list[dict[str, Any]], active: dict[str, Any] | None) -> Event:
    return Event({"type": "snapshot", "chat": chat, "messages": messages, "active": active})


def message(chat: str, msg: dict[str, Any]) -> Event:
    return Event({"type": "message", "chat": chat, "message": msg})


def start(chat: str, gen: str, msg: str, provider: str, model: str) -> Event:
    return Event({"type": "start", "chat": chat, "gen": gen, "message": msg,
                  "provider": provider, "model": model})


def delta(chat: str, gen: str, seq: int, text: str, ts: float | None = None) -> Event:
    """More answer text. `ts` (CHATCAST_DEMO_TIMESTAMPS, for benchmarks only): when the
    provider emitted the chunk, time.time() of the producing process; a merged frame keeps
    its oldest chunk's."""
    data: dict[str, Any] = {"type": "delta", "chat": chat, "gen": gen, "seq": seq,
                            "part": TEXT, "text": text}
    if ts is not None:
        data["ts"] = ts
    return Event(data)


def reasoning_delta(chat: str, gen: str, seq: int, reasoning: str,
                    ts: float | None = None) -> Event:
    """More reasoning: a `delta` in the same log as the text, whose `text` is empty so that
    a client that knows nothing of reasoning assembles the answer exactly (docs/protocol.md,
    Reasoning)."""
    data: dict[str, Any] = {"type": "delta", "chat": chat, "gen": gen, "seq": seq,
                            "part": REASONING, "text": "", "reasoning": reasoning}
    if ts is not None:
        data["ts"] = ts
    return Event(data)


def delta_part(event: Event) -> tuple[str, str]:
    """(part, its text) of a delta; a delta without `part` (an older server's) is text."""
    data = event.data
    if data.get("part") == REASONING:
        return REASONING, str(data.get("reasoning", ""))
    return TEXT, str(data.get("text", ""))


def done(chat: str, gen: str, seq: int, status: str, msg: dict[str, Any], *,
         usage: dict[str, Any] | None = None, err: dict[str, Any] | None = None) -> Event:
    length, sha = content_digest(str(msg.get("content", "")))
    reasoning_length, reasoning_sha = content_digest(str(msg.get("reasoning") or ""))
    data: dict[str, Any] = {"type": "done", "chat": chat, "gen": gen, "seq": seq,
                            "status": status, "message": msg, "length": length, "sha256": sha,
                            "reasoning_length": reasoning_length,
                            "reasoning_sha256": reasoning_sha}
    if usage:
        data["usage"] = usage
    if err:
        data["error"] = err
    return Event(data)


def saving(chat: str, gen: str, last_seq: int, status: str, content: str, reasoning: str,
           usage: dict[str, Any] | None = None) -> Event:
    """The answer is over (`status`, after the delta at `last_seq`) but not yet saved: the
    database is unavailable and its final write is being retried. Its `done` follows once
    the write lands; `length`/`sha256` (and `reasoning_*`) already let a client check that
    it has the whole text. Unpositioned (no `seq`): it adds nothing to the log."""
    length, sha = content_digest(content)
    reasoning_length, reasoning_sha = content_digest(reasoning)
    data: dict[str, Any] = {"type": "saving", "chat": chat, "gen": gen, "last_seq": last_seq,
                            "status": status, "length": length, "sha256": sha,
                            "reasoning_length": reasoning_length,
                            "reasoning_sha256": reasoning_sha}
    if usage:
        data["usage"] = usage
    return Event(data)


def sse_frame(event: Event) -> bytes:
    """One Server-Sent Events frame; deltas and dones carry `id: gen:seq`."""
    head = b"event: " + event.type.encode() + b"\n"
    if event.is_positioned:
        head += f"id: {event.gen}:{event.seq}\n".encode()
    return head + b"data: " + event.encode() + b"\n\n"


def parse_cursor(text: str | None) -> Cursor | None:
    """`gen:seq` (SSE Last-Event-ID, ?cursor=) → Cursor; anything unreadable → None (snapshot)."""
    if not text or ":" not in text:
        return None
    gen, _, seq = text.rpartition(":")
    try:
        return Cursor(gen=gen, seq=int(seq))
    except (ValueError, ValidationError):
        return None
