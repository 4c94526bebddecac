"""The load generator: many tabs (raw WebSocket clients) in one asyncio process.

A *run* opens `gens` chats with `tabs` sockets each (spread over the server's processes:
tab j of a chat goes to process j mod P), subscribes every tab, then sends one message per
chat whose answer is known in advance: the demo model answers `echo:<text>` with `<text>`
verbatim, one word per token, chunk k due at t0 + k/R. Every tab assembles what it gets
(a delta is applied only if its seq is above the tab's cursor, so duplicates are counted,
not applied) and at `done` the assembled text must equal the expected text and
`done.sha256`.

In the measurement window (after a warm-up) it counts delivered frames and tokens, and per
frame:
- latency = receive time - `ts` of the oldest chunk in the frame (the server's time.time()
  when the provider emitted it; CHATCAST_DEMO_TIMESTAMPS, and the baseline, add it);
- lateness = receive time - the chunk's due time on the demo's absolute schedule, with t0
  estimated per generation as the earliest (receive - (k-1)/R): it also sees a producer
  that fell behind its schedule (which `ts` cannot), so it decides saturation.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from benchmarks.wsclient import WSClient, connect

_rids = itertools.count(1)


def expected_text(chat_index: int, tokens: int) -> str:
    return " ".join(f"c{chat_index}w{k}" for k in range(tokens))


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]


@dataclass
class Window:
    start: float = float("inf")
    end: float = float("inf")
    frames: int = 0
    tokens: int = 0
    latency_ms: list[float] = field(default_factory=list)
    # (gen, receive time, first token index of the frame) for lateness, computed at the end
    frames_at: list[tuple[str, float, int]] = field(default_factory=list)
    t0: dict[str, float] = field(default_factory=dict)  # gen -> earliest receive - k/R


class Tab:
    """One browser tab: one socket, the chats it watches, what it assembled."""

    def __init__(self, window: Window, rate: float) -> None:
        self.window = window
        self.rate = rate
        self.client: WSClient | None = None
        self.replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.parts: dict[str, list[str]] = {}
        self.last: dict[str, int] = {}
        self.token: dict[str, int] = {}  # gen -> index of the last token received
        self.first_at: dict[str, float] = {}  # gen -> when its first delta arrived
        self.chat_gen: dict[str, str] = {}
        self.done: dict[str, dict[str, Any]] = {}
        self.done_waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.duplicates = 0
        self.frames = 0
        self.errors: list[dict[str, Any]] = []

    def on_text(self, payload: bytes, now: float) -> None:
        ev: dict[str, Any] = orjson.loads(payload)
        kind = ev.get("type")
        self.frames += 1
        if kind == "delta":
            gen, seq = ev["gen"], ev["seq"]
            last = self.last.get(gen, 0)
            if seq <= last:
                self.duplicates += 1
                return
            if not last:
                self.first_at[gen] = now
            text = ev["text"]
            self.parts.setdefault(gen, []).append(text)
            self.last[gen] = seq
            # Tokens are the words "c<i>w<k>": the frame's last word tells how many provider
            # tokens it carries, however many a server merged into one delta.
            before = self.token.get(gen, -1)
            try:
                word = text.rstrip().rsplit(" ", 1)[-1]
                k = int(word[word.rindex("w") + 1:])
            except ValueError:
                k = before + seq - last
            self.token[gen] = k
            w = self.window
            first = before + 1  # the frame's first token: due at t0 + first / R
            t0 = now - first / self.rate
            if t0 < w.t0.get(gen, float("inf")):
                w.t0[gen] = t0
            if w.start <= now <= w.end:
                w.frames += 1
                w.tokens += k - before
                ts = ev.get("ts")
                if ts is not None:
                    w.latency_ms.append((now - ts) * 1000)
                w.frames_at.append((gen, now, first))
        elif kind == "start":
            self.chat_gen[ev["chat"]] = ev["gen"]
        elif kind == "done":
            self.done[ev["gen"]] = ev
            self.chat_gen.setdefault(ev["chat"], ev["gen"])
            waiter = self.done_waiters.pop(ev["chat"], None)
            if waiter is not None and not waiter.done():
                waiter.set_result(ev)
        elif kind in ("ack", "error"):
            if kind == "error":
                self.errors.append(ev)
            fut = self.replies.pop(str(ev.get("rid")), None)
            if fut is not None and not fut.done():
                fut.set_result(ev)

    async def open(self, host: str, port: int, cookie: str | None,
                   rcvbuf: int | None = None) -> None:
        headers = {"Cookie": cookie} if cookie else None
        self.client = await connect(host, port, "/ws", self.on_text, headers=headers,
                                    rcvbuf=rcvbuf)

    def request(self, msg: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        assert self.client is not None
        rid = f"r{next(_rids)}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies[rid] = fut
        self.client.send(orjson.dumps({**msg, "rid": rid}))
        return fut

    async def call(self, msg: dict[str, Any], limit_s: float = 60.0) -> dict[str, Any]:
        async with asyncio.timeout(limit_s):
            reply = await self.request(msg)
        if reply["type"] == "error":
            raise RuntimeError(f"{msg['type']} refused: {reply}")
        return reply

    def wait_done(self, chat: str) -> asyncio.Future[dict[str, Any]]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        gen = self.chat_gen.get(chat)
        if gen is not None and gen in self.done:
            fut.set_result(self.done[gen])
        else:
            self.done_waiters[chat] = fut
        return fut

    def assembled(self, gen: str) -> str:
        return "".join(self.parts.get(gen, []))

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


class Target:
    """How to reach one system under test: chatcast (HTTP chats, cookie) or the baseline."""

    def __init__(self, kind: str, ports: list[int], host: str = "127.0.0.1") -> None:
        self.kind = kind
        self.ports = ports
        self.host = host
        self.cookie: str | None = None
        self._chat_ids = itertools.count(1)

    async def new_chats(self, n: int) -> list[str]:
        if self.kind == "baseline":
            return [f"chat{next(self._chat_ids)}" for _ in range(n)]
        base = f"http://{self.host}:{self.ports[0]}"
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            if self.cookie is None:
                r = await http.post("/api/chats", json={})
                r.raise_for_status()
                self.cookie = r.headers["set-cookie"].split(";")[0]
                first = [r.json()["id"]]
            else:
                first = []
            sem = asyncio.Semaphore(16)

            async def one() -> str:
                async with sem:
                    r = await http.post("/api/chats", json={},
                                        headers={"Cookie": self.cookie or ""})
                    r.raise_for_status()
                    return str(r.json()["id"])

            return first + list(await asyncio.gather(*(one() for _ in range(n - len(first)))))


async def gather_limited(coros: list[Awaitable[Any]], limit: int) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def run(c: Awaitable[Any]) -> Any:
        async with sem:
            return await c

    return list(await asyncio.gather(*(run(c) for c in coros)))


@dataclass
class RunResult:
    gens: int
    tabs: int
    rate: float
    window_s: float
    frames: int
    tokens: int
    frames_per_s: float
    tokens_per_s: float
    latency_ms: dict[str, float]
    lateness_ms: dict[str, float]
    server_cpu_s: float
    server_cpu_util: float
    cpu_us_per_frame: float
    cpu_us_per_token: float
    loadgen_cpu_util: float
    correct: bool
    completed: int
    problems: list[str]
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def summary(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan"), "n": 0}
    return {"p50": round(percentile(xs, 50), 2), "p99": round(percentile(xs, 99), 2),
            "max": round(max(xs), 2), "n": len(xs)}


async def fanout_run(target: Target, cpu_of_server: Callable[[], float], *, gens: int,
                     tabs: int, rate: float, **kw: Any) -> RunResult:
    """`_fanout_run` with this process's garbage collector out of the way: a full pass over
    what earlier runs left (hundreds of thousands of objects) stalls the load generator for
    100 ms or more, and every frame it receives meanwhile would count as late."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        return await _fanout_run(target, cpu_of_server, gens=gens, tabs=tabs, rate=rate, **kw)
    finally:
        gc.enable()
        gc.unfreeze()


