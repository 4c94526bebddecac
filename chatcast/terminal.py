"""`chatcast chat [URL]`: a chat in the terminal, on `chatcast.client`.

Answers stream as rendered markdown (rich), the model's reasoning dimmed above them.
Ctrl-C while an answer streams stops it (on the server, for every tab); Ctrl-C at the
prompt, or a second one while stopping, quits. A dropped connection shows `reconnecting…`
and the answer goes on where it left off (the client resumes from its cursor).

Like the browser UI it needs no account on a server in anonymous mode: the first request
gets a session cookie. `--token` (or `CHATCAST_TOKEN`) sends an API token or JWT instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import signal
import threading
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, TypeVar

import httpx
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markdown import Markdown
from rich.text import Text

from chatcast.client import Client as ChatClient
from chatcast.client import (
    ClientClosed,
    ConnectionChanged,
    Done,
    ReasoningDelta,
    Reply,
    ServerError,
    TextDelta,
    connect,
)

_T = TypeVar("_T")

HELP = """\
/new            start a new chat
/chats          list your chats
/open ID        switch to a chat (its last messages are shown)
/regen          a new answer to your last message
/continue       continue the last answer (after a stop)
/help           this list
/quit           leave (or Ctrl-D; Ctrl-C at the prompt)
Ctrl-C while an answer streams stops it."""


class _LineReader:
    """`input()` in a daemon thread, one line per request: the event loop stays free to
    handle signals, and quitting never waits for a line the user will not type."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.requests: queue.SimpleQueue[tuple[str, asyncio.Future[str | None]]] = \
            queue.SimpleQueue()
        threading.Thread(target=self._work, name="chatcast-input", daemon=True).start()

    def _work(self) -> None:
        while True:
            prompt, future = self.requests.get()
            try:
                line: str | None = input(prompt)
            except (EOFError, OSError, ValueError):
                line = None
            self.loop.call_soon_threadsafe(_resolve, future, line)

    def read(self, prompt: str) -> asyncio.Future[str | None]:
        future: asyncio.Future[str | None] = self.loop.create_future()
        self.requests.put((prompt, future))
        return future


def _resolve(future: asyncio.Future[str | None], line: str | None) -> None:
    if not future.done():
        future.set_result(line)


class TerminalChat:
    def __init__(self, client: ChatClient, console: Console, *, chat: str | None = None,
                 model: str | None = None) -> None:
        self.client = client
        self.console = console
        self.chat = chat
        self.model = model
        self.quit = asyncio.Event()
        self.reply: Reply | None = None
        self.stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()
        # What the streaming answer shows.
        self.text = ""
        self.reasoning = ""
        self.status = ""

    # -- Ctrl-C ---------------------------------------------------------------------------

    def on_interrupt(self) -> None:
        """First Ctrl-C during an answer: stop it. Otherwise (or again): quit."""
        if self.reply is None or self.stopping:
            self.quit.set()
            return
        self.stopping = True
        self.status = "stopping… (Ctrl-C again quits)"
        self._spawn(self._stop(self.reply))

    async def _stop(self, reply: Reply) -> None:
        with contextlib.suppress(ServerError, ClientClosed, TimeoutError):
            await self.client.stop(reply.chat, gen=reply.gen)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _until_quit(self, future: asyncio.Future[_T]) -> _T | None:
        """`future`'s result, or None if the user quits first (it is then cancelled)."""
        quitting = asyncio.ensure_future(self.quit.wait())
        both: list[asyncio.Future[Any]] = [future, quitting]
        try:
            await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
        finally:
            quitting.cancel()
        if future.done():
            return future.result()
        future.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await future
        return None

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> int:
        reader = _LineReader(asyncio.get_running_loop())
        where = f"chat {self.chat}" if self.chat else "a new chat"
        self.console.print(Text(f"chatcast · {self.client.url} · {where} · /help for "
                                "commands, Ctrl-C stops an answer", style="dim"))
        if self.chat:
            await self._show_history()
        while not self.quit.is_set():
            line = await self._until_quit(reader.read("> "))
            if line is None:
                break
            try:
                if not await self._handle(line.strip()):
                    break
            except ServerError as exc:
                self.console.print(Text(f"[{exc.wire_code}] {exc.message}", style="red"))
            except (httpx.HTTPError, ConnectionError, TimeoutError) as exc:
                self.console.print(Text(f"connection: {exc.__class__.__name__} {exc}",
                                        style="red"))
        self.console.print("[dim]bye[/dim]")
        return 0

    async def _handle(self, line: str) -> bool:
        """One line typed at the prompt; False to quit."""
        if line.startswith("/"):
            return await self._command(line)
        if line:
            if self.chat is None:
                self.chat = (await self.client.create_chat(line[:60], model=self.model)).id
            await self._stream(functools.partial(self.client.send, content=line))
        return True

    async def _command(self, line: str) -> bool:
        """Carry out a `/command`; False to quit."""
        name, _, arg = line.partition(" ")
        if name in ("/quit", "/exit", "/q"):
            return False
        if name == "/help":
            self.console.print(HELP, markup=False, highlight=False)
        elif name == "/new":
            self.chat = None
            self.console.print("[dim]new chat: it is created with your next message[/dim]")
        elif name == "/chats":
            chats = await self.client.chats()
            for c in chats:
                mark = "•" if c.id == self.chat else " "
                self.console.print(f"{mark} {c.id}  {c.title or '(untitled)'}", markup=False)
            if not chats:
                self.console.print("[dim]no chats yet[/dim]")
        elif name == "/open" and arg.strip():
            self.chat = arg.strip()
            await self._show_history()
        elif name in ("/regen", "/continue") and self.chat:
            await self._again(name)
        else:
            self.console.print(Text(f"unknown command {name} (or nothing to do); /help",
                                    style="dim"))
        return True

    async def _again(self, name: str) -> None:
        assert self.chat is not None
        if name == "/regen":
            await self._stream(self.client.regenerate)
            return
        answers = [m for m in await self.client.messages(self.chat, limit=5)
                   if m.get("role") == "assistant" and m.get("gen")]
        if not answers or answers[-1].get("status") not in ("stopped", "interrupted"):
            self.console.print("[dim]the last answer is not stopped; nothing to continue[/dim]")
            return
        gen = str(answers[-1]["gen"])
        self.console.print(Markdown(str(answers[-1].get("content") or "")))
        await self._stream(lambda chat: self.client.continue_generation(chat, gen))

    async def _show_history(self) -> None:
        assert self.chat is not None
        try:
            rows = await self.client.messages(self.chat, limit=6)
        except ServerError as exc:
            self.console.print(Text(exc.message, style="red"))
            self.chat = None
            return
        for m in rows:
            if m.get("role") == "user":
                self.console.print(Text("> " + str(m.get("content") or ""), style="bold"))
            else:
                self.console.print(Markdown(str(m.get("content") or "")))

    # -- one answer -----------------------------------------------------------------------

    def _view(self) -> RenderableType:
        parts: list[RenderableType] = []
        if self.reasoning:
            parts.append(Markdown(self.reasoning, style="dim italic"))
        if self.text:
            parts.append(Markdown(self.text))
        if self.status:
            parts.append(Text(self.status, style="dim"))
        return Group(*parts)

    async def _stream(self, start: Callable[[str], Reply]) -> None:
        assert self.chat is not None
        self.text, self.reasoning, self.status, self.stopping = "", "", "…", False
        self.reply = start(self.chat)
        ending = ""
        try:
            with Live(self._view(), console=self.console, refresh_per_second=8,
                      transient=True, vertical_overflow="ellipsis") as live:
                ending = await self._until_quit(
                    asyncio.ensure_future(self._consume(self.reply, live))) or ""
        except ServerError as exc:
            ending = f"[{exc.wire_code}] {exc.message}"
        except (ClientClosed, ConnectionError, TimeoutError) as exc:
            ending = f"connection: {exc}"
        finally:
            self.reply = None
        self.status = ending
        self.console.print(self._view())

    async def _consume(self, reply: Reply, live: Live) -> str:
        """Apply the answer's events to the view; what to say at its end."""
        async for event in reply:
            if isinstance(event, TextDelta):
                self.text += event.text
                if not self.stopping:
                    self.status = ""
            elif isinstance(event, ReasoningDelta):
                self.reasoning += event.text
                if not self.stopping:
                    self.status = "thinking…"
            elif isinstance(event, ConnectionChanged):
                if event.state == "reconnecting":
                    self.status = f"reconnecting… ({event.detail})"
                elif not self.stopping:
                    self.status = ""
            elif isinstance(event, Done):
                self.text, self.reasoning = event.text, event.reasoning
                live.update(self._view())
                return _ending(event)
            live.update(self._view())
        return ""


