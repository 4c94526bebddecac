"""What the host application learns when an answer ends: in-process hooks and the webhook.

The runner tells `Hooks.ended` of every generation it ended, after the final message is in
SQL and its `done` is published (so a hook that reads the chat through the API sees it
ended); so does the sweep of the process that ends a dead process's generation
(`interrupted`), so that ending is heard too, once, where it happened. Hooks run in tasks of
their own: a slow or failing hook never delays a stream or the next answer; its exceptions
are logged and counted (`chatcast_hook_errors_total`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from chatcast.server import metrics
from chatcast.server.webhooks import Webhook
from chatcast.store.models import Generation

log = logging.getLogger("chatcast.hooks")


@dataclass(frozen=True, slots=True)
class AnswerEnded:
    """An answer that ended: `status` is `completed`, `stopped` (a user asked),
    `interrupted` (the server shut down, or another process took it for dead) or `error`.
    `message` is the final answer message as clients see it (content, reasoning,
    metadata, usage, status)."""

    status: str
    generation_id: str
    chat_id: str
    user_id: str
    message_id: str
    provider: str
    model: str
    message: dict[str, Any]
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @property
    def content(self) -> str:
        """The answer's final text."""
        text: str = self.message.get("content") or ""
        return text

    @property
    def event_type(self) -> str:
        """The webhook's event name: `answer.<status>`."""
        return f"answer.{self.status}"

    def payload(self) -> dict[str, Any]:
        """The webhook's JSON body."""
        return {"type": self.event_type, "id": self.generation_id,
                "created": int(time.time()),
                "data": {"status": self.status, "generation_id": self.generation_id,
                         "chat_id": self.chat_id, "user_id": self.user_id,
                         "message_id": self.message_id, "provider": self.provider,
                         "model": self.model, "message": self.message, "usage": self.usage,
                         "error": self.error}}


#: What the runner and the sweep call when they ended a generation (must not wait):
#: (generation, status, final message, usage, error).
EndHook = Callable[[Generation, str, dict[str, Any], dict[str, Any] | None,
                    dict[str, Any] | None], None]


def no_hook(gen: Generation, status: str, message: dict[str, Any],
            usage: dict[str, Any] | None, error: dict[str, Any] | None) -> None:
    """The EndHook of a process nobody listens to."""


#: An in-process hook: a function or a coroutine function taking the ended answer.
AnswerHook = Callable[[AnswerEnded], Awaitable[None] | None]


class Hooks:
    """`on_done` hears of completed answers; `on_stopped` of stopped and interrupted ones;
    `on_error` of failed ones. Each may be None."""

    def __init__(self, *, on_done: AnswerHook | None = None,
                 on_stopped: AnswerHook | None = None, on_error: AnswerHook | None = None,
                 webhook: Webhook | None = None) -> None:
        self.by_status: dict[str, AnswerHook] = {}
        for statuses, hook in ((("completed",), on_done),
                               (("stopped", "interrupted"), on_stopped),
                               (("error",), on_error)):
            if hook is not None:
                if not callable(hook):
                    raise TypeError(f"a hook must be callable, not {type(hook).__name__}")
                self.by_status.update(dict.fromkeys(statuses, hook))
        self.webhook = webhook
        self._tasks: set[asyncio.Task[None]] = set()

    def ended(self, gen: Generation, status: str, message: dict[str, Any],
              usage: dict[str, Any] | None, error: dict[str, Any] | None) -> None:
        """Runner callback (never waits): run the hook for `status`, queue the webhook."""
        hook = self.by_status.get(status)
        if hook is None and self.webhook is None:
            return
        event = AnswerEnded(status, gen.id, gen.chat_id, gen.user_id, gen.message_id,
                            message.get("provider") or gen.provider,
                            message.get("model") or gen.model, message, usage, error)
        if hook is not None:
            task = asyncio.get_running_loop().create_task(self._run(hook, event),
                                                          name=f"hook-{gen.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self.webhook is not None:
            self.webhook.enqueue(event.event_type, gen.id, event.payload())

    async def _run(self, hook: AnswerHook, event: AnswerEnded) -> None:
        try:
            result = hook(event)
            if inspect.isawaitable(result):
                await result
        except Exception:
            metrics.HOOK_ERRORS.inc()
            log.exception("answer hook failed", extra={"gen": event.generation_id,
                                                       "status": event.status})

    async def close(self, grace_s: float) -> None:
        """Let running hooks and queued webhook deliveries finish within `grace_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)
            for task in list(self._tasks):
                task.cancel()
        if self.webhook is not None:
            await self.webhook.close(max(deadline - loop.time(), 0.0))
