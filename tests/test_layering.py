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


def test_chatcast_imports_only_under_its_own_name(tmp_path: Path) -> None:
    """The packages are imported as chatcast.server, chatcast.store, …: an application with its
    own `server`, `store`, `providers` or `core` module keeps it, and chatcast still loads."""
    for name in ("server", "store", "providers", "core", "clients"):
        (tmp_path / f"{name}.py").write_text(f"WHO = 'host {name}'\n")
    code = (
        "import server, store, providers, core, clients\n"
        "from chatcast.server.app import create_app\n"
        "from chatcast.server.settings import Settings\n"
        "app = create_app(Settings(database_url='sqlite+aiosqlite:///' + 'x.db'))\n"
        "import sys\n"
        "for n in ('server', 'store', 'providers', 'core', 'clients'):\n"
        "    assert sys.modules[n].WHO == 'host ' + n, n\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr
