"""The core browser scenarios on every engine, with the versions that ran them, written to
benchmarks/results/engines.md (and engines.json): runs tests/e2e/test_engines.py — stream,
stop from a second tab, reload mid-stream resumes exactly, WebSocket blocked -> SSE, the XSS
corpus, on Firefox (BiDi), WebKit (WebKitGTK) and Chromium — and reports each outcome and
its duration. The test suite runs the same tests; this keeps a dated record in the repo.

    python -m benchmarks.engines
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import procs

RESULTS = procs.REPO / "benchmarks" / "results"
ENGINES = ("firefox", "webkit", "chromium")


def run() -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        junit, versions = Path(tmp) / "junit.xml", Path(tmp) / "versions.json"
        env = {**os.environ, "CHATCAST_ENGINE_VERSIONS": str(versions)}
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
                        f"--junitxml={junit}", "tests/e2e/test_engines.py"],
                       cwd=procs.REPO, env=env, check=False, timeout=1800)
        cases = []
        for case in ET.parse(junit).getroot().iter("testcase"):
            name = case.get("name", "")
            outcome = "passed"
            for tag in ("failure", "error", "skipped"):
                el = case.find(tag)
                if el is not None:
                    outcome = tag if tag != "skipped" else "skipped: " + el.get("message", "")
            cases.append({"name": name, "seconds": float(case.get("time", 0)),
                          "outcome": outcome})
        seen = json.loads(versions.read_text()) if versions.exists() else {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=procs.REPO,
                            capture_output=True, text=True, check=False).stdout.strip()
    return {"when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "load": os.getloadavg()[0], "versions": seen, "cases": cases}


def markdown(result: dict[str, object]) -> str:
    cases: list[dict[str, object]] = result["cases"]  # type: ignore[assignment]
    versions: dict[str, str] = result["versions"]  # type: ignore[assignment]
    scenarios = sorted({str(c["name"]).split("[")[0] for c in cases})
    lines = ["# The core scenarios on three browser engines", "",
             f"Run at {result['when']} on commit {result['commit']}, {result['machine']} "
             f"(load {result['load']:.1f}). `python -m benchmarks.engines` — "
             "tests/e2e/test_engines.py; raw figures in engines.json.", "",
             "| scenario | " + " | ".join(f"{e} {versions.get(e, '')}".strip() for e in ENGINES)
             + " |", "|---|" + "---|" * len(ENGINES)]
    for sc in scenarios:
        row = []
        for e in ENGINES:
            hit = [c for c in cases if str(c["name"]).startswith(sc + "[")
                   and e in str(c["name"])[len(sc) + 1:-1].split("-")]
            row.append(", ".join(f"{c['outcome']} ({float(c['seconds']):.1f} s)"  # type: ignore[arg-type]
                                 for c in hit) or "—")
        lines.append(f"| {sc.removeprefix('test_').replace('_', ' ')} | " + " | ".join(row)
                     + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    if sys.argv[1:] == ["--report-only"]:  # re-render engines.md from engines.json
        print(markdown(json.loads((RESULTS / "engines.json").read_text())))
        return
    result = run()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engines.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "engines.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
