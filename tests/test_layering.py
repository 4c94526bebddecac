"""The layering contracts of pyproject.toml ([tool.importlinter]) hold: core (the wire
vocabulary and the retry helper) imports nothing else of chatcast, store and providers import
no server module, transports use neither directly, and no sibling modules import each other
in a cycle (function-level imports included). `scripts/check` runs the same linter; this
keeps CI's test run honest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_layering_contracts_are_kept() -> None:
    run = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command;"
                          " lint_imports_command()", "--no-cache"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "BROKEN" not in run.stdout and " KEPT" in run.stdout, run.stdout