async def _fanout_run(target: Target, cpu_of_server: Callable[[], float], *, gens: int,
                     tabs: int, rate: float, warmup_s: float = 1.5, window_s: float = 5.0,
                     stagger_s: float = 1.0, connect_limit: int = 64,
                     slow_tab: Callable[[], int] | None = None,
                     drain_timeout_s: float = 30.0, same_lengths: bool = False,
                     side_cpu: dict[str, Callable[[], float]] | None = None,
                     window_cm: Callable[[], AbstractAsyncContextManager[Any]] | None = None
                     ) -> RunResult:
    """One fan-out run (see the module docstring).

    `side_cpu` names other CPU-second counters read at the window's ends like the server's
    (e.g. the redis-server processes): `extra["side_cpu"]` gets each one's seconds, share
    of one core and µs per delivered frame over the window. With `window_cm`, the
    measurement window runs inside it (a profiler, entered just before the window opens).

    With `slow_tab` (a function giving the server's resident memory), one more tab watches
    every chat of the run through a small receive buffer and stops reading when the window
    opens; the run records the server's memory meanwhile and how that tab was closed."""
    loop = asyncio.get_running_loop()
    chats = await target.new_chats(gens)
    window = Window()
    # Every generation streams through the whole window and ends 0.2 s after it closes: one
    # sent later in the stagger is shorter by as much (the run has no tail of its own). With
    # `same_lengths` every one is as long as the first, the last ending `stagger_s` later.
    counts = [int(rate * (stagger_s * (1 if same_lengths else 1 - i / max(gens, 1))
                          + warmup_s + window_s + 0.2)) + 1 for i in range(gens)]
    texts = [expected_text(i, n) for i, n in enumerate(counts)]
    groups: list[list[Tab]] = [[Tab(window, rate) for _ in range(tabs)] for _ in chats]
    all_tabs = [t for g in groups for t in g]

    async def open_and_subscribe(tab: Tab, chat: str, j: int) -> None:
        await tab.open(target.host, target.ports[j % len(target.ports)], target.cookie)
        await tab.call({"type": "subscribe", "chat": chat})

    await gather_limited([open_and_subscribe(tab, chat, j)
                          for chat, group in zip(chats, groups, strict=True)
                          for j, tab in enumerate(group)], connect_limit)
    slow: Tab | None = None
    if slow_tab is not None:
        slow = Tab(Window(), rate)
        await slow.open(target.host, target.ports[0], target.cookie, rcvbuf=4096)
        for chat in chats:
            await slow.call({"type": "subscribe", "chat": chat})
    dones = [[tab.wait_done(chat) for tab in group]
             for chat, group in zip(chats, groups, strict=True)]

    t_send = loop.time()
    wall_send = time.time()
    acks: list[asyncio.Future[dict[str, Any]]] = []
    for i, (chat, group) in enumerate(zip(chats, groups, strict=True)):
        delay = t_send + stagger_s * i / max(gens, 1) - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        acks.append(group[0].request({"type": "send", "chat": chat,
                                      "content": "echo:" + texts[i]}))
    window.start = wall_send + stagger_s + warmup_s
    window.end = window.start + window_s
    side = side_cpu or {}
    if window_cm is not None:  # py-spy takes ~0.3 s to attach
        await asyncio.sleep(max(0.0, window.start - 0.35 - time.time()))
    async with window_cm() if window_cm else contextlib.nullcontext():
        await asyncio.sleep(max(0.0, window.start - time.time()))
        side0 = {name: read() for name, read in side.items()}
        cpu0, lg0, w0 = cpu_of_server(), time.process_time(), time.time()
        extra: dict[str, Any] = {}
        if slow is not None and slow_tab is not None:
            extra = await _slow_consumer(slow, slow_tab, window.end)
        await asyncio.sleep(max(0.0, window.end - time.time()))
        cpu1, lg1, w1 = cpu_of_server(), time.process_time(), time.time()
        side1 = {name: read() for name, read in side.items()}
    for ack in acks:
        reply = await asyncio.wait_for(ack, drain_timeout_s)
        if reply["type"] == "error":
            raise RuntimeError(f"send refused: {reply}")

    # Drain: every generation ends by itself; an overloaded server gets a stop after a while.
    flat = [d for ds in dones for d in ds]
    waiting = [d for d in flat if not d.done()]
    if waiting:
        await asyncio.wait(waiting, timeout=drain_timeout_s)
    if any(not d.done() for d in flat):
        for chat, group in zip(chats, groups, strict=True):
            gen = group[0].chat_gen.get(chat)
            if gen is not None and gen not in group[0].done:
                group[0].request({"type": "stop", "gen": gen})
        await asyncio.wait([d for d in flat if not d.done()] or [loop.create_future()],
                           timeout=drain_timeout_s)

    problems: list[str] = []
    completed = 0
    for i, (chat, group) in enumerate(zip(chats, groups, strict=True)):
        for j, tab in enumerate(group):
            completed += check_tab(tab, chat, texts[i], f"chat {i} tab {j}", problems)
    lateness = [(now - window.t0[gen] - first / rate) * 1000
                for gen, now, first in window.frames_at]
    for tab in all_tabs:
        tab.close()
    if slow is not None:
        slow.close()
    span = w1 - w0
    cpu = cpu1 - cpu0
    extra["tokens_per_gen"] = sum(counts) / max(gens, 1)
    if side:
        extra["side_cpu"] = {
            name: {"cpu_s": round(side1[name] - side0[name], 3),
                   "util": round((side1[name] - side0[name]) / span, 3),
                   "us_per_frame": round((side1[name] - side0[name])
                                         / max(window.frames, 1) * 1e6, 2)}
            for name in side}
    return RunResult(
        gens=gens, tabs=tabs, rate=rate, window_s=round(span, 3), frames=window.frames,
        tokens=window.tokens, frames_per_s=round(window.frames / span, 1),
        tokens_per_s=round(window.tokens / span, 1), latency_ms=summary(window.latency_ms),
        lateness_ms=summary(lateness), server_cpu_s=round(cpu, 3),
        server_cpu_util=round(cpu / span, 3),
        cpu_us_per_frame=round(cpu / max(window.frames, 1) * 1e6, 2),
        cpu_us_per_token=round(cpu / max(window.tokens, 1) * 1e6, 2),
        loadgen_cpu_util=round((lg1 - lg0) / span, 3), correct=not problems,
        completed=completed, problems=problems[:10], extra=extra)


