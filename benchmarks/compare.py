"""The whole-job scenario against several checkouts of the server, interleaved in one run, so
that each change is measured on its own against the one before it on the same machine at
the same moment (the machine's noise hits every variant alike).

    git archive <commit> | tar -x -C /tmp/before      # one directory per variant
    python -m benchmarks.compare before=/tmp/before after=. \\
        --systems "memory bus, SQLite|memory bus, PostgreSQL" --repeats 3

Writes results/compare.json and results/compare.md (median and min-max of each figure per
system and variant; the baseline runs once per repeat).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from benchmarks import procs, run, wholejob
from benchmarks.loadgen import Target
from benchmarks.report import spread


async def compare(variants: list[tuple[str, Path]], systems: list[str], repeats: int,
                  quick: bool) -> dict[str, Any]:
    args = argparse.Namespace(server_cpu="0", loadgen_cpu="1", quick=quick, systems=None,
                              repeats=repeats, profile=False, out=run.RESULTS)
    load = run.QUICK_WHOLEJOB_LOAD if quick else run.WHOLEJOB_LOAD
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="chatcast-compare-") as tmp:
        bench = run.Bench(args, Path(tmp))
        redis = bench.redis()
        try:
            for rep in range(repeats):
                for label, kind, db, n in run.WHOLEJOB_SYSTEMS:
                    if kind != "baseline" and label not in systems:
                        continue
                    for name, src in variants if kind != "baseline" else variants[:1]:
                        procs.SERVER_SRC = src
                        key = label if kind == "baseline" else f"{label} [{name}]"
                        # No shared template: each variant migrates with its own code.
                        fresh = await bench.fresh(label, kind, db, n, redis, None)
                        try:
                            r = await wholejob.run(Target(fresh.server.kind,
                                                          fresh.server.ports),
                                                   fresh.server, load)
                        finally:
                            await fresh.close()
                        runs.setdefault(key, []).append(r)
                        print(f"  {rep + 1}/{repeats} {key}: {r['cpu_us_per_frame']} us/frame, "
                              f"p99 {r['latency_ms']['p99']} ms, burst TTFT p99 "
                              f"{r['burst_ttft_ms']['p99']} ms, stall "
                              f"{r['longest_stall_ms']} ms, correct={r['correct']}", flush=True)
        finally:
            redis.stop()
    return {"started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "quick": quick,
            "variants": {name: str(src) for name, src in variants}, "runs": runs,
            "summary": {key: run.summarise_wholejob(rs) for key, rs in runs.items()}}


def markdown(res: dict[str, Any]) -> str:
    lines = [f"# Whole job, variants compared — {res['started']}", "",
             "Variants: " + ", ".join(f"`{k}` = {v}" for k, v in res["variants"].items()), "",
             "| system [variant] | CPU µs / frame | latency p99 ms | burst TTFT p50 ms | "
             "burst TTFT p99 ms | longest stall ms | exact |", "|---|---|---|---|---|---|---|"]
    for key, v in res["summary"].items():
        lines.append(f"| {key} | {spread(v['cpu_us_per_frame'])} | "
                     f"{spread(v['latency_p99_ms'])} | {spread(v['burst_ttft_p50_ms'], 0)} | "
                     f"{spread(v['burst_ttft_p99_ms'], 0)} | "
                     f"{spread(v['longest_stall_ms'], 0)} | "
                     f"{'yes' if v['correct'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+", help="name=directory of a server checkout")
    parser.add_argument("--systems", default="memory bus, SQLite|memory bus, PostgreSQL",
                        help="|-separated whole-job system labels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=run.RESULTS)
    args = parser.parse_args()
    variants = [(v.split("=", 1)[0], Path(v.split("=", 1)[1]).resolve())
                for v in args.variants]
    run.raise_nofile()
    with run.affinity("1"):
        res = uvloop.run(compare(variants, args.systems.split("|"), args.repeats,
                                 args.quick))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.json").write_text(json.dumps(res, indent=1) + "\n")
    (args.out / "compare.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
