"""bench.json → bench.md (tables, targets) and PNG plots."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

BASE = "baseline (websockets)"
MEM = "memory bus, 1 process"
R1 = "Redis bus, 1 process"
R2 = "Redis bus, 2 processes"
WJ_MEM = "memory bus, SQLite"
WJ_R2 = "Redis bus, 2 processes, PostgreSQL"
COALESCING_ON = "chatcast, coalescing on"


def _fmt(x: Any, nd: int = 1) -> str:
    if isinstance(x, float) and math.isnan(x):
        return "–"
    if isinstance(x, int | float):
        return f"{x:,.{nd}f}"
    return str(x)


def spread(s: dict[str, float], nd: int = 1) -> str:
    return f"{_fmt(s['median'], nd)} ({_fmt(s['min'], nd)}–{_fmt(s['max'], nd)})"


#: (scenario, system label) behind a target: the system a profile of it would sample.
Key = tuple[str, str] | None
Row = tuple[str, str, str, bool | None, Key]


def targets(res: dict[str, Any]) -> list[Row]:
    """(target, measured, how, met, (scenario, system)) for every target the run can
    judge."""
    sc = res["scenarios"]
    out: list[Row] = []
    if "fanout" in sc:
        s = sc["fanout"]["summary"]
        base = s[BASE]["cpu_us_per_frame"]["median"]
        for label, limit in ((R2, 2.2), (R1, 1.8), (MEM, 1.2)):
            ratio = s[label]["cpu_us_per_frame"]["median"] / base
            out.append((f"CPU per delivered frame, {label} ≤ {limit}× baseline",
                        f"{ratio:.2f}×", "scenario 1, medians", ratio <= limit,
                        ("fanout", label)))
        p99 = s[R2]["latency_p99_ms"]["median"]
        out.append(("p99 delivery latency ≤ 5 ms (Redis, 2 processes)", f"{p99:.2f} ms",
                    "scenario 1, median of runs", p99 <= 5, ("fanout", R2)))
    if "saturation" in sc:
        best = sc["saturation"]["systems"].get(MEM, {}).get("max_frames_per_s", 0.0)
        out.append(("saturation ≥ 50,000 frames/s per process", f"{best:,.0f} frames/s",
                    "scenario 2, highest load with p99 lateness ≤ 100 ms", best >= 50000,
                    ("saturation", MEM)))
    systems = sc.get("coalescing", {}).get("systems", {})
    if COALESCING_ON in systems and BASE in systems:
        on = systems[COALESCING_ON]
        base = systems[BASE]["max_tokens_per_s"]
        ratio = on["max_tokens_per_s"] / base if base else 0.0
        p99 = on["best"]["lateness_ms"]["p99"] if on["best"] else float("nan")
        out.append(("≥ 3× baseline delivered tokens/s at R=200 (coalescing), p99 ≤ 50 ms",
                    f"{ratio:.2f}× ({on['max_tokens_per_s']:,.0f} vs {base:,.0f}), "
                    f"p99 {p99:.0f} ms", "scenario 3, highest load with p99 lateness ≤ 50 ms",
                    ratio >= 3, ("coalescing", COALESCING_ON)))
    if "idle" in sc:
        kib = sc["idle"][MEM]["kib_per_socket"]
        out.append(("≤ 22 KiB per idle subscribed socket", f"{kib:.1f} KiB", "scenario 4",
                    kib <= 22, None))
    if "ttft_stop" in sc:
        p99 = sc["ttft_stop"]["stop_redis_2_processes"]["other_tab"]["p99_ms"]
        out.append(("stop p99 ≤ 50 ms across processes", f"{p99:.1f} ms", "scenario 5",
                    p99 <= 50, None))
    if "wholejob" in sc:
        w = sc["wholejob"]
        s = w["summary"]
        base = s[BASE]["cpu_us_per_frame"]["median"]
        burst = w["load"]["burst"]
        for label, limit, p99_limit in ((WJ_MEM, 1.5, 5.0), (WJ_R2, 2.0, 10.0)):
            if label not in s:
                continue
            v = s[label]
            ratio = v["cpu_us_per_frame"]["median"] / base
            per_token = v["cpu_us_per_token"]["median"] / s[BASE]["cpu_us_per_token"]["median"]
            out.append((f"whole job, {label}: CPU per delivered frame ≤ {limit}× baseline",
                        f"{ratio:.2f}× ({spread(v['cpu_us_per_frame'])} vs "
                        f"{spread(s[BASE]['cpu_us_per_frame'])} µs); per delivered token "
                        f"{per_token:.2f}×", "scenario 7, medians", ratio <= limit,
                        ("wholejob", label)))
            p99 = v["latency_p99_ms"]
            out.append((f"whole job, {label}: p99 latency ≤ {p99_limit:g} ms, no warm-up cut",
                        f"{spread(p99, 1)} ms", "scenario 7, every delta",
                        p99["median"] <= p99_limit, ("wholejob", label)))
        if WJ_MEM in s:
            ttft = s[WJ_MEM]["burst_ttft_p99_ms"]
            out.append((f"whole job, {WJ_MEM}: time to first token p99 ≤ 50 ms, burst of "
                        f"{burst} sends", f"{spread(ttft, 1)} ms", "scenario 7, the burst",
                        None if burst < 100 else ttft["median"] <= 50,
                        ("wholejob", WJ_MEM)))
    return out


def bounded_by(res: dict[str, Any], met: bool | None, key: Key, target: str) -> str:
    """The profile behind an unmet target: a link and its biggest groups by own time."""
    if met is not False:
        return ""
    if key is None:
        return ("– (a memory figure: a CPU profile does not bound it)" if "KiB" in target
                else "– (not profiled)")
    scenario, label = key
    prof = res["scenarios"].get(scenario, {}).get("profiles", {}).get(label)
    if prof is None:
        return "– (not profiled: run with --profile)"
    if "error" in prof:
        return f"profile failed: {prof['error']}"
    return f"[{scenario}: {label}]({prof['md']}): {prof['headline']}"


def elapsed_section(res: dict[str, Any]) -> list[str]:
    """Where the run's time went, per scenario."""
    rows = [(name, sc) for name, sc in res["scenarios"].items() if "elapsed_s" in sc]
    if not rows:
        return []
    lines = ["", "## Time", "", "| scenario | elapsed s | of which: starting and stopping "
             "servers, databases s | profiled extra runs s |", "|---|---|---|---|"]
    for name, sc in rows:
        lines.append(f"| {name} | {sc['elapsed_s']:.1f} | {sc.get('start_stop_s', 0):.1f} | "
                     f"{sc.get('profile_s', 0):.1f} |")
    total = res.get("elapsed_s")
    lines.append(f"| **total** (with writing the report) | "
                 f"**{total if total is not None else '?'}** | "
                 f"{sum(sc.get('start_stop_s', 0) for _, sc in rows):.1f} | "
                 f"{sum(sc.get('profile_s', 0) for _, sc in rows):.1f} |")
    return lines


