"""Run every benchmark scenario against chatcast and the bare `websockets` baseline, in one go,
and write benchmarks/results/bench.{json,md} and the plots.

    python -m benchmarks.run                 # all scenarios, ~6-8 minutes on 2 cores
    python -m benchmarks.run --quick         # smaller and shorter (a minute or two)
    python -m benchmarks.run --only fanout,idle --repeats 5

Servers run on core 0 (`--server-cpu`), this process (the load generator, and Redis) on
core 1 (`--loadgen-cpu`). Figures are ratios against the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import itertools
import json
import os
import platform
import resource
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import uvloop

from benchmarks import loadgen, procs, profile, report, wholejob
from benchmarks.loadgen import Target, stats

RESULTS = Path(__file__).parent / "results"
SCENARIOS = ("fanout", "saturation", "coalescing", "idle", "ttft_stop", "slow", "wholejob")
COALESCING_ON = "chatcast, coalescing on"
#: A profiled fan-out run: its sends spread over 0.5 s, every generation streaming 0.5 s
#: before a 2 s window (400 samples per process at py-spy's 200/s: a share of 10 % is known
#: to about ±1.5 points); the measured runs' longer windows are for latency tails, which a
#: profile does not need.
PROFILE_STAGGER_S, PROFILE_WARMUP_S, PROFILE_WINDOW_S = 0.5, 0.5, 2.0
#: A sweep point's warm-up after the 1 s stagger of sends: 1 s plus 5 ms per generation, as
#: the start of every generation (its chat's first message, the start path) lands in the
#: first second and a busy server is still catching up on it when a fixed 1 s ends.
SWEEP_WARMUP_S, SWEEP_WARMUP_PER_GEN_S = 1.0, 0.005
#: Where the PostgreSQL runs of the whole-job scenario make their fresh databases.
PG_ADMIN = os.environ.get("CHATCAST_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.cpu: str = args.server_cpu
        self.log = tmp / "servers.log"
        self.quick: bool = args.quick
        #: seconds spent starting and stopping servers (and databases), profiling
        self.spent: dict[str, float] = {"start_stop_s": 0.0, "profile_s": 0.0}
        self._active: Counter[str] = Counter()
        self._since: dict[str, float] = {}
        self._lock = threading.Lock()

    def chatcast(self, label: str, *, processes: int = 1, rate: float,
                 redis: procs.Redis | None = None, extra: dict[str, str] | None = None,
                 db_url: str | None = None, data: Path | None = None,
                 migrated: bool = False) -> procs.Server:
        data = data or Path(tempfile.mkdtemp(dir=self.tmp))
        with self.timed("start_stop_s"):
            return procs.start_chatcast(label, data, processes=processes, rate=rate,
                                        redis_url=redis.url if redis else None, cpu=self.cpu,
                                        log=self.log, extra=extra, db_url=db_url,
                                        migrated=migrated)

    def baseline(self, rate: float) -> procs.Server:
        with self.timed("start_stop_s"):
            return procs.start_baseline(rate, self.cpu, self.log)

    def stop(self, *servers: procs.Server) -> None:
        with self.timed("start_stop_s"):
            for server in servers:
                server.stop()

    @contextlib.contextmanager
    def timed(self, key: str) -> Iterator[None]:
        """Add the block's wall time to spent[key]; overlapping blocks (nested, or in
        threads side by side) count once."""
        with self._lock:
            if self._active[key] == 0:
                self._since[key] = time.monotonic()
            self._active[key] += 1
        try:
            yield
        finally:
            with self._lock:
                self._active[key] -= 1
                if self._active[key] == 0:
                    self.spent[key] += time.monotonic() - self._since[key]

    # Profiles ---------------------------------------------------------------------------

    async def profile_unmet(self, scenario: str, out: dict[str, Any],
                            runners: dict[str, Callable[[], Awaitable[tuple[str, str]]]]
                            ) -> None:
        """With --profile: for each target of `scenario` that this run did not meet, one
        extra run of the system behind it under py-spy (never one of the measured runs:
        py-spy stops the process for every sample); summaries in results/profiles/.
        A runner returns the collapsed stacks and a note on what the profiled run was."""
        if not self.args.profile:
            return
        unmet = [key[1] for *_, met, key in report.targets({"scenarios": {scenario: out}})
                 if met is False and key is not None and key[0] == scenario]
        profiles: dict[str, Any] = out.setdefault("profiles", {})
        for label in dict.fromkeys(unmet):
            if label not in runners or label in profiles:
                continue
            name = f"{scenario}-{_slug(label)}"
            print(f"  profiling {scenario} {label} (an extra run, not measured)", flush=True)
            with self.timed("profile_s"):
                try:
                    raw, note = await runners[label]()
                    profiles[label] = profile.write(self.args.out / "profiles", name,
                                                    f"{scenario}: {label}", raw,
                                                    str(procs.SERVER_SRC), note)
                except (RuntimeError, OSError) as exc:
                    profiles[label] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            print(f"    {profiles[label].get('headline') or profiles[label].get('error')}",
                  flush=True)

    def spy(self, server: procs.Server) -> contextlib.AbstractAsyncContextManager[list[str]]:
        return profile.record(server.pids, self.args.loadgen_cpu)

    async def profiled_fanout(self, server: procs.Server, **kw: Any) -> tuple[str, str]:
        """One fan-out run of `server` with its measurement window under py-spy."""
        stacks: list[str] = []

        @contextlib.asynccontextmanager
        async def window() -> AsyncIterator[None]:
            async with self.spy(server) as got:
                yield
            stacks.extend(got)

        r = await loadgen.fanout_run(Target(server.kind, server.ports), server.cpu,
                                     window_cm=window, stagger_s=PROFILE_STAGGER_S,
                                     warmup_s=PROFILE_WARMUP_S, window_s=PROFILE_WINDOW_S,
                                     **kw)
        return "".join(stacks), (f"Measurement window of one extra fan-out run: {r.gens} "
                                 f"generations x {r.tabs} tabs at {r.rate:g} tokens/s, "
                                 f"{r.window_s:g} s ({r.frames_per_s:,.0f} frames/s, CPU "
                                 f"{r.server_cpu_util:.0%} with the profiler attached).")

    def redis(self) -> procs.Redis:
        return procs.Redis(self.args.loadgen_cpu, Path(tempfile.mkdtemp(dir=self.tmp)))

    # Scenario 1 -----------------------------------------------------------------------

    async def fanout(self) -> dict[str, Any]:
        gens, tabs, rate = (30, 3, 50.0) if self.quick else (100, 3, 50.0)
        # 100 x 3 tabs at 50 tokens/s: 15,000 frames/s, so a 3 s window holds 45,000
        # latency samples (135,000 over the repeats); each generation has streamed 1-2 s
        # when it opens.
        window, warmup = 3.0, 1.0
        redis = self.redis()
        systems: list[procs.Server] = []
        try:
            # Started side by side (on both cores, pinned once up), before any run.
            started = await asyncio.gather(
                asyncio.to_thread(self.baseline, rate),
                asyncio.to_thread(self.chatcast, "memory bus, 1 process", rate=rate),
                asyncio.to_thread(self.chatcast, "Redis bus, 1 process", rate=rate,
                                  redis=redis),
                asyncio.to_thread(self.chatcast, "Redis bus, 2 processes", processes=2,
                                  rate=rate, redis=redis), return_exceptions=True)
            systems = [s for s in started if isinstance(s, procs.Server)]
            for failed in started:
                if isinstance(failed, BaseException):
                    raise failed
            runs: dict[str, list[dict[str, Any]]] = {s.label: [] for s in systems}
            out: dict[str, Any] = {"gens": gens, "tabs": tabs, "rate": rate, "runs": runs}
            for rep in range(self.args.repeats):
                for server in systems:  # interleaved, so drifting machine noise hits all
                    target = Target(server.kind, server.ports)
                    uses_redis = server.kind == "chatcast" and "Redis" in server.label
                    before = redis.commandstats() if uses_redis else {}
                    r = await loadgen.fanout_run(target, server.cpu, gens=gens, tabs=tabs,
                                                 rate=rate, window_s=window, warmup_s=warmup)
                    d = r.as_dict()
                    if uses_redis:
                        after = redis.commandstats()
                        d["redis"] = _redis_per_token(before, after, gens,
                                                      r.extra["tokens_per_gen"], tabs)
                    runs[server.label].append(d)
                    print(f"  fanout {rep + 1}/{self.args.repeats} {server.label}: "
                          f"{r.cpu_us_per_frame} us/frame, latency p99 "
                          f"{r.latency_ms['p99']} ms, correct={r.correct}", flush=True)
            out["summary"] = {label: _summarise(rs) for label, rs in runs.items()}
            await self.profile_unmet("fanout", out, {
                s.label: functools.partial(self.profiled_fanout, s, gens=gens, tabs=tabs,
                                           rate=rate) for s in systems})
        finally:
            self.stop(*systems)
            redis.stop()
        return out

    # Scenario 2 -----------------------------------------------------------------------

    async def saturation(self) -> dict[str, Any]:
        rate, tabs, limit_ms = 50.0, 3, 100
        # From 200 (scenario 1 is the 100-generation point); a system past its knee there
        # is searched below (see _sweep).
        steps = [50, 100, 200] if self.quick else [200, 250, 300, 400, 500, 600, 800, 1000]
        out: dict[str, Any] = {"rate": rate, "tabs": tabs, "limit_ms": limit_ms, "systems": {}}
        for kind in ("baseline", "chatcast"):
            # Raw frame capacity: with coalescing off, chatcast sends one frame per token as
            # the baseline does (scenario 3 measures what coalescing adds).
            server = self.baseline(rate) if kind == "baseline" else \
                self.chatcast("memory bus, 1 process", rate=rate,
                              extra={"CHATCAST_COALESCE_MAX_MS": "0"})
            try:
                # The baseline from 300 (in full runs here it passed 400, or 500 on a quiet
                # day): two points fewer; a slower machine has it searched below.
                own = steps if kind == "chatcast" or self.quick else [
                    n for n in steps if n >= 300]
                points = await self._sweep("saturation", server, own, rate=rate, tabs=tabs,
                                           limit_ms=limit_ms, drain_timeout_s=15)
                ok = [p for p in points if p["lateness_ms"]["p99"] <= limit_ms]
                best = max((p["frames_per_s"] for p in ok), default=0.0)
                out["systems"][server.label] = {"points": points, "max_frames_per_s": best}
                if kind == "chatcast":  # the load where it gave up bounds it
                    await self.profile_unmet("saturation", out, {server.label: functools.partial(
                        self.profiled_fanout, server, gens=points[-1]["gens"], tabs=tabs,
                        rate=rate, drain_timeout_s=15)})
            finally:
                self.stop(server)
        return out

    # Scenario 3 -----------------------------------------------------------------------

    async def coalescing(self) -> dict[str, Any]:
        """R = 200 tokens/s, 5 tabs per generation: raise the number of generations until
        p99 lateness passes 50 ms. The baseline sends one frame per token; chatcast merges
        the chunks that arrive while it is busy, so it carries more tokens per frame."""
        rate, tabs, limit_ms = 200.0, 5, 50.0
        steps = [20, 40, 60] if self.quick else [100, 200, 300, 400]
        out: dict[str, Any] = {"rate": rate, "tabs": tabs, "limit_ms": limit_ms,
                               "systems": {}}
        for label in ("baseline (websockets)", COALESCING_ON, "chatcast, coalescing off"):
            if label.startswith("baseline"):
                server = self.baseline(rate)
            else:
                off = {"CHATCAST_COALESCE_MAX_MS": "0"} if label.endswith("off") else None
                server = self.chatcast(label, rate=rate, extra=off)
            try:
                # The ratio compares the highest passing loads of the baseline and of
                # coalescing on, so both are searched between steps (the steps are 50-100 %
                # apart); coalescing off is shown beside them, not compared: searched neither
                # below nor between.
                compared = not label.endswith("off")
                points = await self._sweep("coalescing", server, steps, rate=rate, tabs=tabs,
                                           limit_ms=limit_ms, drain_timeout_s=20,
                                           search_below=compared, refine=compared)
                ok = [p for p in points
                      if p["lateness_ms"]["p99"] <= limit_ms and p["correct"]]
                best = max(ok, key=lambda p: p["tokens_per_s"], default=None)
                out["systems"][label] = {
                    "points": points, "best": best,
                    "max_tokens_per_s": best["tokens_per_s"] if best else 0.0}
                if label == COALESCING_ON:  # the load where it gave up bounds it
                    await self.profile_unmet("coalescing", out, {label: functools.partial(
                        self.profiled_fanout, server, gens=points[-1]["gens"], tabs=tabs,
                        rate=rate, drain_timeout_s=20)})
            finally:
                self.stop(server)
        return out

    async def _sweep(self, scenario: str, server: procs.Server, steps: list[int], *,
                     rate: float, tabs: int, limit_ms: float,
                     drain_timeout_s: float, search_below: bool = True,
                     refine: bool = False) -> list[dict[str, Any]]:
        """One fan-out run per number of generations in `steps`, until p99 lateness passes
        `limit_ms`, the server's CPU is saturated or it delivers under 90 % of the offered
        tokens. With `search_below`, a system past that knee at the first step is tried at
        half the load until one passes, then once between; with `refine`, a system that
        passed a step and not the next is tried once between them. The points come
        sorted."""
        points: list[dict[str, Any]] = []

        async def point(gens: int) -> bool:
            """One run at `gens` generations; whether it is still below the knee."""
            r = await loadgen.fanout_run(Target(server.kind, server.ports), server.cpu,
                                         gens=gens, tabs=tabs, rate=rate,
                                         window_s=self.sweep_window,
                                         warmup_s=SWEEP_WARMUP_S + SWEEP_WARMUP_PER_GEN_S * gens,
                                         drain_timeout_s=drain_timeout_s)
            offered = gens * tabs * rate
            points.append({
                "gens": gens, "offered_frames_per_s": offered,
                "offered_tokens_per_s": offered, "frames_per_s": r.frames_per_s,
                "tokens_per_s": r.tokens_per_s,
                "tokens_per_frame": round(r.tokens_per_s / max(r.frames_per_s, 1), 2),
                "cpu_us_per_token": r.cpu_us_per_token, "lateness_ms": r.lateness_ms,
                "latency_ms": r.latency_ms, "server_cpu_util": r.server_cpu_util,
                "loadgen_cpu_util": r.loadgen_cpu_util, "correct": r.correct})
            print(f"  {scenario} {server.label} {gens} gens: {r.tokens_per_s} tokens/s in "
                  f"{r.frames_per_s} frames/s, lateness p99 {r.lateness_ms['p99']} ms, "
                  f"cpu {r.server_cpu_util}, correct={r.correct}", flush=True)
            # Past the knee: late, out of CPU, or delivering under 90 % of what the
            # provider offered (it fell behind; lateness, estimated per generation from its
            # first chunk, does not always show a generation that started late).
            return not (r.lateness_ms["p99"] > limit_ms or r.server_cpu_util > 0.97
                        or r.tokens_per_s < 0.9 * offered)

        for i, gens in enumerate(steps):
            if not await point(gens):
                if i == 0 and search_below:  # past the knee at once: halve, split once
                    high, low = gens, gens // 2
                    while low >= 10 and not await point(low):
                        high, low = low, low // 2
                    if low >= 10:
                        await point((low + high) // 2)
                elif i > 0 and refine:
                    await point((steps[i - 1] + gens) // 2)
                break
        points.sort(key=lambda p: p["gens"])
        return points

    @property
    def sweep_window(self) -> float:
        return 3.0

    # Scenario 4 -----------------------------------------------------------------------

    async def idle(self) -> dict[str, Any]:
        sockets = 500 if self.quick else 5000
        out: dict[str, Any] = {"sockets": sockets}
        for server in (self.baseline(50), self.chatcast("memory bus, 1 process", rate=50)):
            try:
                target = Target(server.kind, server.ports)
                warm = await loadgen.open_idle(target, 50, 5)  # code paths and pools warmed
                await asyncio.sleep(1)
                before = server.rss()
                tabs = await loadgen.open_idle(target, sockets, 100)
                await asyncio.sleep(2)
                after = server.rss()
                for tab in tabs + warm:
                    tab.close()
            finally:
                self.stop(server)
            per = (after - before) / sockets
            out[server.label] = {"rss_before_mib": round(before / 2**20, 1),
                                 "rss_after_mib": round(after / 2**20, 1),
                                 "bytes_per_socket": round(per),
                                 "kib_per_socket": round(per / 1024, 2)}
            print(f"  idle {server.label}: {per / 1024:.1f} KiB per socket", flush=True)
        return out

    # Scenario 5 -----------------------------------------------------------------------

    async def ttft_stop(self) -> dict[str, Any]:
        from benchmarks import stop_latency

        trials = 10 if self.quick else 30
        out: dict[str, Any] = {"trials": trials}
        for server in (self.baseline(50), self.chatcast("memory bus, 1 process", rate=50)):
            try:
                target = Target(server.kind, server.ports)
                got = await loadgen.ttft_trials(target, trials, 50)
                provider_ms: list[float] = []
                if server.kind == "chatcast":
                    provider_ms = await _provider_ttft(server.ports[0], target.cookie or "",
                                                       got)
            finally:
                self.stop(server)
            client_ms = [g["ttft_ms"] for g in got]
            entry = {"client_ttft_ms": _pct(client_ms)}
            if provider_ms:
                entry["provider_ttft_ms"] = _pct(provider_ms)
                entry["overhead_ms"] = _pct([c - p for c, p in
                                             zip(client_ms, provider_ms, strict=True)])
            out[server.label] = entry
            print(f"  ttft {server.label}: {entry}", flush=True)
        redis = self.redis()
        try:
            out["stop_memory_1_process"] = await stop_latency.run(trials, None, cpu=self.cpu)
            out["stop_redis_2_processes"] = await stop_latency.run(trials, redis.url,
                                                                   cpu=self.cpu)
        finally:
            redis.stop()
        print(f"  stop across processes: {out['stop_redis_2_processes']['other_tab']}",
              flush=True)
        return out

    # Scenario 6 -----------------------------------------------------------------------

    async def slow(self) -> dict[str, Any]:
        gens, tabs, rate = (30, 3, 50.0) if self.quick else (100, 3, 50.0)
        server = self.chatcast("memory bus, 1 process", rate=rate)
        # Every answer as long as the first, the last ending a second after the window (the
        # other scenarios end them together): the slow tab's backlog then passes its outbox's
        # bound while they stream, and the server closes it (4008); with the shorter load
        # they ended first, and the tab, reading again, was never closed.
        try:
            target = Target(server.kind, server.ports)
            plain = await loadgen.fanout_run(target, server.cpu, gens=gens, tabs=tabs,
                                             rate=rate, window_s=4.0, warmup_s=1.0,
                                             same_lengths=True)
            slow = await loadgen.fanout_run(target, server.cpu, gens=gens, tabs=tabs,
                                            rate=rate, window_s=4.0, warmup_s=1.0,
                                            slow_tab=server.rss, same_lengths=True)
        finally:
            self.stop(server)
        print(f"  slow consumer: others' latency p99 {plain.latency_ms['p99']} → "
              f"{slow.latency_ms['p99']} ms; slow tab closed "
              f"{slow.extra.get('slow_close_code')}; RSS max {slow.extra.get('rss_max_mib')} "
              "MiB", flush=True)
        return {"gens": gens, "tabs": tabs, "rate": rate, "without": plain.as_dict(),
                "with_slow_tab": slow.as_dict()}


    # Scenario 7 -----------------------------------------------------------------------

    async def wholejob(self) -> dict[str, Any]:
        """Poisson arrivals and a burst, each creating its chat and sending its first
        message (see benchmarks/wholejob.py); every system is started afresh for every run
        (a new SQLite file or PostgreSQL database), fed the same schedule.

        The databases are copies of one migrated template (a file copy, `CREATE DATABASE
        … TEMPLATE`), and the next run's system starts while this run's is stopped: both
        happen between runs, never during one."""
        load = QUICK_WHOLEJOB_LOAD if self.quick else WHOLEJOB_LOAD
        schedule = load.schedule()
        systems = [(label, kind, db, procs_n) for label, kind, db, procs_n in WHOLEJOB_SYSTEMS
                   if kind == "baseline" or self.args.systems is None
                   or any(w in label for w in self.args.systems)]
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label, *_ in systems}
        out: dict[str, Any] = {"load": {**dataclasses.asdict(load),
                                        "generations": len(schedule),
                                        "tabs": sum(a.tabs for a in schedule),
                                        "tokens": sum(a.tokens for a in schedule)},
                               "runs": runs}
        redis = self.redis()
        templates = Templates(self.tmp, any(db == "postgresql" for *_, db, _ in systems))
        order = [(rep, system) for rep in range(self.args.repeats) for system in systems]
        try:
            with self.timed("start_stop_s"):
                await templates.make()
            upcoming = asyncio.create_task(self.fresh(*order[0][1], redis, templates))
            for i, (rep, (label, *_)) in enumerate(order):  # interleaved, as in scenario 1
                t_wait = time.monotonic()
                with self.timed("start_stop_s"):
                    system = await upcoming
                t_run = time.monotonic()
                try:
                    r = await wholejob.run(Target(system.server.kind, system.server.ports),
                                           system.server, load)
                except BaseException:
                    await system.close()
                    raise
                if i + 1 < len(order):  # starts while this one stops
                    upcoming = asyncio.create_task(
                        self.fresh(*order[i + 1][1], redis, templates))
                t_close = time.monotonic()
                with self.timed("start_stop_s"):
                    await system.close()
                r["bench_s"] = {"wait_start": round(t_run - t_wait, 2),
                                "run": round(t_close - t_run, 2),
                                "stop": round(time.monotonic() - t_close, 2)}
                runs[label].append(r)
                print(f"  wholejob {rep + 1}/{self.args.repeats} {label}: "
                      f"{r['cpu_us_per_frame']} us/frame, latency p99 "
                      f"{r['latency_ms']['p99']} ms, burst TTFT p99 "
                      f"{r['burst_ttft_ms']['p99']} ms, stall {r['longest_stall_ms']} ms, "
                      f"{r['duration_s']} s (bench {r['bench_s']}), correct={r['correct']} "
                      f"{r['problems'][:2]}",
                      flush=True)
            out["summary"] = {label: summarise_wholejob(rs) for label, rs in runs.items()}

            # A profile needs the busiest part only: the burst and the last arrival.
            cut = load.span_s + 1.0

            async def profiled(system: tuple[str, str, str, int]) -> tuple[str, str]:
                with self.timed("start_stop_s"):
                    fresh = await self.fresh(*system, redis, templates)
                try:
                    async with self.spy(fresh.server) as stacks:
                        r = await wholejob.run(Target(fresh.server.kind, fresh.server.ports),
                                               fresh.server, load, cut_after_s=cut)
                finally:
                    await fresh.close()
                return "".join(stacks), (
                    f"The first {r['duration_s']} s of one extra run, cut there (the burst "
                    "and every arrival; every process of the system; burst TTFT p99 "
                    f"{r['burst_ttft_ms']['p99']:,.0f} ms, latency p99 "
                    f"{r['latency_ms']['p99']:,.0f} ms with the profiler attached).")

            await self.profile_unmet("wholejob", out, {
                system[0]: functools.partial(profiled, system) for system in systems})
        finally:
            redis.stop()
            await templates.drop()
        return out

    async def fresh(self, label: str, kind: str, db: str, processes: int,
                    redis: procs.Redis, templates: Templates | None) -> Fresh:
        """A system started afresh, on a new copy of the migrated database (or, without
        `templates`, on a new database that it migrates itself)."""
        if kind == "baseline":
            return Fresh(await asyncio.to_thread(procs.start_baseline, 50, self.cpu, self.log))
        data = Path(tempfile.mkdtemp(dir=self.tmp))
        if templates is not None:
            db_name = await templates.copy(db, data)
        elif db == "postgresql":
            db_name = f"chatcast_bench_{os.getpid()}_{int(time.time() * 1000)}"
            await pg_admin(f'CREATE DATABASE "{db_name}"')
        else:
            db_name = None
        db_url = PG_ADMIN.rsplit("/", 1)[0] + f"/{db_name}" if db_name else None
        try:
            server = await asyncio.to_thread(
                procs.start_chatcast, label, data, processes=processes, rate=50,
                redis_url=redis.url if kind == "redis" else None, cpu=self.cpu, log=self.log,
                db_url=db_url, migrated=templates is not None)
        except BaseException:
            if db_name:
                await pg_admin(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
            raise
        return Fresh(server, db_name)


@dataclasses.dataclass
class Fresh:
    server: procs.Server
    pg_database: str | None = None

    async def close(self) -> None:
        await asyncio.to_thread(self.server.stop)
        if self.pg_database:
            await pg_admin(f'DROP DATABASE IF EXISTS "{self.pg_database}" WITH (FORCE)')


class Templates:
    """Migrated once, copied for every run: a SQLite file, a PostgreSQL template database."""

    def __init__(self, tmp: Path, postgresql: bool) -> None:
        self.sqlite_dir = tmp / "template-sqlite"
        self.postgresql = postgresql
        self.pg_name = f"chatcast_bench_{os.getpid()}_template"
        self.count = itertools.count()

    async def make(self) -> None:
        jobs = [asyncio.to_thread(procs.migrate, self.sqlite_dir)]
        if self.postgresql:
            await pg_admin(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
            await pg_admin(f'CREATE DATABASE "{self.pg_name}"')
            jobs.append(asyncio.to_thread(procs.migrate, self.sqlite_dir.with_name("tpl-pg"),
                                          PG_ADMIN.rsplit("/", 1)[0] + f"/{self.pg_name}"))
        await asyncio.gather(*jobs)

    async def copy(self, db: str, data: Path) -> str | None:
        """A fresh database for one run: in `data` (SQLite; None) or its PostgreSQL name."""
        if db != "postgresql":
            shutil.copyfile(self.sqlite_dir / "chatcast.db", data / "chatcast.db")
            return None
        name = f"chatcast_bench_{os.getpid()}_{next(self.count)}"
        await pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.pg_name}"')
        return name

    async def drop(self) -> None:
        if self.postgresql:
            await pg_admin(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')


#: The full-size whole-job load: ~40 Poisson arrivals over 4 s, a burst of 100 sends in the
#: second second, answers of up to 8 s.
WHOLEJOB_LOAD = wholejob.Load(poisson_per_s=10, span_s=4.0, burst=100, burst_at_s=1.0,
                              max_answer_s=8.0)
QUICK_WHOLEJOB_LOAD = wholejob.Load(poisson_per_s=5, span_s=1.5, burst=10, burst_at_s=0.3,
                                    max_answer_s=1.5)

#: label, bus ("baseline" | "memory" | "redis"), database, processes
WHOLEJOB_SYSTEMS = (
    ("baseline (websockets)", "baseline", "", 1),
    ("memory bus, SQLite", "memory", "sqlite", 1),
    ("memory bus, PostgreSQL", "memory", "postgresql", 1),
    ("Redis bus, 1 process, PostgreSQL", "redis", "postgresql", 1),
    ("Redis bus, 2 processes, PostgreSQL", "redis", "postgresql", 2),
)


async def pg_admin(sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(PG_ADMIN, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def summarise_wholejob(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def col(*path: str) -> list[float]:
        out = []
        for r in runs:
            v: Any = r
            for part in path:
                v = v[part]
            out.append(float(v))
        return out

    keys = {"cpu_us_per_frame": ("cpu_us_per_frame",), "cpu_us_per_token": ("cpu_us_per_token",),
            "latency_p50_ms": ("latency_ms", "p50"), "latency_p99_ms": ("latency_ms", "p99"),
            "latency_max_ms": ("latency_ms", "max"), "ttft_p50_ms": ("ttft_ms", "p50"),
            "ttft_p99_ms": ("ttft_ms", "p99"), "burst_ttft_p50_ms": ("burst_ttft_ms", "p50"),
            "burst_ttft_p99_ms": ("burst_ttft_ms", "p99"),
            "longest_stall_ms": ("longest_stall_ms",), "server_cpu_util": ("server_cpu_util",),
            "duration_s": ("duration_s",)}
    out: dict[str, Any] = {name: stats(col(*path)) for name, path in keys.items()}
    out["correct"] = all(r["correct"] for r in runs)
    return out


def _slug(label: str) -> str:
    return "-".join(w for w in "".join(c if c.isalnum() else " " for c in label.lower())
                    .split())


def _pct(xs: list[float]) -> dict[str, float]:
    return {"p50": round(loadgen.percentile(xs, 50), 2),
            "p99": round(loadgen.percentile(xs, 99), 2), "max": round(max(xs), 2)}


async def _provider_ttft(port: int, cookie: str, got: list[dict[str, Any]]) -> list[float]:
    """The provider's own time to first token, as the runner recorded it (metadata)."""
    import httpx

    out: list[float] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        for g in got:
            r = await http.get(f"/api/generations/{g['gen']}",
                               headers={"Cookie": cookie})
            meta = r.json().get("metadata") or {} if r.status_code == 200 else {}
            out.append(float(meta.get("ttft_ms", 0.0)))
    return out


