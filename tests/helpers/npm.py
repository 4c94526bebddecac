"""JavaScript dependencies of the tests, from the npm registry, pinned by package-lock.json.

`npm_ci(dir)` installs a folder's locked dependencies unless they are installed already (a
stamp in node_modules holds the lockfile's hash); `vite_build(dir)` builds a Vite app unless
its dist/ is from the same sources. Both hold a file lock, so pytest workers and
`scripts/test` (which starts them early, in the background: `python -m tests.helpers.npm`)
never run the same install twice at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
AISDK_TESTS = REPO_ROOT / "tests" / "aisdk" / "node"
AISDK_EXAMPLE = REPO_ROOT / "examples" / "aisdk-react"
STAMP = ".chatcast-lock-sha256"
BUILD_INPUTS = ("package-lock.json", "index.html", "vite.config.js", "src")


class NpmFailed(RuntimeError):
    pass


def have_node() -> bool:
    return shutil.which("node") is not None and shutil.which("npm") is not None


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with (directory / ".npm-install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            h.update(str(f.relative_to(path.parent)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def _run(args: list[str], cwd: Path, timeout: float) -> None:
    done = subprocess.run(args, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise NpmFailed(f"{' '.join(args)} in {cwd} failed ({done.returncode}):\n"
                        f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def npm_ci(directory: Path, timeout: float = 400.0) -> Path:
    """node_modules of `directory`, installed exactly as its package-lock.json says."""
    with _locked(directory):
        want = _digest([directory / "package-lock.json"])
        stamp = directory / "node_modules" / STAMP
        if not stamp.exists() or stamp.read_text() != want:
            _run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], directory,
                 timeout)
            stamp.write_text(want)
    return directory / "node_modules"


def vite_build(directory: Path, timeout: float = 300.0) -> Path:
    """`directory`'s dist/, built by `npm run build` from its current sources."""
    npm_ci(directory, timeout)
    with _locked(directory):
        want = _digest([directory / name for name in BUILD_INPUTS
                        if (directory / name).exists()])
        stamp = directory / "dist" / STAMP
        if not stamp.exists() or stamp.read_text() != want:
            _run(["npm", "run", "build", "--silent"], directory, timeout)
            stamp.write_text(want)
    return directory / "dist"


def main() -> int:
    """Install and build everything the tests need (scripts/test runs this early)."""
    if not have_node():
        print("tests.helpers.npm: node/npm not installed; the AI SDK tests will skip")
        return 0
    try:
        npm_ci(AISDK_TESTS)
        if AISDK_EXAMPLE.exists():
            vite_build(AISDK_EXAMPLE)
    except (NpmFailed, subprocess.TimeoutExpired) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
