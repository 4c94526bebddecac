"""The offline demo model: deterministic, markdown-rich, paced by an absolute schedule."""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from collections.abc import AsyncIterator

from chatcast.providers.base import ChatMessage, Chunk, StreamParams, Usage
from chatcast.providers.think import ThinkSplitter, ThinkTags

THINKING_MODEL = "demo-thinking"
THINK_PREFIX = "think:"
#: `pace:<R> <prompt>`: `<prompt>` answered at R tokens/s, whatever the provider's rate (a
#: benchmark drives many answers at different speeds through one server).
PACE_PREFIX = "pace:"
_TOKEN = re.compile(r"\S+\s*|\s+")

_TOPICS = ["streaming", "back-pressure", "reconnects", "cursors", "fan-out", "idempotency"]
_LANGS = [
    ("python", "async def stream(chat):\n    async for delta in chat:\n"
               "        print(delta, end=\"\")"),
    ("javascript", "const ws = new WebSocket(url);\n"
                   "ws.onmessage = (e) => render(JSON.parse(e.data));"),
    ("sql", "SELECT id, status FROM generation\n WHERE status = 'active'\n ORDER BY started_at;"),
]
_SENTENCES = (
    "Every chunk of an answer gets a position, so a tab that reconnects asks for exactly "
    "what it missed.",
    "The answer belongs to the server, not to the socket: closing the tab does not stop it.",
    "A slow tab gets fewer, larger frames instead of slowing everybody else down.",
    "Stop travels back up the same socket and reaches the process that owns the answer.",
    "Partial text is written to the database about once a second, so a crash loses little.",
    "When the last chunk arrives, its length and checksum let every tab verify its copy.",
    "Two tabs of the same browser share one identity and see the same chats live.",
    "If WebSockets are blocked, the same events arrive over Server-Sent Events or polling.",
    "A cursor the server can no longer replay is answered with a fresh snapshot.",
    "Retries happen before the first token only; after that, nothing restarts silently.",
)


_MUSINGS = (
    "The question is about {topic}, so the answer should start from what a client sees.",
    "A cursor is a pair (gen, seq); resuming from it must give *exactly* the rest.",
    "Should I mention `done.sha256`? Yes: it is how a tab proves its copy is exact.",
    "Stop has to reach the process that owns the answer, wherever the tab is connected.",
    "Reconnects are the interesting case: no duplicate, no hole.",
    "A short example in code will help; keep the prose brief.",
    "Markdown renders in the browser, so inline HTML must stay text.",
)


def compose_reasoning(prompt: str, *, max_tokens: int | None = None) -> list[str]:
    """The demo model's reasoning before it answers `prompt` (thinking mode), as tokens.
    Same prompt → same reasoning."""
    rng = random.Random(hashlib.sha256(b"think:" + prompt.encode()).digest())
    topic = rng.choice(_TOPICS)
    picked = [m.format(topic=topic) for m in rng.sample(_MUSINGS, 4)]
    text = (f"**Thinking about {topic}.** {picked[0]}\n\n- {picked[1]}\n- {picked[2]}\n\n"
            f"{picked[3]}")
    tokens = _TOKEN.findall(text)
    return tokens[:max_tokens] if max_tokens is not None else tokens


def compose_reply(prompt: str, *, max_tokens: int | None = None) -> list[str]:
    """The reply to `prompt` as a list of tokens (words with their trailing space, markdown
    punctuation kept with them). Same prompt → same reply.

    A prompt starting with `echo:` is answered with its own text verbatim, which lets tests
    push arbitrary model output (e.g. XSS payloads) through the whole pipeline.
    `count:<N> <tag>` is answered with the N words `<tag>w0 <tag>w1 …`: a long answer known
    in advance from a short prompt (a benchmark's load)."""
    if prompt.startswith("echo:"):
        tokens = _TOKEN.findall(prompt[5:].lstrip())
    elif prompt.startswith("count:") and prompt[6:].split(" ", 1)[0].isdigit():
        n, _, tag = prompt[6:].partition(" ")
        tokens = _TOKEN.findall(" ".join(f"{tag.strip()}w{k}" for k in range(int(n))))
    else:
        rng = random.Random(hashlib.sha256(prompt.encode()).digest())
        topic = rng.choice(_TOPICS)
        lang, code = rng.choice(_LANGS)
        quoted = prompt.strip().replace("\n", " ")[:80]
        picked = rng.sample(_SENTENCES, 5)
        paragraphs = [" ".join(picked[:3]), " ".join(picked[3:])]
        text = (
            f"## On {topic}\n\nYou asked: *{quoted}*. Here is a short answer in **markdown**.\n\n"
            f"{paragraphs[0]}\n\n"
            f"- first, **subscribe** with your cursor\n- then apply each `delta` once\n"
            f"- finally check `done.sha256`\n\n"
            f"```{lang}\n{code}\n```\n\n"
            "| step | what happens |\n|---|---|\n| send | a generation starts |\n"
            "| stop | it ends everywhere |\n\n"
            f"{paragraphs[1]} Inline HTML such as <b>bold</b> or <script>alert(1)</script> is "
            "shown as text, and [a link](https://example.com) stays a link.\n"
        )
        tokens = _TOKEN.findall(text)
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    return tokens