def check_tab(tab: Tab, chat: str, expected: str, name: str, problems: list[str]) -> int:
    """Whether `tab` saw one `done` for the chat and assembled exactly `expected` (if
    completed; else what `done.sha256` says), with no duplicate; 1 if it completed, else 0.
    What is wrong is added to `problems`."""
    gen = tab.chat_gen.get(chat)
    done = tab.done.get(gen) if gen else None
    if done is None:
        problems.append(f"{name}: no done")
        return 0
    text = tab.assembled(str(gen))
    if hashlib.sha256(text.encode()).hexdigest() != done["sha256"]:
        problems.append(f"{name}: assembled text != done.sha256")
    if tab.duplicates:
        problems.append(f"{name}: {tab.duplicates} duplicate deltas")
    if done["status"] != "completed":
        return 0
    if text != expected:
        problems.append(f"{name}: text differs from the expected reply")
    return 1


async def _slow_consumer(tab: Tab, rss: Callable[[], int], until: float) -> dict[str, Any]:
    """Stop reading on `tab`; sample the server's memory until `until` (and a little past
    it if the tab is still open) and note when and how the server closed the tab."""
    assert tab.client is not None
    client = tab.client
    paused_at = time.time()
    client.pause()
    samples: list[tuple[float, int]] = []
    deadline = until + 5.0
    while time.time() < deadline:
        samples.append((round(time.time() - paused_at, 2), rss()))
        if client.closed.done() and time.time() >= until:
            break
        await asyncio.sleep(0.25)
    # The close frame sits behind what the tab did not read: read again to learn its code.
    assert client.transport is not None
    client.transport.resume_reading()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(client.closed), 10)
    return {"slow_close_code": client.close_code, "slow_closed": client.closed.done(),
            "rss_samples": samples, "rss_max_mib": round(max(r for _, r in samples) / 2**20, 1),
            "rss_first_mib": round(samples[0][1] / 2**20, 1)}


