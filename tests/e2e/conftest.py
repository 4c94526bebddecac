"""Browser fixtures: real Chromium (the system's, since Playwright's download is not assumed)
driving the demo UI of a real chatcast process started by the `server` fixture.

Screenshots of every open page are saved to test-artifacts/ when a test fails.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable, Generator
from pathlib import Path
from typing import Any

import pytest

playwright_api = pytest.importorskip("playwright.async_api")

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 # Background tabs must keep streaming at full speed in multi-tab tests.
                 "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
                 "--disable-backgrounding-occluded-windows"]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("CHATCAST_CHROMIUM"), "/usr/bin/chromium",
                      "/usr/bin/chromium-browser", shutil.which("chromium"),
                      shutil.which("google-chrome")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.browser)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium binary found (set CHATCAST_CHROMIUM); browser tests skipped")
    async with playwright_api.async_playwright() as p:
        b = await p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield b
        await b.close()


@pytest.fixture
async def context(browser: Any, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A fresh browser profile (its own anonymous user). Pages opened in it are
    screenshotted into test-artifacts/ if the test fails."""
    ctx = await browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.set_default_timeout(15_000)
    errors: list[str] = []
    ctx.on("page", lambda page: page.on("pageerror", lambda exc: errors.append(str(exc))))
    ctx.page_errors = errors
    yield ctx
    if request.node.stash.get(_FAILED, False):
        ARTIFACTS.mkdir(exist_ok=True)
        for i, page in enumerate(ctx.pages):
            name = f"{request.node.name}-{i}.png".replace("/", "_")
            try:
                await page.screenshot(path=str(ARTIFACTS / name), full_page=True)
            except Exception as exc:  # a crashed page must not hide the test's own failure
                print(f"screenshot {name} failed: {exc}")
        if errors:
            print("page errors:", *errors, sep="\n  ")
    await ctx.close()


@pytest.fixture
def rate() -> int:
    """Demo model speed (tokens per second) for the test's server."""
    return 25


@pytest.fixture
async def app(server: Callable[..., Any], rate: int) -> Any:
    """A started chatcast server with the offline demo model at `rate` tokens/s."""
    # the XSS corpus sends more messages in a minute than the default per-user limit
    return await server(env={"CHATCAST_DEMO_TOKENS_PER_S": str(rate),
                             "CHATCAST_MESSAGES_PER_MINUTE": "1000"})
