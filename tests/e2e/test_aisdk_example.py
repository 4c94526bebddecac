"""The `useChat` example (examples/aisdk-react), built by this run from its lockfile and
served by `vite preview` with chatcast behind its proxy, in real Chromium: it streams, stops
through the stop endpoint, resumes after a reload (and stops again), and chatcast's own UI
sees the same turn."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from playwright.async_api import BrowserContext, Page, expect

from tests.conftest import ServerFactory
from tests.e2e.ui import open_page, server_messages, wait_answer
from tests.helpers.npm import AISDK_EXAMPLE, have_node, vite_build
from tests.helpers.ports import free_port

pytestmark = pytest.mark.browser

CHAT_HASH = re.compile(r"#chat=([A-Za-z0-9_-]+)$")


@pytest.fixture(scope="module")
async def example_dist() -> str:
    if not have_node():
        pytest.skip("node and npm are not installed; the example app needs them")
    return str(await asyncio.to_thread(vite_build, AISDK_EXAMPLE))


@pytest.fixture
async def chatcast(server: ServerFactory) -> Any:
    # ~170 tokens at 10/s: an answer takes ~17 s, so it is still streaming when the test
    # stops it or reloads the page, also on a busy machine
    return await server(env={"CHATCAST_DEMO_TOKENS_PER_S": "10"})


@pytest.fixture
async def example(example_dist: str, chatcast: Any) -> AsyncIterator[str]:
    """The built example on `vite preview`, proxying /api to `chatcast`; its URL."""
    port = free_port()
    env = {**os.environ, "CHATCAST_URL": chatcast.url, "NO_PROXY": "127.0.0.1,localhost"}
    proc = await asyncio.create_subprocess_exec(
        str(AISDK_EXAMPLE / "node_modules" / ".bin" / "vite"), "preview", "--host",
        "127.0.0.1", "--port", str(port), "--strictPort", cwd=AISDK_EXAMPLE, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=2) as http:
            for _ in range(300):
                assert proc.returncode is None, "vite preview exited"
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(url)).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("vite preview did not answer")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        await proc.wait()


async def ask(page: Page, text: str) -> None:
    await page.get_by_role("textbox", name="Message").fill(text)
    await page.get_by_role("button", name="Send").click()


async def answer_text(page: Page) -> str:
    return await page.get_by_test_id("message-assistant").last.locator(".text").inner_text()


@pytest.mark.timeout(600)  # npm ci and the build, when scripts/test has not done them yet
async def test_example_streams_stops_and_resumes(example: str, chatcast: Any,
                                                 context: BrowserContext) -> None:
    page = await context.new_page()
    await page.goto(example)
    await expect(page).to_have_url(CHAT_HASH)
    match = CHAT_HASH.search(page.url)
    assert match
    chat = match.group(1)

    await ask(page, "Tell me about stopping")
    answer = page.get_by_test_id("message-assistant").last
    await expect(answer.locator(".text")).not_to_have_text("", timeout=15_000)
    # chatcast's own UI, in another tab of the same browser, sees the turn live
    demo = await open_page(context, chatcast.url, f"/#/c/{chat}")
    await wait_answer(demo, chat, min_chars=1, status="streaming")

    await page.get_by_role("button", name="Stop").click()
    await expect(page.get_by_test_id("status")).to_have_text("ready", timeout=10_000)
    await expect(answer).to_have_attribute("data-status", "stopped")
    stored = (await server_messages(page, example, chat))[-1]
    assert stored["status"] == "stopped" and stored["content"]
    # the page shows what chatcast kept (white-space aside: the page renders it as text)
    assert (await answer_text(page)).split() == stored["content"].split()
    await wait_answer(demo, chat, status="stopped", timeout=10_000)

    # reload while the next answer streams: it comes back whole, once, and streams on
    await ask(page, "Now tell me about resuming")
    answers = page.get_by_test_id("message-assistant")
    await expect(answers).to_have_count(2)
    await expect(answers.last.locator(".text")).not_to_have_text("", timeout=15_000)
    await page.reload()
    await expect(page.get_by_test_id("status")).to_have_text("streaming", timeout=15_000)
    await expect(answers).to_have_count(2)
    await page.get_by_role("button", name="Stop").click()
    await expect(page.get_by_test_id("status")).to_have_text("ready", timeout=10_000)
    await expect(answers).to_have_count(2)
    await expect(answers.last).to_have_attribute("data-status", "stopped")
    stored = (await server_messages(page, example, chat))[-1]
    assert stored["status"] == "stopped"
    assert (await answer_text(page)).split() == stored["content"].split()
    assert not context.page_errors  # type: ignore[attr-defined]