def _redis_per_token(before: dict[str, int], after: dict[str, int], gens: int,
                     tokens_per_gen: float, tabs: int) -> dict[str, Any]:
    calls = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    calls = {k: v for k, v in calls.items() if v > 0}
    produced = round(gens * tokens_per_gen)
    round_trips = calls.get("evalsha", 0) + calls.get("eval", 0)
    return {"commands": calls, "produced_tokens": produced,
            "round_trips_per_token": round(round_trips / produced, 3),
            "commands_per_token": round(calls.get("total", 0) / produced, 3),
            "round_trips_per_delivered_token": round(round_trips / (produced * tabs), 3)}


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def col(path: str) -> list[float]:
        vals = []
        for r in runs:
            v: Any = r
            for part in path.split("."):
                v = v[part]
            vals.append(float(v))
        return vals

    out: dict[str, Any] = {name: stats(col(path)) for name, path in (
        ("cpu_us_per_frame", "cpu_us_per_frame"), ("cpu_us_per_token", "cpu_us_per_token"),
        ("frames_per_s", "frames_per_s"), ("tokens_per_s", "tokens_per_s"),
        ("latency_p50_ms", "latency_ms.p50"), ("latency_p99_ms", "latency_ms.p99"),
        ("lateness_p99_ms", "lateness_ms.p99"), ("server_cpu_util", "server_cpu_util"),
        ("loadgen_cpu_util", "loadgen_cpu_util"))}
    out["correct"] = all(r["correct"] for r in runs)
    if runs and "redis" in runs[0]:
        out["redis_round_trips_per_token"] = stats(
            [r["redis"]["round_trips_per_token"] for r in runs])
        out["redis_commands_per_token"] = stats(
            [r["redis"]["commands_per_token"] for r in runs])
    return out


