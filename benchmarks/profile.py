"""py-spy profiles of the servers under test, and their summaries.

`record(pids, raw_path)` samples every process of a system with `py-spy record` (raw,
"collapsed stack" output: one line per distinct stack, `frame;frame;… count`, root first)
while the `async with` block runs; `summarise(text)` groups the samples by where the code
lives (SQLAlchemy, the database drivers, redis-py, chatcast's own modules, uvicorn and
websockets, asyncio, …) by own time (the innermost frame) and cumulative time (a group
anywhere on the stack), and lists the top functions either way; `write(...)` puts the
summary in `<name>.md` and the collapsed stacks (paths shortened) in `<name>.txt`, which
`flamegraph.pl` or speedscope read as they are.

A profiled run is always an extra run: py-spy stops the process for each sample, which
would show up in the measured CPU and latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Samples per second per process (py-spy's default is 100).
RATE = 200

#: (group, pattern on the frame's file path), first match wins.
GROUPS: tuple[tuple[str, str], ...] = (
    ("SQLAlchemy", r"/sqlalchemy/"),
    ("drivers (aiosqlite, sqlite3, asyncpg)", r"/(aiosqlite|sqlite3|asyncpg|psycopg\w*)/"),
    ("redis-py", r"/redis/"),
    ("chatcast", r"(^|/)(chatcast|core|server|store|providers|clients)/"),
    ("uvicorn, websockets, starlette, httptools", r"/(uvicorn|websockets|starlette|httptools|"
                                                   r"h11|wsproto|fastapi)/"),
    ("pydantic, orjson, prometheus", r"/(pydantic\w*|orjson|prometheus_client)/"),
    ("greenlet", r"/greenlet/"),
    ("asyncio, threading (stdlib)", r"/(asyncio|concurrent|threading|selectors|queue)\b"),
    ("uvloop", r"/uvloop/"),
)
OTHER = "other"
#: A stack that ends in asyncio's Runner.run: the event loop's own C code (uvloop: polling,
#: timers, task steps), which py-spy does not see into.
LOOP = "event loop itself (uvloop, C)"
_FRAME = re.compile(r"^(?P<func>.*) \((?P<path>[^()]*)\)$")
_SITE = re.compile(r"^(.*/(site-packages|dist-packages)/|.*?/lib/python3\.\d+/)")


_OURS = ("chatcast", "core", "server", "store", "providers", "clients")


def group_of(path: str, repo: str = "") -> str:
    if repo and path.startswith(repo.rstrip("/") + "/") and not _SITE.match(path):
        top = path[len(repo.rstrip("/")) + 1:].split("/", 1)[0]
        return "chatcast" if top in _OURS else "benchmarks (load generator, baseline)"
    for name, pattern in GROUPS:
        if re.search(pattern, path):
            return name
    return OTHER


def short_path(path: str, repo: str = "") -> str:
    """A frame's file with the interpreter's and the checkout's prefixes cut off."""
    if _SITE.match(path):
        return _SITE.sub("", path)
    if repo and path.startswith(repo.rstrip("/") + "/"):
        return path[len(repo.rstrip("/")) + 1:]
    return _SITE.sub("", path)


@dataclass
class Summary:
    samples: int = 0
    own_groups: Counter[str] = field(default_factory=Counter)
    cum_groups: Counter[str] = field(default_factory=Counter)
    own_funcs: Counter[str] = field(default_factory=Counter)
    cum_funcs: Counter[str] = field(default_factory=Counter)

    def share(self, n: int) -> float:
        return round(100 * n / self.samples, 1) if self.samples else 0.0

    def as_dict(self, top: int = 15) -> dict[str, Any]:
        return {"samples": self.samples,
                "own_by_group": {g: self.share(n) for g, n in self.own_groups.most_common()},
                "cumulative_by_group": {g: self.share(n)
                                        for g, n in self.cum_groups.most_common()},
                "top_own": [(f, self.share(n)) for f, n in self.own_funcs.most_common(top)],
                "top_cumulative": [(f, self.share(n))
                                   for f, n in self.cum_funcs.most_common(top)]}


def _frame(raw: str, repo: str) -> tuple[str, str]:
    """(group, 'func (short/path.py)') of one collapsed-stack frame."""
    m = _FRAME.match(raw)
    if m is None:  # a frame without a file: a thread's name, a native frame
        return OTHER, raw
    path = m["path"].rsplit(":", 1)[0] if re.search(r":\d+$", m["path"]) else m["path"]
    return group_of(path, repo), f"{m['func']} ({short_path(path, repo)})"


