"""The whole job: users arrive, create a chat, open their tabs, send, and read the answer.

Scenario 1 measures the steady middle of streams that all started before its window. A
server's real day also has the rest: chat creation, the first message, the start of each
answer, checkpoints, the end of each answer, and many of these at the same moment. Here a
seeded schedule drives all of it, every frame counted, nothing cut as warm-up:

- arrivals: a Poisson process (`poisson_per_s` over `span_s`) plus a burst of `burst`
  sends within one second at `burst_at_s`;
- each arrival: answer length and rate from realistic spreads (log-normal, median 300
  tokens in 50-1500 and 60 tokens/s in 20-150; a draw whose answer would last longer than
  `max_answer_s` is drawn again, to bound the run), 1-3 tabs (half of the users have one);
- for chatcast each arrival is a new visitor: its first request creates its chat
  (`POST /api/chats`, no cookie yet: the user is created and gets its cookie), then it
  opens and subscribes its tabs and sends on the first one; the baseline's chats need no
  creation. The prompt is
  `pace:<R> count:<N> c<i>`: the demo model answers N known words at R tokens/s, on both.

Reported per run: server CPU over the whole run per delivered delta frame (and per token),
latency (receive - the provider's emit `ts`) p50/p99/max over every delta, time to first
token (send → first delta on the sending tab) p50/p99 of the burst's sends and of all
(and where a burst arrival's time went: chat creation, tabs, the send's ack, first delta),
the event loop's longest stall (the server's own `StallWatch`), and exactness of every tab.
"""

from __future__ import annotations

import asyncio
import gc
import math
import random
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx

from benchmarks.loadgen import Tab, Target, Window, check_tab, expected_text, summary
from benchmarks.procs import Server

TOKENS_MEDIAN, TOKENS_SIGMA, TOKENS_MIN, TOKENS_MAX = 300, 0.8, 50, 1500
RATE_MEDIAN, RATE_SIGMA, RATE_MIN, RATE_MAX = 60.0, 0.5, 20.0, 150.0
TABS_WEIGHTS = (0.5, 0.3, 0.2)  # 1, 2, 3 tabs


@dataclass(frozen=True, slots=True)
class Arrival:
    at_s: float  # from the start of the run
    tokens: int
    rate: float
    tabs: int
    burst: bool


@dataclass(frozen=True, slots=True)
class Load:
    poisson_per_s: float
    span_s: float
    burst: int
    burst_at_s: float
    max_answer_s: float
    seed: int = 1

    def schedule(self) -> list[Arrival]:
        """The same arrivals for every system and repeat (seeded)."""
        rng = random.Random(self.seed)
        times: list[tuple[float, bool]] = []
        t = rng.expovariate(self.poisson_per_s)
        while t < self.span_s:
            times.append((t, False))
            t += rng.expovariate(self.poisson_per_s)
        times += [(self.burst_at_s + rng.random(), True) for _ in range(self.burst)]
        out = []
        for at, burst in sorted(times):
            while True:
                tokens = round(_clipped(rng, TOKENS_MEDIAN, TOKENS_SIGMA, TOKENS_MIN,
                                        TOKENS_MAX))
                rate = round(_clipped(rng, RATE_MEDIAN, RATE_SIGMA, RATE_MIN, RATE_MAX))
                if tokens / rate <= self.max_answer_s:
                    break
            tabs = rng.choices((1, 2, 3), TABS_WEIGHTS)[0]
            out.append(Arrival(round(at, 4), tokens, float(rate), tabs, burst))
        return out


def _clipped(rng: random.Random, median: float, sigma: float, lo: float, hi: float) -> float:
    return min(max(rng.lognormvariate(math.log(median), sigma), lo), hi)


@dataclass
class Job:
    """One arrival as the load generator lived it."""

    arrival: Arrival
    index: int
    tabs: list[Tab]
    chat: str = ""
    cookie: str | None = None
    arrived_at: float = 0.0
    created_at: float = 0.0  # the chat exists
    subscribed_at: float = 0.0  # every tab subscribed
    acked_at: float = 0.0  # the send was acknowledged (the generation started)
    sent_at: float = 0.0
    gen: str = ""
    error: str = ""