@contextlib.contextmanager
def affinity(cpu: str) -> Iterator[None]:
    old = os.sched_getaffinity(0)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {int(c) for c in cpu.split(",")})
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def run_pinned(main: Coroutine[Any, Any, dict[str, Any]], cpu: str) -> dict[str, Any]:
    """Run a benchmark's `main` on uvloop with this process pinned to `cpu` and room for
    many sockets; its result gets the whole run's `elapsed_s`."""
    raise_nofile()
    started = time.monotonic()
    with affinity(cpu):
        result = uvloop.run(main)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


def raise_nofile(want: int = 20000) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    chosen = args.only.split(",") if args.only else list(SCENARIOS)
    out: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "kernel": platform.release(), "server_cpu": args.server_cpu,
                    "loadgen_cpu": args.loadgen_cpu,
                    "commit": _git("rev-parse", "--short", "HEAD"),
                    "dirty_files": _git("status", "--porcelain", "--untracked-files=no")
                    .count("\n") + 1 if _git("status", "--porcelain",
                                               "--untracked-files=no") else 0},
        "quick": args.quick, "repeats": args.repeats, "scenarios": {}}
    with tempfile.TemporaryDirectory(prefix="chatcast-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        for name in chosen:
            t0 = time.monotonic()
            print(f"== {name}", flush=True)
            spent = dict(bench.spent)
            out["scenarios"][name] = await getattr(bench, name)()
            out["scenarios"][name]["elapsed_s"] = round(time.monotonic() - t0, 1)
            for key, value in bench.spent.items():
                out["scenarios"][name][key] = round(value - spent[key], 1)
            print(f"   {name}: {out['scenarios'][name]['elapsed_s']} s", flush=True)
    return out


def _git(*argv: str) -> str:
    r = subprocess.run(["git", "-C", str(procs.REPO), *argv], capture_output=True, text=True)
    return r.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small loads, short windows")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help=f"comma-separated: {','.join(SCENARIOS)}")
    parser.add_argument("--systems", type=lambda v: v.split(","), default=None,
                        help="whole-job scenario: only the systems whose label contains one "
                             "of these words (comma-separated), e.g. baseline,SQLite")
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--loadgen-cpu", default="1")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                        help="for each target not met, one extra run of the system behind "
                             "it under py-spy, summarised in <out>/profiles/ (default: on)")
    args = parser.parse_args()
    result = run_pinned(run_all(args), args.loadgen_cpu)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(result, indent=1) + "\n")
    report.write(result, args.out)
    print(f"results in {args.out} ({result['elapsed_s']} s)")


if __name__ == "__main__":
    main()