def _sweep(lines: list[str], title: str, columns: list[str], systems: dict[str, Any],
           row: Callable[[dict[str, Any]], list[str]],
           best: Callable[[dict[str, Any]], str]) -> None:
    """A load sweep (saturation, high rate) as one table: a row per point of every system,
    then what each system sustained within the latency limit."""
    lines += ["", title, "", "| " + " | ".join(["system", *columns]) + " |",
              "|" + "---|" * (len(columns) + 1)]
    for label, v in systems.items():
        lines += ["| " + " | ".join([label, *row(p)]) + " |" for p in v["points"]]
    lines.append("")
    for label, v in systems.items():
        lines.append(f"- {label}: {best(v)} within the latency limit")


def markdown(res: dict[str, Any]) -> str:
    sc = res["scenarios"]
    m = res["machine"]
    lines = [f"# chatcast benchmarks — {res['started']}", "",
             f"{m['cpus']} CPUs, Python {m['python']}, kernel {m['kernel']}; servers pinned to "
             f"core {m['server_cpu']}, load generator (and Redis) to core {m['loadgen_cpu']}; "
             f"commit {m['commit']}; {res['repeats']} repeats, median (min–max)"
             f"{'; QUICK run' if res['quick'] else ''}. Total {res.get('elapsed_s', '?')} s.",
             ""]
    lines += ["## Targets", "", "| target | measured | where | met | bounded by (profile of "
              "an extra run of the same system, same load) |", "|---|---|---|---|---|"]
    for target, measured, how, met, behind in targets(res):
        lines.append(f"| {target} | {measured} | {how} | "
                     f"{'yes' if met else 'no' if met is not None else '–'} | "
                     f"{bounded_by(res, met, behind, target)} |")
    lines += elapsed_section(res)
    if "fanout" in sc:
        f = sc["fanout"]
        s = f["summary"]
        base = s[BASE]["cpu_us_per_frame"]["median"]
        lines += ["", f"## 1. Fan-out: {f['gens']} generations × {f['tabs']} tabs, "
                  f"R = {f['rate']:g} tokens/s", "",
                  "| system | CPU µs / frame | × baseline | frames/s | latency p50 ms | "
                  "latency p99 ms | lateness p99 ms | server CPU | Redis appends / "
                  "token | exact |", "|---|---|---|---|---|---|---|---|---|---|"]
        for label, v in s.items():
            ratio = v["cpu_us_per_frame"]["median"] / base
            rt = v.get("redis_round_trips_per_token")
            lines.append(
                f"| {label} | {spread(v['cpu_us_per_frame'])} | {ratio:.2f} | "
                f"{_fmt(v['frames_per_s']['median'], 0)} | {spread(v['latency_p50_ms'], 2)} | "
                f"{spread(v['latency_p99_ms'], 2)} | {spread(v['lateness_p99_ms'], 1)} | "
                f"{_fmt(v['server_cpu_util']['median'] * 100, 0)} % | "
                f"{spread(rt, 2) if rt else '–'} | {'yes' if v['correct'] else 'NO'} |")
        for label in (R1, R2):
            runs = f["runs"].get(label) or []
            if runs and "redis" in runs[-1]:
                r = runs[-1]["redis"]
                cmds = ", ".join(f"{k} {v}" for k, v in sorted(r["commands"].items())
                                 if k != "total")
                lines.append(f"\nRedis commands, {label} (last run, {r['produced_tokens']} "
                             f"tokens produced): {cmds}; {r['commands_per_token']} commands "
                             f"and {r['round_trips_per_token']} append calls (EVALSHA; one "
                             "carries all appends of a loop turn) per produced token, "
                             f"{r['round_trips_per_delivered_token']} per delivered token.")
    if "saturation" in sc:
        s = sc["saturation"]
        _sweep(lines, f"## 2. Saturation (R = {s['rate']:g}, {s['tabs']} tabs per generation, "
               f"1 process, until p99 lateness > {s['limit_ms']} ms; chatcast with "
               "coalescing off, one frame per token like the baseline)",
               ["generations", "offered frames/s", "delivered frames/s", "lateness p99 ms",
                "server CPU", "load generator CPU"], s["systems"],
               lambda p: [str(p["gens"]), _fmt(p["offered_frames_per_s"], 0),
                          _fmt(p["frames_per_s"], 0), _fmt(p["lateness_ms"]["p99"]),
                          f"{_fmt(p['server_cpu_util'] * 100, 0)} %",
                          f"{_fmt(p['loadgen_cpu_util'] * 100, 0)} %"],
               lambda v: f"**{v['max_frames_per_s']:,.0f} frames/s** sustained")
    if "coalescing" in sc:
        c = sc["coalescing"]
        _sweep(lines, f"## 3. High rate: R = {c['rate']:g}, {c['tabs']} tabs per generation, "
               f"1 process, until p99 lateness > {c['limit_ms']:g} ms",
               ["generations", "offered tokens/s", "delivered tokens/s", "frames/s",
                "tokens / frame", "CPU µs / token", "lateness p99 ms", "latency p99 ms",
                "server CPU", "exact"], c["systems"],
               lambda p: [str(p["gens"]), _fmt(p["offered_tokens_per_s"], 0),
                          _fmt(p["tokens_per_s"], 0), _fmt(p["frames_per_s"], 0),
                          str(p["tokens_per_frame"]), _fmt(p["cpu_us_per_token"]),
                          _fmt(p["lateness_ms"]["p99"]), _fmt(p["latency_ms"]["p99"]),
                          f"{_fmt(p['server_cpu_util'] * 100, 0)} %",
                          "yes" if p["correct"] else "NO"],
               lambda v: f"**{v['max_tokens_per_s']:,.0f} tokens/s** delivered")
    if "idle" in sc:
        i = sc["idle"]
        lines += ["", f"## 4. Idle: {i['sockets']:,} open subscribed sockets", "",
                  "| system | RSS before MiB | RSS after MiB | per socket |", "|---|---|---|---|"]
        for label in (BASE, MEM):
            if label in i:
                v = i[label]
                lines.append(f"| {label} | {v['rss_before_mib']} | {v['rss_after_mib']} | "
                             f"{v['kib_per_socket']} KiB |")
    if "ttft_stop" in sc:
        t = sc["ttft_stop"]
        lines += ["", f"## 5. Time to first token and stop ({t['trials']} trials)", "",
                  "| system | client TTFT p50 / p99 ms | provider's own p50 / p99 ms | "
                  "overhead p50 / p99 ms |", "|---|---|---|---|"]
        for label in (BASE, MEM):
            if label in t:
                v = t[label]
                prov = v.get("provider_ttft_ms")
                over = v.get("overhead_ms")
                prov_s = f"{prov['p50']} / {prov['p99']}" if prov else "≈ 0 (demo)"
                over_s = f"{over['p50']} / {over['p99']}" if over else "–"
                lines.append(
                    f"| {label} | {v['client_ttft_ms']['p50']} / {v['client_ttft_ms']['p99']} | "
                    f"{prov_s} | {over_s} |")
        lines += ["", "| stop (frame on tab B → done on both tabs) | stopping tab p50 / p99 ms "
                  "| other tab p50 / p99 ms |", "|---|---|---|"]
        for key, label in (("stop_memory_1_process", "memory bus, 1 process"),
                           ("stop_redis_2_processes", "Redis bus, 2 processes (across)")):
            if key in t:
                v = t[key]
                lines.append(f"| {label} | {v['stopping_tab']['p50_ms']} / "
                             f"{v['stopping_tab']['p99_ms']} | {v['other_tab']['p50_ms']} / "
                             f"{v['other_tab']['p99_ms']} |")
    if "slow" in sc:
        s = sc["slow"]
        a, b = s["without"], s["with_slow_tab"]
        x = b["extra"]
        lines += ["", f"## 6. Slow consumer ({s['gens']} generations × {s['tabs']} tabs, plus "
                  "one tab watching every chat that stops reading)", "",
                  "| | others' latency p50 / p99 ms | lateness p99 ms | server CPU µs / frame "
                  "| exact |", "|---|---|---|---|---|",
                  f"| without the slow tab | {a['latency_ms']['p50']} / {a['latency_ms']['p99']} "
                  f"| {a['lateness_ms']['p99']} | {a['cpu_us_per_frame']} | {a['correct']} |",
                  f"| with the slow tab | {b['latency_ms']['p50']} / {b['latency_ms']['p99']} "
                  f"| {b['lateness_ms']['p99']} | {b['cpu_us_per_frame']} | {b['correct']} |",
                  "", f"The slow tab was closed with code {x.get('slow_close_code')}; server "
                  f"RSS {x.get('rss_first_mib')} MiB when it stopped reading, at most "
                  f"{x.get('rss_max_mib')} MiB afterwards."]
    if "wholejob" in sc:
        lines += wholejob_section(sc["wholejob"])
    return "\n".join(lines) + "\n"