async def run(target: Target, server: Server, load: Load, *,
              drain_timeout_s: float = 60.0, cut_after_s: float | None = None
              ) -> dict[str, Any]:
    """One run of the schedule against a freshly started system; the load generator's
    garbage collector is off meanwhile (see loadgen.fanout_run). With `cut_after_s` the
    run ends then, its answers unfinished (for a profile of its busiest part: the result
    is not a measurement, nor correct)."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        return await _run(target, server, load, drain_timeout_s, cut_after_s)
    finally:
        gc.enable()
        gc.unfreeze()


async def _run(target: Target, server: Server, load: Load,
               drain_timeout_s: float, cut_after_s: float | None) -> dict[str, Any]:
    schedule = load.schedule()
    window = Window(start=0.0)  # every frame counts
    jobs = [Job(a, i, [Tab(window, a.rate) for _ in range(a.tabs)])
            for i, a in enumerate(schedule)]
    clients: list[httpx.AsyncClient] = []
    if target.kind == "chatcast":
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        # An explicit Cookie header that names no user: the client's cookie jar (which
        # would make every arrival the first one's user) is never used.
        clients = [httpx.AsyncClient(base_url=f"http://{target.host}:{port}", timeout=60,
                                     limits=limits, headers={"Cookie": "visitor=new"})
                   for port in target.ports]
    loop = asyncio.get_running_loop()
    try:
        cpu0, wall0 = server.cpu(), time.time()
        t0 = loop.time() + 0.05
        tasks = [asyncio.create_task(_job(target, clients, job, t0)) for job in jobs]
        _, pending = await asyncio.wait(tasks, timeout=cut_after_s or (
            load.span_s + load.max_answer_s + drain_timeout_s))
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        cpu1, wall1 = server.cpu(), time.time()
        stall_ms = await _longest_stall(target, clients)
    finally:
        for client in clients:
            await client.aclose()
        for job in jobs:
            for tab in job.tabs:
                tab.close()
    problems: list[str] = []
    completed = 0
    for job in jobs:
        if job.error:
            problems.append(f"arrival {job.index}: {job.error}")
        expected = expected_text(job.index, job.arrival.tokens)
        for j, tab in enumerate(job.tabs):
            completed += check_tab(tab, job.chat, expected, f"arrival {job.index} tab {j}",
                                   problems)
    ttft = {kind: [(j.tabs[0].first_at[j.gen] - j.sent_at) * 1000 for j in jobs
                   if j.gen in j.tabs[0].first_at and (kind == "all" or j.arrival.burst)]
            for kind in ("all", "burst")}
    burst = [j for j in jobs if j.arrival.burst and j.gen in j.tabs[0].first_at]
    phases = {name: summary([(b - a) * 1000 for a, b in pairs]) for name, pairs in (
        ("create_chat", [(j.arrived_at, j.created_at) for j in burst]),
        ("open_and_subscribe", [(j.created_at, j.subscribed_at) for j in burst]),
        ("send_ack", [(j.sent_at, j.acked_at) for j in burst]),
        ("ack_to_first_delta", [(j.acked_at, j.tabs[0].first_at[j.gen]) for j in burst]),
        ("arrival_to_first_delta", [(j.arrived_at, j.tabs[0].first_at[j.gen])
                                    for j in burst]))}
    cpu, span = cpu1 - cpu0, wall1 - wall0
    tabs = sum(len(j.tabs) for j in jobs)
    return {
        "generations": len(jobs), "burst": load.burst, "tabs": tabs,
        "expected_tokens": sum(j.arrival.tokens * len(j.tabs) for j in jobs),
        "duration_s": round(span, 2), "frames": window.frames, "tokens": window.tokens,
        "server_cpu_s": round(cpu, 3), "server_cpu_util": round(cpu / span, 3),
        "cpu_us_per_frame": round(cpu / max(window.frames, 1) * 1e6, 2),
        "cpu_us_per_token": round(cpu / max(window.tokens, 1) * 1e6, 2),
        "latency_ms": summary(window.latency_ms), "ttft_ms": summary(ttft["all"]),
        "burst_ttft_ms": summary(ttft["burst"]), "burst_phases_ms": phases,
        "longest_stall_ms": stall_ms,
        "completed": completed, "correct": not problems and completed == tabs,
        "problems": problems[:10]}


async def _job(target: Target, clients: list[httpx.AsyncClient], job: Job,
               t0: float) -> None:
    a = job.arrival
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, t0 + a.at_s - loop.time()))
    procs = len(target.ports)
    job.arrived_at = time.time()
    try:
        if clients:
            r = await clients[job.index % procs].post("/api/chats", json={})
            r.raise_for_status()
            job.chat = str(r.json()["id"])
            job.cookie = r.headers["set-cookie"].split(";")[0]
        else:
            job.chat = f"chat{job.index}"
        job.created_at = time.time()

        async def open_tab(j: int, tab: Tab) -> None:
            await tab.open(target.host, target.ports[(job.index + j) % procs], job.cookie)
            await tab.call({"type": "subscribe", "chat": job.chat})

        await asyncio.gather(*(open_tab(j, tab) for j, tab in enumerate(job.tabs)))
        dones = [tab.wait_done(job.chat) for tab in job.tabs]
        job.subscribed_at = job.sent_at = time.time()
        ack = await job.tabs[0].call({"type": "send", "chat": job.chat, "content":
                                      f"pace:{a.rate:g} count:{a.tokens} c{job.index}"})
        job.acked_at = time.time()
        job.gen = str(ack.get("gen", ""))
        async with asyncio.timeout(a.tokens / a.rate + 60):
            await asyncio.gather(*dones)
    except Exception as exc:
        job.error = f"{type(exc).__name__}: {exc}"


_STALL = re.compile(rb"^chatcast_event_loop_longest_stall_seconds ([0-9.e+-]+)$", re.M)


async def _longest_stall(target: Target, clients: list[httpx.AsyncClient]) -> float:
    """The longest event loop stall of the system's processes since they started (ms)."""
    if not clients:
        tab = Tab(Window(), 1.0)
        await tab.open(target.host, target.ports[0], None)
        try:
            reply = await tab.call({"type": "stats"})
        finally:
            tab.close()
        return float(reply["longest_stall_ms"])
    longest = 0.0
    for client in clients:
        m = _STALL.search((await client.get("/metrics")).content)
        if m:
            longest = max(longest, float(m.group(1)) * 1000)
    return round(longest, 1)
