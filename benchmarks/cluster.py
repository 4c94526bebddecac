"""The Redis Cluster bus against one Redis, in one run; writes benchmarks/results/cluster.json
and cluster.md.

    python -m benchmarks.cluster                 # 3 repeats and the sweep: ~5 minutes
    python -m benchmarks.cluster --quick --repeats 1

Systems, each started afresh for every run: chatcast on one redis-server with 1 and 2
processes, and on a Redis Cluster of 3 masters + 3 replicas (six redis-server processes,
tests/helpers/redis_cluster.py) with 1 and 2 processes, the two seeded with different nodes
(a master and a replica of another shard).

1. Fan-out (scenario 1's load: 100 generations x 3 tabs, R = 50), interleaved per repeat:
   the chatcast processes' CPU per delivered frame, the redis-server processes' CPU per
   delivered frame (every node of the cluster, and its masters alone), latency p50/p99,
   Redis commands per produced token; every tab checked exactly.
2. Throughput: 2 processes on the cluster and 2 on one Redis, coalescing off (one frame per
   token, as scenario 2), generations raised step by step (both systems at each step in
   turn) until p99 lateness passes 100 ms or the servers' core is saturated. Each core's
   busy share (from /proc/stat, neighbours included) says which resource ran out.

Servers run on core 0, the load generator and every redis-server on core 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from benchmarks import loadgen, procs, report
from benchmarks.loadgen import Target, stats
from benchmarks.run import RESULTS, _git, run_pinned
from tests.helpers.redis_cluster import RedisCluster

#: label, Redis ("single" | "cluster"), processes
SYSTEMS = (
    ("one Redis, 1 process", "single", 1),
    ("one Redis, 2 processes", "single", 2),
    ("cluster, 1 process", "cluster", 1),
    ("cluster, 2 processes", "cluster", 2),
)
SWEEP_SYSTEMS = ("one Redis, 2 processes", "cluster, 2 processes")
LIMIT_MS = 100.0
#: A process's start-up (imports, migrations, the slot map) on a machine loaded by other
#: work took 13-20 s, and once more than 30.
START_TIMEOUT_S = 90.0
#: What counts as a script round trip: EVALSHA/EVAL on one Redis, FCALL on a cluster.
SCRIPT_CALLS = ("evalsha", "eval", "fcall")


def pin(pid: int, cpu: str) -> None:
    """Every thread of `pid` onto `cpu` (redis-server has background threads too)."""
    cpus = {int(c) for c in cpu.split(",")}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # the thread ended meanwhile
            continue


def core_busy(core: int) -> Callable[[], float]:
    """Seconds core `core` was busy (everything but idle and iowait) since boot, every
    process on the machine included."""
    def read() -> float:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith(f"cpu{core} "):
                v = [int(x) for x in line.split()[1:]]
                return (sum(v[:8]) - v[3] - v[4]) / procs.CLK_TCK
        return float("nan")
    return read


def commandstats(port: int) -> dict[str, int]:
    client = redis.Redis(port=port)
    try:
        info: dict[str, Any] = client.info("commandstats")
        out = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}
        out["total"] = int(client.info("stats")["total_commands_processed"])
        return out
    finally:
        client.close()


def flush(port: int) -> None:
    client = redis.Redis(port=port)
    try:
        client.flushall()
    finally:
        client.close()


class Cluster:
    """A running Redis Cluster (3 masters + 3 replicas): every node's CPU, the masters'
    command counts, seeds for the processes."""

    def __init__(self, cluster: RedisCluster) -> None:
        self.cluster = cluster
        self.masters = cluster.masters()

    @classmethod
    def start(cls, cpu: str, workdir: Path) -> Cluster:
        """A new cluster whose nodes run on `cpu`."""
        cluster = RedisCluster(workdir).start()
        for node in cluster.nodes:
            assert node.proc is not None
            pin(node.proc.pid, cpu)
        return cls(cluster)

    def seeds(self, processes: int) -> list[str]:
        """Process 0 is seeded with the first master, process 1 with a replica of another
        master, so they start from different nodes and shards."""
        other = self.cluster.replicas_of(self.masters[1])[0]
        return [self.cluster.url(port) for port in (self.masters[0], other)][:processes]

    def pids(self, masters_only: bool = False) -> list[int]:
        return [n.proc.pid for n in self.cluster.nodes if n.proc is not None
                and (not masters_only or n.port in self.masters)]

    def cpu(self) -> float:
        return sum(procs.cpu_seconds(pid) for pid in self.pids())

    def masters_cpu(self) -> float:
        return sum(procs.cpu_seconds(pid) for pid in self.pids(masters_only=True))

    def commandstats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for port in self.masters:
            for k, v in commandstats(port).items():
                total[k] = total.get(k, 0) + v
        return total

    def flush(self) -> None:
        for port in self.masters:
            flush(port)

    def stop(self) -> None:
        self.cluster.stop()


def start_on_cluster(label: str, data_dir: Path, cluster: Cluster, *, processes: int,
                     rate: float, cpu: str | None, log: Path,
                     extra: dict[str, str] | None = None) -> procs.Server:
    """chatcast in cluster mode, each process seeded with its own node."""
    return procs.start_chatcast(
        label, data_dir, processes=processes, rate=rate, redis_url=cluster.seeds(1)[0],
        cpu=cpu, log=log, extra={"CHATCAST_REDIS_CLUSTER": "true", **(extra or {})},
        process_env=[{"REDIS_URL": seed} for seed in cluster.seeds(processes)],
        start_timeout_s=START_TIMEOUT_S)


def per_token(before: dict[str, int], after: dict[str, int], produced: int) -> dict[str, Any]:
    calls = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    calls = {k: v for k, v in calls.items() if v > 0}
    scripts = sum(calls.get(k, 0) for k in SCRIPT_CALLS)
    return {"commands": calls, "produced_tokens": produced,
            "commands_per_token": round(calls.get("total", 0) / produced, 3),
            "script_calls_per_token": round(scripts / produced, 3)}


class ClusterBench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.log = tmp / "servers.log"
        self.single = procs.Redis(args.loadgen_cpu, Path(tempfile.mkdtemp(dir=tmp)))
        pin(self.single.proc.pid, args.loadgen_cpu)
        self.cluster = Cluster.start(args.loadgen_cpu, Path(tempfile.mkdtemp(dir=tmp)))

    def stop(self) -> None:
        self.single.stop()
        self.cluster.stop()

    def start(self, label: str, *, rate: float,
              extra: dict[str, str] | None = None) -> procs.Server:
        _, kind, processes = next(s for s in SYSTEMS if s[0] == label)
        data = Path(tempfile.mkdtemp(dir=self.tmp))
        if kind == "cluster":
            return start_on_cluster(label, data, self.cluster, processes=processes, rate=rate,
                                    cpu=self.args.server_cpu, log=self.log, extra=extra)
        return procs.start_chatcast(label, data, processes=processes, rate=rate,
                                    redis_url=self.single.url, cpu=self.args.server_cpu,
                                    log=self.log, extra=extra, start_timeout_s=START_TIMEOUT_S)

    def side_cpu(self, label: str) -> dict[str, Callable[[], float]]:
        cores = {"core0": core_busy(int(self.args.server_cpu.split(",")[0])),
                 "core1": core_busy(int(self.args.loadgen_cpu.split(",")[0]))}
        if label.startswith("cluster"):
            return {"redis": self.cluster.cpu, "redis_masters": self.cluster.masters_cpu,
                    **cores}
        return {"redis": self.single.cpu, "redis_masters": self.single.cpu, **cores}

    def commandstats(self, label: str) -> dict[str, int]:
        return self.cluster.commandstats() if label.startswith("cluster") \
            else self.single.commandstats()

    def flush(self) -> None:
        """Nothing of one run stays in Redis for the next (logs are kept for minutes)."""
        flush(self.single.port)
        self.cluster.flush()

    async def fanout(self) -> dict[str, Any]:
        gens, tabs, rate = (30, 3, 50.0) if self.args.quick else (100, 3, 50.0)
        window = 3.0 if self.args.quick else 5.0
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label, *_ in SYSTEMS}
        for rep in range(self.args.repeats):
            for label, *_ in SYSTEMS:  # interleaved, so drifting machine noise hits all
                server = self.start(label, rate=rate)
                try:
                    before = self.commandstats(label)
                    r = await loadgen.fanout_run(Target(server.kind, server.ports), server.cpu,
                                                 gens=gens, tabs=tabs, rate=rate,
                                                 window_s=window, side_cpu=self.side_cpu(label))
                    after = self.commandstats(label)
                finally:
                    server.stop()
                    self.flush()
                d = r.as_dict()
                d["redis"] = per_token(before, after, gens * r.extra["tokens_per_gen"])
                d["loadavg"] = [round(x, 2) for x in os.getloadavg()]
                runs[label].append(d)
                side = r.extra["side_cpu"]
                print(f"  fanout {rep + 1}/{self.args.repeats} {label}: "
                      f"{r.cpu_us_per_frame} us/frame (Redis {side['redis']['us_per_frame']}), "
                      f"latency p99 {r.latency_ms['p99']} ms, correct={r.correct} "
                      f"{r.problems[:2]}", flush=True)
        return {"gens": gens, "tabs": tabs, "rate": rate, "window_s": window, "runs": runs,
                "summary": {label: summarise(rs) for label, rs in runs.items()}}

    async def sweep(self) -> dict[str, Any]:
        rate, tabs = 50.0, 3
        steps = [50, 100, 150] if self.args.quick else [50, 75, 100, 150, 200, 300]
        off = {"CHATCAST_COALESCE_MAX_MS": "0"}  # one frame per token: raw frame capacity
        servers = {label: self.start(label, rate=rate, extra=off) for label in SWEEP_SYSTEMS}
        points: dict[str, list[dict[str, Any]]] = {label: [] for label in SWEEP_SYSTEMS}
        going = set(SWEEP_SYSTEMS)
        try:
            for gens in steps:
                for label in SWEEP_SYSTEMS:
                    if label not in going:
                        continue
                    server = servers[label]
                    r = await loadgen.fanout_run(
                        Target(server.kind, server.ports), server.cpu, gens=gens, tabs=tabs,
                        rate=rate, window_s=3.0 if self.args.quick else 4.0, warmup_s=1.5,
                        drain_timeout_s=15, side_cpu=self.side_cpu(label))
                    side = r.extra["side_cpu"]
                    points[label].append({
                        "gens": gens, "offered_frames_per_s": gens * tabs * rate,
                        "frames_per_s": r.frames_per_s, "tokens_per_s": r.tokens_per_s,
                        "lateness_ms": r.lateness_ms, "latency_ms": r.latency_ms,
                        "server_cpu_util": r.server_cpu_util,
                        "cpu_us_per_frame": r.cpu_us_per_frame,
                        "loadgen_cpu_util": r.loadgen_cpu_util,
                        "redis_cpu_util": side["redis"]["util"],
                        "redis_us_per_frame": side["redis"]["us_per_frame"],
                        "core0_busy": side["core0"]["util"], "core1_busy": side["core1"]["util"],
                        "loadavg": [round(x, 2) for x in os.getloadavg()],
                        "correct": r.correct, "problems": r.problems[:3]})
                    print(f"  sweep {label} {gens} gens: {r.frames_per_s} frames/s, lateness "
                          f"p99 {r.lateness_ms['p99']} ms, servers {r.server_cpu_util}, Redis "
                          f"{side['redis']['util']}, core0 {side['core0']['util']} core1 "
                          f"{side['core1']['util']}, correct={r.correct}", flush=True)
                    if not within(points[label][-1]) or r.server_cpu_util > 0.97:
                        going.discard(label)
                if not going:
                    break
        finally:
            for server in servers.values():
                server.stop()
            self.flush()
        out: dict[str, Any] = {"rate": rate, "tabs": tabs, "limit_ms": LIMIT_MS, "systems": {}}
        for label, pts in points.items():
            ok = [p for p in pts if within(p) and p["correct"]]
            best = max(ok, key=lambda p: p["tokens_per_s"], default=None)
            out["systems"][label] = {
                "points": pts, "best": best,
                "max_frames_per_s": best["frames_per_s"] if best else 0.0,
                "max_tokens_per_s": best["tokens_per_s"] if best else 0.0,
                "saturated": saturated(pts)}
        return out


def within(point: dict[str, Any]) -> bool:
    """Kept up: p99 lateness within the limit and at least 95 % of the offered tokens
    delivered in the window (lateness alone misses generations that started late: each
    one's schedule is estimated from its own first frame)."""
    return bool(point["lateness_ms"]["p99"] <= LIMIT_MS
                and point["tokens_per_s"] >= 0.95 * point["offered_frames_per_s"])


def saturated(points: list[dict[str, Any]]) -> str:
    """What ran out at the last step measured: chatcast's core, the core of Redis and the
    load generator, the machine (both cores busy, with other work), or no core at all."""
    if not points:
        return "not measured"
    last = points[-1]
    if within(last) and last["server_cpu_util"] <= 0.97:
        return "nothing: the sweep's last step stayed within the limit"
    figures = (f"at {last['gens']} generations: core 0 {last['core0_busy']:.0%} busy, "
               f"chatcast's own share {last['server_cpu_util']:.0%}; core 1 "
               f"{last['core1_busy']:.0%} busy, Redis {last['redis_cpu_util']:.0%}, load "
               f"generator {last['loadgen_cpu_util']:.0%}")
    if last["server_cpu_util"] >= 0.9:
        which = "chatcast's core (core 0)"
    elif last["core0_busy"] >= 0.9 and last["core1_busy"] >= 0.9:
        which = "the machine: both cores full, much of them with other work"
    elif last["core0_busy"] >= 0.9:
        which = "core 0, partly with other work"
    elif last["core1_busy"] >= 0.9:
        which = "core 1 (Redis and the load generator, and other work)"
    else:
        which = "no core was full: lateness passed the limit with CPU to spare"
    return f"{which} ({figures})"


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def col(get: Callable[[dict[str, Any]], Any]) -> list[float]:
        return [float(get(r)) for r in runs]

    def side(name: str) -> Callable[[dict[str, Any]], dict[str, float]]:
        return lambda r: dict(r["extra"]["side_cpu"][name])

    out: dict[str, Any] = {
        "cpu_us_per_frame": stats(col(lambda r: r["cpu_us_per_frame"])),
        "cpu_us_per_token": stats(col(lambda r: r["cpu_us_per_token"])),
        "redis_us_per_frame": stats(col(lambda r: side("redis")(r)["us_per_frame"])),
        "redis_masters_us_per_frame": stats(
            col(lambda r: side("redis_masters")(r)["us_per_frame"])),
        "redis_us_per_token": stats(col(lambda r: side("redis")(r)["cpu_s"] * 1e6
                                        / max(r["tokens"], 1))),
        "redis_cpu_util": stats(col(lambda r: side("redis")(r)["util"])),
        "frames_per_s": stats(col(lambda r: r["frames_per_s"])),
        "latency_p50_ms": stats(col(lambda r: r["latency_ms"]["p50"])),
        "latency_p99_ms": stats(col(lambda r: r["latency_ms"]["p99"])),
        "lateness_p99_ms": stats(col(lambda r: r["lateness_ms"]["p99"])),
        "server_cpu_util": stats(col(lambda r: r["server_cpu_util"])),
        "commands_per_token": stats(col(lambda r: r["redis"]["commands_per_token"])),
        "script_calls_per_token": stats(col(lambda r: r["redis"]["script_calls_per_token"])),
        "completed_share": stats(col(lambda r: r["completed"] / (r["gens"] * r["tabs"]))),
        "correct": all(r["correct"] for r in runs)}
    return out


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    f = res["fanout"]
    s = f["summary"]
    spread = report.spread
    lines = [f"# chatcast on Redis Cluster vs one Redis — {res['started']}", "",
             f"{m['cpus']} CPUs, Python {m['python']}, redis-server {m['redis']}; chatcast "
             f"processes pinned to core {m['server_cpu']}, the load generator and every "
             f"redis-server to core {m['loadgen_cpu']}; commit {m['commit']}; "
             f"{res['repeats']} repeats, median (min–max); {res['elapsed_s']} s in all. "
             f"Load average (1 min) at the start {res['loadavg_start'][0]}, at the end "
             f"{res['loadavg_end'][0]}, over the runs {res['loadavg_range'][0]}–"
             f"{res['loadavg_range'][1]}: other work shared both cores.", "",
             "Cluster: 3 masters + 3 replicas (six redis-server processes, node timeout 2 s); "
             "the 2 processes are seeded with different nodes (a master; a replica of "
             "another shard). Every system is started afresh for every run; Redis is "
             "flushed between runs.", "",
             f"## 1. Fan-out: {f['gens']} generations × {f['tabs']} tabs, R = "
             f"{f['rate']:g} tokens/s, {f['window_s']:g} s window", "",
             "| system | chatcast CPU µs / frame | × one Redis | µs / token | Redis CPU µs / "
             "frame (all nodes) | masters only | Redis µs / token | frames/s | latency p50 ms "
             "| latency p99 ms | lateness "
             "p99 ms | chatcast CPU | Redis CPU | Redis commands / token | script calls / "
             "token | tabs completed | exact |",
             "|" + "---|" * 17]
    for label, _, processes in SYSTEMS:
        v = s[label]
        single = s[f"one Redis, {processes} process{'es' if processes > 1 else ''}"]
        ratio = v["cpu_us_per_frame"]["median"] / single["cpu_us_per_frame"]["median"]
        lines.append(
            f"| {label} | {spread(v['cpu_us_per_frame'])} | {ratio:.2f} | "
            f"{spread(v['cpu_us_per_token'])} | "
            f"{spread(v['redis_us_per_frame'])} | {spread(v['redis_masters_us_per_frame'])} | "
            f"{spread(v['redis_us_per_token'])} | "
            f"{v['frames_per_s']['median']:,.0f} | {spread(v['latency_p50_ms'], 2)} | "
            f"{spread(v['latency_p99_ms'], 2)} | {spread(v['lateness_p99_ms'])} | "
            f"{v['server_cpu_util']['median']:.0%} | {v['redis_cpu_util']['median']:.0%} | "
            f"{spread(v['commands_per_token'], 2)} | {spread(v['script_calls_per_token'], 3)} "
            f"| {v['completed_share']['min']:.0%} | {'yes' if v['correct'] else 'NO'} |")
    lines += ["", "chatcast CPU: utime+stime of the server processes over the window ÷ frames "
              "delivered in it (per token: ÷ tokens delivered, counted per tab; a loaded server "
              "merges tokens into fewer frames, so per token is the like-for-like figure when "
              "frames/s differ); Redis CPU: the same for the redis-server processes (on the "
              "cluster the replicas' share is the difference between the two columns). "
              "Commands per produced token are summed over the masters (INFO commandstats; "
              "the commands inside scripts and functions are counted); script calls are "
              "EVALSHA on one Redis, FCALL on the cluster (one per master per loop turn). Tabs "
              "completed: the lowest share over the runs of tabs whose answer ended "
              "`completed` (a run that falls behind stops the rest after its drain time); "
              "exact: every tab's text equals its `done.sha256` and, if completed, the "
              "expected reply, with no duplicate.", ""]
    w = res["sweep"]
    lines += [f"## 2. Throughput: 2 processes, R = {w['rate']:g}, {w['tabs']} tabs per "
              f"generation, coalescing off, until p99 lateness > {w['limit_ms']:g} ms", "",
              "| system | generations | offered tokens/s | delivered tokens/s | in frames/s | "
              "lateness p99 ms | chatcast CPU | Redis CPU | load generator CPU | core 0 busy | "
              "core 1 busy | kept up | exact |", "|" + "---|" * 13]
    for label, v in w["systems"].items():
        for p in v["points"]:
            lines.append(
                f"| {label} | {p['gens']} | {p['offered_frames_per_s']:,.0f} | "
                f"{p['tokens_per_s']:,.0f} | {p['frames_per_s']:,.0f} | "
                f"{p['lateness_ms']['p99']:,.1f} | "
                f"{p['server_cpu_util']:.0%} | {p['redis_cpu_util']:.0%} | "
                f"{p['loadgen_cpu_util']:.0%} | {p['core0_busy']:.0%} | "
                f"{p['core1_busy']:.0%} | {'yes' if within(p) else 'no'} | "
                f"{'yes' if p['correct'] else 'NO'} |")
    lines.append("")
    swept = w["systems"]
    a, b = (swept[label]["max_tokens_per_s"] for label in SWEEP_SYSTEMS)
    fa, fb = (swept[label]["max_frames_per_s"] for label in SWEEP_SYSTEMS)
    lines.append(f"Highest load kept up with (p99 lateness ≤ {w['limit_ms']:g} ms and ≥ 95 % of "
                 f"the offered tokens delivered): one Redis {a:,.0f} tokens/s in {fa:,.0f} "
                 f"frames/s, cluster {b:,.0f} tokens/s in {fb:,.0f} frames/s "
                 f"({b / a if a else float('nan'):.2f}×).")
    for label in SWEEP_SYSTEMS:
        lines.append(f"- {label}: {swept[label]['saturated']}.")
    lines += ["", "Tokens are counted per tab (a token delivered to 3 tabs counts 3 times). "
              "With coalescing off chatcast still takes the provider chunks that arrived while "
              "it was busy as one delta, so a loaded server sends fewer frames than tokens. "
              "Core busy shares come from /proc/stat and include every process on the "
              "core (the machine's other work too); chatcast, Redis and load generator CPU are "
              "those processes' own, as a share of one core.", ""]
    return "\n".join(lines)


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "kernel": platform.release(), "server_cpu": args.server_cpu,
                    "loadgen_cpu": args.loadgen_cpu,
                    "redis": redis_version(),
                    "commit": _git("rev-parse", "--short", "HEAD")},
        "quick": args.quick, "repeats": args.repeats,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory(prefix="chatcast-cluster-bench-") as tmp:
        bench = ClusterBench(args, Path(tmp))
        try:
            print("== fan-out", flush=True)
            out["fanout"] = await bench.fanout()
            print("== throughput sweep", flush=True)
            out["sweep"] = await bench.sweep()
        finally:
            bench.stop()
    out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    seen = [r["loadavg"][0] for rs in out["fanout"]["runs"].values() for r in rs]
    seen += [p["loadavg"][0] for v in out["sweep"]["systems"].values() for p in v["points"]]
    out["loadavg_range"] = [min(seen), max(seen)]
    return out


def redis_version() -> str:
    import subprocess

    done = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
    word = next((w for w in done.stdout.split() if w.startswith("v=")), "v=?")
    return word.removeprefix("v=")


def rewrite(path: Path) -> None:
    """cluster.md again from the figures in cluster.json (after a change to the report)."""
    res = json.loads(path.read_text())
    for label, rs in res["fanout"]["runs"].items():
        res["fanout"]["summary"][label] = summarise(rs)
    path.with_suffix(".md").write_text(markdown(res))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small loads, short windows")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--loadgen-cpu", default="1")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite cluster.md from the cluster.json in --out, run nothing")
    args = parser.parse_args()
    if args.report_only:
        rewrite(args.out / "cluster.json")
        return
    result = run_pinned(run_all(args), args.loadgen_cpu)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cluster.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "cluster.md").write_text(markdown(result))
    print(f"results in {args.out}/cluster.md ({result['elapsed_s']} s)")


if __name__ == "__main__":
    main()