def summarise(text: str, repo: str = "") -> Summary:
    """Group py-spy's collapsed stacks (`frame;frame;… count` per line)."""
    out = Summary()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f, repo) for f in stack.split(";")]
        out.samples += n
        own_group, own_func = frames[-1]
        if own_func == "Runner.run (asyncio/runners.py)":  # inside uvloop's C code
            own_group = LOOP
        out.own_groups[own_group] += n
        out.own_funcs[own_func] += n
        for g in {g for g, _ in frames}:
            out.cum_groups[g] += n
        for f in {f for _, f in frames}:
            out.cum_funcs[f] += n
    return out


def markdown(title: str, s: Summary, note: str = "") -> str:
    d = s.as_dict()
    lines = [f"# {title}", "", f"{s.samples:,} samples (py-spy, {RATE}/s per process, only "
             "the thread holding the GIL: Python's CPU, on the event loop or in a driver's "
             "thread; SQLite's own C work runs without the GIL and is not in it). Shares of "
             "the samples." + (f" {note}" if note else ""), "",
             "| where | own % | cumulative % |", "|---|---|---|"]
    for g in sorted(s.cum_groups, key=lambda g: (-s.own_groups[g], g)):
        lines.append(f"| {g} | {s.share(s.own_groups[g])} | {s.share(s.cum_groups[g])} |")
    for key, head in (("top_own", "Top functions by own time"),
                      ("top_cumulative", "Top functions by cumulative time")):
        lines += ["", f"## {head}", "", "| function | % |", "|---|---|"]
        lines += [f"| `{f}` | {p} |" for f, p in d[key]]
    return "\n".join(lines) + "\n"


def headline(s: Summary, n: int = 3) -> str:
    """The biggest groups by own time, e.g. 'chatcast 31 %, uvicorn… 22 %'."""
    groups = [g for g, _ in s.own_groups.most_common() if g != OTHER][:n]
    return ", ".join(f"{g.split(' (')[0]} {s.share(s.own_groups[g]):.0f} %" for g in groups)


def shorten_stacks(text: str, repo: str) -> str:
    out = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [_frame(f, repo)[1] for f in stack.split(";")] if stack else []
        out.append(";".join(frames) + f" {count}")
    return "\n".join(out) + "\n"


def write(out_dir: Path, name: str, title: str, raw: str, repo: str = "",
          note: str = "") -> dict[str, Any]:
    """<name>.md (summary) and <name>.txt (collapsed stacks) under out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    s = summarise(raw, repo)
    (out_dir / f"{name}.md").write_text(markdown(title, s, note))
    (out_dir / f"{name}.txt").write_text(shorten_stacks(raw, repo))
    return {"md": f"{out_dir.name}/{name}.md", "txt": f"{out_dir.name}/{name}.txt",
            "headline": headline(s), **s.as_dict(top=5)}


def available() -> str | None:
    """The py-spy executable, if installed (the `bench` extra)."""
    import sys

    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


@contextlib.asynccontextmanager
async def record(pids: list[int], cpu: str | None) -> AsyncIterator[list[str]]:
    """Sample `pids` while the block runs; the list it yields holds, after the block, each
    process's collapsed stacks (empty where py-spy failed, with its error in `errors`)."""
    exe = available()
    if exe is None:
        raise RuntimeError("py-spy is not installed (pip install -e '.[bench]')")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pyspy-") as tmp:
        outs = [Path(tmp) / f"{pid}.txt" for pid in pids]
        cmd_pre = ["taskset", "-c", cpu] if cpu and shutil.which("taskset") else []
        spies = [await asyncio.create_subprocess_exec(
            *cmd_pre, exe, "record", "--pid", str(pid), "--rate", str(RATE), "--format", "raw",
            "--full-filenames", "--nolineno", "--gil", "--output", str(out),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            for pid, out in zip(pids, outs, strict=True)]
        await asyncio.sleep(0.3)  # py-spy attaches
        result: list[str] = []
        try:
            yield result
        finally:
            errors = []
            for spy in spies:
                if spy.returncode is None:
                    spy.send_signal(signal.SIGINT)
            for spy in spies:
                _, stderr = await asyncio.wait_for(spy.communicate(), 30)
                errors.append(stderr.decode(errors="replace").strip())
            for out, error in zip(outs, errors, strict=True):
                if not out.exists():
                    raise RuntimeError(f"py-spy wrote no profile: {error[-500:]}")
                result.append(out.read_text())