async def open_idle(target: Target, sockets: int, chats_n: int,
                    connect_limit: int = 100) -> list[Tab]:
    """`sockets` subscribed tabs spread over `chats_n` chats, all idle."""
    chats = await target.new_chats(chats_n)
    window = Window()
    tabs = [Tab(window, 1.0) for _ in range(sockets)]

    async def one(i: int, tab: Tab) -> None:
        await tab.open(target.host, target.ports[i % len(target.ports)], target.cookie)
        await tab.call({"type": "subscribe", "chat": chats[i % chats_n]})

    await gather_limited([one(i, t) for i, t in enumerate(tabs)], connect_limit)
    return tabs


async def ttft_trials(target: Target, trials: int, rate: float) -> list[dict[str, Any]]:
    """Sequential sends on an idle server: send frame → first delta on the same socket."""
    out: list[dict[str, Any]] = []
    (chat,) = await target.new_chats(1)
    tab = Tab(Window(), rate)
    await tab.open(target.host, target.ports[0], target.cookie)
    await tab.call({"type": "subscribe", "chat": chat})
    try:
        for i in range(trials):
            first: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            old = tab.on_text

            def hook(payload: bytes, now: float, first: asyncio.Future[float] = first,
                     old: Callable[[bytes, float], None] = old) -> None:
                if not first.done() and b'"delta"' in payload:
                    first.set_result(now)
                old(payload, now)

            assert tab.client is not None
            tab.client.on_text = hook
            t0 = time.time()
            reply = await tab.call({"type": "send", "chat": chat,
                                    "content": f"echo:trial {i} " + "word " * 8})
            t_first = await asyncio.wait_for(first, 30)
            async with asyncio.timeout(30):
                while reply.get("gen") not in tab.done:  # noqa: ASYNC110 - bounded
                    await asyncio.sleep(0.01)
            tab.client.on_text = old
            out.append({"gen": reply.get("gen"), "ttft_ms": (t_first - t0) * 1000})
    finally:
        tab.close()
    return out


def stats(xs: list[float]) -> dict[str, float]:
    """median and spread (min, max) of repeated measurements."""
    if not xs:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"median": round(statistics.median(xs), 2), "min": round(min(xs), 2),
            "max": round(max(xs), 2)}


@contextlib.asynccontextmanager
async def closing(tabs: list[Tab]) -> Any:
    try:
        yield tabs
    finally:
        for tab in tabs:
            tab.close()