def wholejob_section(w: dict[str, Any]) -> list[str]:
    load, s = w["load"], w["summary"]
    base = s[BASE]["cpu_us_per_frame"]["median"]
    lines = ["", f"## 7. The whole job: {load['generations']} generations "
             f"({load['tabs']} tabs, {load['tokens']:,} tokens), Poisson "
             f"{load['poisson_per_s']:g}/s over {load['span_s']:g} s plus a burst of "
             f"{load['burst']} sends in one second at {load['burst_at_s']:g} s; answers "
             f"≤ {load['max_answer_s']:g} s; chat creation and first message included; every "
             "system started afresh per run", "",
             "| system | CPU µs / frame | × baseline | CPU µs / token | × baseline | "
             "latency p50 ms | "
             "p99 ms | max ms | TTFT p50 / p99 ms (all) | burst TTFT p50 ms | burst TTFT p99 "
             "ms | longest stall ms | server CPU | exact |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base_token = s[BASE]["cpu_us_per_token"]["median"]
    for label, v in s.items():
        ratio = v["cpu_us_per_frame"]["median"] / base
        lines.append(
            f"| {label} | {spread(v['cpu_us_per_frame'])} | {ratio:.2f} | "
            f"{spread(v['cpu_us_per_token'])} | "
            f"{v['cpu_us_per_token']['median'] / base_token:.2f} | "
            f"{spread(v['latency_p50_ms'], 2)} | "
            f"{spread(v['latency_p99_ms'], 1)} | {spread(v['latency_max_ms'], 0)} | "
            f"{_fmt(v['ttft_p50_ms']['median'])} / {_fmt(v['ttft_p99_ms']['median'])} | "
            f"{spread(v['burst_ttft_p50_ms'], 1)} | {spread(v['burst_ttft_p99_ms'], 1)} | "
            f"{spread(v['longest_stall_ms'], 0)} | "
            f"{_fmt(v['server_cpu_util']['median'] * 100, 0)} % | "
            f"{'yes' if v['correct'] else 'NO'} |")
    lines += ["", "CPU is the server processes' own (PostgreSQL and Redis are separate "
              "servers, not counted; SQLite runs inside chatcast and is). A busy chatcast "
              "merges tokens into fewer frames (adaptive coalescing) where the baseline sends "
              "one frame per token, so per token is the like-for-like ratio when they differ."]
    return lines


def plots(res: dict[str, Any], out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the `bench` extra is not installed: tables only
        return []
    made: list[str] = []
    sc = res["scenarios"]
    if "fanout" in sc:
        s = sc["fanout"]["summary"]
        labels = list(s)
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, key, title in ((axes[0], "cpu_us_per_frame", "server CPU µs per delivered frame"),
                               (axes[1], "latency_p99_ms", "delivery latency p99 (ms)")):
            med = [s[label][key]["median"] for label in labels]
            lo = [m - s[label][key]["min"] for m, label in zip(med, labels, strict=True)]
            hi = [s[label][key]["max"] - m for m, label in zip(med, labels, strict=True)]
            ax.bar(range(len(labels)), med, yerr=[lo, hi], capsize=4,
                   color=["#888"] + ["#2a7ab9"] * (len(labels) - 1))
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels([label.replace(", ", "\n") for label in labels], fontsize=8)
            ax.set_title(title)
        f = sc["fanout"]
        fig.suptitle(f"Fan-out: {f['gens']} generations × {f['tabs']} tabs at "
                     f"{f['rate']:g} tokens/s (median, min–max)")
        fig.tight_layout()
        fig.savefig(out / "fanout.png", dpi=110)
        plt.close(fig)
        made.append("fanout.png")
    if "saturation" in sc:
        made.append(_sweep_plot(plt, sc["saturation"]["systems"], out / "saturation.png",
                                unit="frames", limit_ms=100,
                                title="delivered frames/s (1 process)"))
    if "coalescing" in sc:
        c = sc["coalescing"]
        made.append(_sweep_plot(plt, c["systems"], out / "coalescing.png", unit="tokens",
                                limit_ms=c["limit_ms"],
                                title=f"delivered tokens/s at R = {c['rate']:g} (1 process)"))
    return made


def _sweep_plot(plt: Any, systems: dict[str, Any], path: Path, *, unit: str, limit_ms: float,
                title: str) -> str:
    """Delivered vs offered, and p99 lateness, for a load sweep of several systems."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, v in systems.items():
        xs = [p[f"offered_{unit}_per_s"] for p in v["points"]]
        axes[0].plot(xs, [p[f"{unit}_per_s"] for p in v["points"]], "o-", label=label)
        axes[1].plot(xs, [p["lateness_ms"]["p99"] for p in v["points"]], "o-", label=label)
    axes[0].set_title(title)
    axes[1].set_title("p99 lateness vs schedule (ms)")
    axes[1].set_yscale("log")
    axes[1].axhline(limit_ms, color="red", lw=0.8, ls="--")
    for ax in axes:
        ax.set_xlabel(f"offered {unit}/s")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def write(res: dict[str, Any], out: Path) -> None:
    made = plots(res, out)
    text = markdown(res)
    if made:
        text += "\n" + "\n".join(f"![{name}]({name})" for name in made) + "\n"
    (out / "bench.md").write_text(text)