class DemoProvider:
    """Streams `compose_reply(last user message)` at `tokens_per_s`. Chunk k is due at
    start + k / rate, so the rate holds under load and lateness is measurable.

    Thinking mode (model `demo-thinking`, or a prompt starting with `think:`) streams
    `compose_reasoning` as reasoning first. An `echo:` prompt may carry reasoning of its own
    between `<think>` and `</think>`, split out as a reasoning model's server would."""

    name = "demo"
    default_model = "demo-1"

    def __init__(self, tokens_per_s: float = 40.0, max_tokens: int | None = None) -> None:
        self.tokens_per_s = tokens_per_s
        self.max_tokens = max_tokens

    async def stream(self, messages: list[ChatMessage], *, model: str,
                     params: StreamParams) -> AsyncIterator[Chunk]:
        prompt = next((m.content for m in reversed(messages) if m.role == "user"), "")
        rate, prompt = _paced(prompt, self.tokens_per_s)
        limit = params.max_tokens or self.max_tokens
        chunks = self._plan(prompt, model, limit)
        if messages and messages[-1].role == "assistant":  # continue: only what is missing
            # The answer had begun: its reasoning is over; go on with the text.
            chunks = [Chunk(text=t) for t in
                      _remaining([c.text for c in chunks if c.text], messages[-1].content)]
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for k, chunk in enumerate(chunks):
            due = t0 + k / rate if rate > 0 else t0
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            yield chunk
        prompt_tokens = sum(len(m.content.split()) for m in messages)
        reasoning = sum(1 for c in chunks if c.reasoning)
        yield Chunk(usage=Usage(input_tokens=prompt_tokens, output_tokens=len(chunks),
                                reasoning_tokens=reasoning if reasoning else None))

    def _plan(self, prompt: str, model: str, limit: int | None) -> list[Chunk]:
        """The chunks of the whole answer, reasoning first."""
        thinking = model == THINKING_MODEL or prompt.startswith(THINK_PREFIX)
        if thinking and prompt.startswith(THINK_PREFIX):
            prompt = prompt[len(THINK_PREFIX):].lstrip()
        tokens = compose_reply(prompt, max_tokens=limit)
        if prompt.startswith("echo:"):
            return _split_echo(tokens)
        plan = [Chunk(reasoning=t) for t in compose_reasoning(prompt)] if thinking else []
        plan += [Chunk(text=t) for t in tokens]
        return plan[:limit] if limit is not None else plan

    async def aclose(self) -> None:
        return None


def _paced(prompt: str, default: float) -> tuple[float, str]:
    """The rate a `pace:<R> ` prompt asks for (else `default`) and the prompt without it."""
    if prompt.startswith(PACE_PREFIX):
        head, _, rest = prompt[len(PACE_PREFIX):].partition(" ")
        try:
            return float(head), rest
        except ValueError:
            pass
    return default, prompt


def _split_echo(tokens: list[str]) -> list[Chunk]:
    splitter = ThinkSplitter(ThinkTags())
    out = []
    for token in tokens:
        reasoning, text = splitter.feed(token)
        if reasoning or text:
            out.append(Chunk(text=text, reasoning=reasoning))
    reasoning, text = splitter.flush()
    if reasoning or text:
        out.append(Chunk(text=text, reasoning=reasoning))
    return out


def _remaining(tokens: list[str], partial: str) -> list[str]:
    """For `continue`: the tokens of the full reply that come after `partial`."""
    full = "".join(tokens)
    if full.startswith(partial):
        rest = full[len(partial):]
        return _TOKEN.findall(rest)
    return tokens