def _thought_for(message: dict[str, Any]) -> str:
    """The "thought for N s" note, from the message's reasoning times (as the browser UI)."""
    try:
        began = datetime.fromisoformat(str(message["reasoning_started_at"]))
        ended = datetime.fromisoformat(str(message["reasoning_ended_at"]))
    except (KeyError, ValueError):
        return ""
    seconds = (ended - began).total_seconds()
    return f"(thought for {seconds:.0f} s)" if seconds >= 0 else ""


def _ending(done: Done) -> str:
    words = {"completed": "", "stopped": "[stopped]", "interrupted": "[interrupted]"}
    ending = words.get(done.status, f"[{done.status}]")
    if done.reasoning:
        ending = f"{_thought_for(done.message)} {ending}"
    if done.error:
        ending += f" {done.error.get('message', '')}"
    if not done.verified:
        ending += " (the streamed copy did not match; showing the stored answer)"
    return ending.strip()


async def _main(url: str, *, token: str | None, chat: str | None, model: str | None,
                console: Console) -> int:
    client = connect(url, token=token)
    try:
        await client.open()  # (closes what it opened when it fails)
    except ServerError as exc:
        console.print(Text(f"chatcast: {url} refused: {exc.message}", style="red"))
        return 1
    except (httpx.HTTPError, OSError, TimeoutError, ConnectionError, ValueError) as exc:
        console.print(Text(f"chatcast: cannot reach {url} ({exc.__class__.__name__}: {exc}); "
                           "is the server running (scripts/serve)?", style="red"))
        return 1
    app = TerminalChat(client, console, chat=chat, model=model)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, app.on_interrupt)
    try:
        return await app.run()
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        await client.close()


def run(url: str, *, token: str | None = None, chat: str | None = None,
        model: str | None = None) -> int:
    """The `chatcast chat` command; its exit code."""
    # The client's own warnings (a repaired copy, a reconnect) are shown in the view.
    client_log = logging.getLogger("chatcast.client")
    client_log.addHandler(logging.NullHandler())
    client_log.propagate = False
    if "://" not in url:  # `chatcast chat localhost:8000`
        url = f"http://{url}"
    console = Console(highlight=False)
    return asyncio.run(_main(url, token=token, chat=chat, model=model, console=console))
