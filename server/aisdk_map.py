"""The AI SDK's UI message stream, sans I/O: chatcast events of one generation in, the
`ai` package's UI message chunks out (`start`, `text-start/-delta/-end`,
`reasoning-start/-delta/-end`, `finish`, ...), and chatcast messages as `UIMessage`s.

The chunk types used are the ones `ai` 6.x and 7.x both accept (`packages/ai/src/
ui-message-stream/ui-message-chunks.ts`); the client validates every chunk and fails the
chat on an unknown one, so nothing else is ever sent. `finishReason: "interrupted"` exists
only from ai 7.0.149 on and makes an older client fail: it is sent only when asked for.

Reasoning (docs/protocol.md, Reasoning) is a delta with `part: "reasoning"` and its text
in `reasoning`; each run of it becomes a `reasoning-start`, `reasoning-delta`s and a
`reasoning-end` before the text that follows it.

`Follow` is fed the chatcast events a subscriber of the chat receives (deltas, done,
snapshots) and keeps to one generation: what it has emitted so far (per part), so a
snapshot or the final `done` only ever adds the text still missing, and a replayed delta is
never emitted twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

Chunk = dict[str, Any]

#: Response headers of a UI message stream (`UI_MESSAGE_STREAM_HEADERS` in `ai`).
HEADERS = {"cache-control": "no-cache", "connection": "keep-alive",
           "x-vercel-ai-ui-message-stream": "v1", "x-accel-buffering": "no"}
DONE_LINE = b"data: [DONE]\n\n"
HEARTBEAT = b": heartbeat\n\n"

TEXT, REASONING = "text", "reasoning"

#: chatcast's terminal status → the `finish` chunk's reason (`completed` is "stop").
FINISH_REASONS = {"completed": "stop", "error": "error", "interrupted": "other"}
#: A message's status (as history shows it) → its generation's terminal status.
MESSAGE_TO_TERMINAL = {"complete": "completed", "stopped": "stopped", "error": "error",
                       "interrupted": "interrupted"}


def sse(chunk: Chunk) -> bytes:
    """One chunk as the stream's Server-Sent Event (`data: <json>`)."""
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def delta_part(event: dict[str, Any]) -> tuple[str, str]:
    """(part, text) of a delta: a reasoning delta (`part: "reasoning"`) carries its text in
    `reasoning`; any other delta is answer text, in `text` (docs/protocol.md, Reasoning)."""
    if event.get("part") == REASONING:
        return REASONING, str(event.get("reasoning") or "")
    return TEXT, str(event.get("text") or "")


@dataclass
class Follow:
    """One generation as a UI message stream. `opening()` first, then `feed()` every
    chatcast event the subscriber gets; `finished` once the terminal chunk went out."""

    gen: str
    message: str  # the assistant message's id: the stream's `messageId`
    chat: str
    provider: str = ""
    model: str = ""
    #: Send `finishReason: "interrupted"` (ai >= 7.0.149 only) instead of "other".
    interrupted_reason: bool = False
    seq: int = 0  # the last chatcast position applied
    finished: bool = False
    emitted: dict[str, int] = field(default_factory=lambda: {TEXT: 0, REASONING: 0})
    _open: str | None = None  # the part whose start went out and whose end did not
    _parts: int = 0

    def opening(self, content: str = "", reasoning: str = "", seq: int = 0) -> list[Chunk]:
        """`start` (with the message's id) and what the message already has: the text a
        continued answer started from, or everything so far when resuming."""
        self.seq = seq
        meta = {"chat": self.chat, "gen": self.gen, "provider": self.provider,
                "model": self.model, "status": "streaming"}
        out: list[Chunk] = [{"type": "start", "messageId": self.message,
                             "messageMetadata": meta}, {"type": "start-step"}]
        out += self._add(REASONING, reasoning)
        out += self._add(TEXT, content)
        return out

    def feed(self, event: dict[str, Any]) -> list[Chunk]:
        """The chunks one chatcast event adds (often none: other generations, replays)."""
        if self.finished:
            return []
        kind = event.get("type")
        if kind == "delta" and event.get("gen") == self.gen:
            seq = int(event["seq"])
            if seq <= self.seq:
                return []  # already applied (a replay overlapping the live stream)
            self.seq = seq
            return self._add(*delta_part(event))
        if kind == "done" and event.get("gen") == self.gen:
            msg = event.get("message") or {}
            return self._catch_up(msg) + self._finish(
                str(event.get("status", "completed")), event.get("usage"), event.get("error"))
        if kind == "snapshot":
            return self._snapshot(event)
        return []

    # -- internals ----------------------------------------------------------------------

    def _snapshot(self, snap: dict[str, Any]) -> list[Chunk]:
        active = snap.get("active")
        if active and active.get("gen") == self.gen:
            self.seq = max(self.seq, int(active.get("seq", 0)))
            return self._catch_up(active)
        for msg in snap.get("messages", ()):
            if msg.get("id") == self.message and msg.get("status") != "streaming":
                status = MESSAGE_TO_TERMINAL.get(str(msg.get("status")), "completed")
                error = {"message": "the answer failed"} if status == "error" else None
                return self._catch_up(msg) + self._finish(status, msg.get("usage"), error)
        # The generation is over, yet its message is not on the snapshot's page (or a newer
        # generation continues it): end here rather than wait for a done that has passed.
        return self._finish("interrupted", None, None)

    def _catch_up(self, state: dict[str, Any]) -> list[Chunk]:
        """Whatever of the message's reasoning and text has not been emitted yet."""
        out = self._rest(REASONING, state.get("reasoning"))
        return out + self._rest(TEXT, state.get("content"))

    def _rest(self, part: str, whole: Any) -> list[Chunk]:
        if not isinstance(whole, str) or len(whole) <= self.emitted[part]:
            return []
        return self._add(part, whole[self.emitted[part]:])

    def _add(self, part: str, text: str) -> list[Chunk]:
        if not text:
            return []
        out: list[Chunk] = []
        if self._open != part:
            out += self._close()
            self._parts += 1
            self._open = part
            out.append({"type": f"{part}-start", "id": self._part_id()})
        out.append({"type": f"{part}-delta", "id": self._part_id(), "delta": text})
        self.emitted[part] += len(text)
        return out

    def _part_id(self) -> str:
        return f"{self._open}-{self._parts}"

    def _close(self) -> list[Chunk]:
        if self._open is None:
            return []
        chunk = {"type": f"{self._open}-end", "id": self._part_id()}
        self._open = None
        return [chunk]

    def _finish(self, status: str, usage: Any, error: Any) -> list[Chunk]:
        self.finished = True
        meta: dict[str, Any] = {"status": status}
        if usage:
            meta["usage"] = usage
        if isinstance(error, dict) and error:
            meta["error"] = {k: error[k] for k in ("code", "message") if k in error}
        out = [*self._close(), {"type": "message-metadata", "messageMetadata": meta},
               {"type": "finish-step"}]
        if status == "stopped":
            # What `ai` itself streams when a generation is aborted (and no `finish`).
            return [*out, {"type": "abort", "reason": "stopped"}]
        if status == "error":
            text = error.get("message") if isinstance(error, dict) else None
            out.append({"type": "error", "errorText": str(text or "the answer failed")})
        reason = FINISH_REASONS.get(status, "other")
        if status == "interrupted" and self.interrupted_reason:
            reason = "interrupted"
        return [*out, {"type": "finish", "finishReason": reason}]


# -- history as UIMessages ------------------------------------------------------------------

def ui_message(msg: dict[str, Any]) -> dict[str, Any]:
    """A chatcast message (as `message_dict` shows it) as the `UIMessage` an AI SDK app
    keeps: a user message under the id its client gave it (`client_msg_id`), an answer
    under its chatcast id (the `messageId` its stream had), the same parts its stream
    built, and chatcast's ids, status and usage as metadata (the status in the words the
    stream's metadata uses: `streaming`, `completed`, `stopped`, `error`, `interrupted`)."""
    role = str(msg.get("role"))
    content = str(msg.get("content") or "")
    streaming = msg.get("status") == "streaming"
    parts: list[dict[str, Any]] = []
    if role == "assistant":
        parts.append({"type": "step-start"})
        reasoning = msg.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            still = streaming and not content  # still thinking
            parts.append({"type": "reasoning", "text": reasoning,
                          "state": "streaming" if still else "done"})
    if content or role != "assistant":
        text_part: dict[str, Any] = {"type": "text", "text": content}
        if role == "assistant":
            text_part["state"] = "streaming" if streaming else "done"
        parts.append(text_part)
    ui_id = msg.get("client_msg_id") if role == "user" and msg.get("client_msg_id") \
        else msg.get("id")
    status = msg.get("status")
    meta: dict[str, Any] = {"chat": msg.get("chat"), "id": msg.get("id"),
                            "gen": msg.get("gen"),
                            "status": MESSAGE_TO_TERMINAL.get(str(status), status),
                            "created_at": msg.get("created_at")}
    if msg.get("usage"):
        meta["usage"] = msg["usage"]
    for when in ("reasoning_started_at", "reasoning_ended_at"):  # "Thought for N s"
        if msg.get(when):
            meta[when] = msg[when]
    return {"id": ui_id, "role": role, "parts": parts, "metadata": meta}


def ui_history(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A page of chatcast's history as `UIMessage`s. Of several answers to one question
    (regenerated), only the newest: what the page showed, and what the model sees."""
    kept = [m for i, m in enumerate(messages)
            if not (m.get("role") == "assistant" and i + 1 < len(messages)
                    and messages[i + 1].get("role") == "assistant")]
    return [ui_message(m) for m in kept]
