"""examples/fastapi-host in real Chromium: a FastAPI app with its own login mounts chatcast
under /chat with its own retrieval provider (asking the fake OpenAI-compatible model with
its documents). Signed in through the host's page, the demo UI under /chat/ streams from
that provider, stops, and resumes after a reload; the host's webhook receiver gets exactly
one verified delivery per answer that ended."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import BrowserContext, Page, expect

from tests.e2e.ui import CHAT_URL, client_messages, integrity, record, wait_answer
from tests.fakes import FakeServer, Reply, openai_fake
from tests.helpers.metrics import sample
from tests.helpers.server import REPO_ROOT, ServerProcess

EXAMPLE = REPO_ROOT / "examples" / "fastapi-host"
WORDS = [f"word{i} " for i in range(400)]


@pytest.fixture
def model_api() -> Iterator[FakeServer]:
    with FakeServer(openai_fake.app) as server:
        server.script(then=Reply.text(*WORDS, delay_s=0.04))
        yield server


@pytest.fixture
async def host(tmp_path: Path, model_api: FakeServer) -> AsyncIterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path / "host", migrate=False,
        command=[sys.executable, "-m", "uvicorn", "app:app", "--app-dir", str(EXAMPLE),
                 "--host", "127.0.0.1", "--port", "{port}"])
    proc.extra_env.update({
        "MODEL_BASE_URL": f"{model_api.url}/v1", "MODEL_NAME": "gpt-fake",
        "CHATCAST_WEBHOOK_URL": f"{proc.url}/webhooks/chatcast",
        "CHATCAST_WEBHOOK_SECRET": "example-webhook-secret",
        "HOST_SESSION_SECRET": "example-session-secret",
        "HOST_WEBHOOK_LOG": str(tmp_path / "webhooks.jsonl"),
    })
    await proc.start()
    yield proc
    code = await proc.stop()
    print(f"--- host (exit {code}):\n{proc.log_tail()}")


def deliveries(host: ServerProcess) -> list[dict[str, Any]]:
    path = Path(host.extra_env["HOST_WEBHOOK_LOG"])
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


async def wait_deliveries(host: ServerProcess, count: int,
                          timeout: float = 30.0) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(got := deliveries(host)) < count:
        assert loop.time() < deadline, f"{len(got)} webhook deliveries, not {count}: {got}"
        await asyncio.sleep(0.1)
    return got


async def send(page: Page, text: str) -> str:
    await page.get_by_role("textbox", name="Message").fill(text)
    await page.get_by_role("button", name="Send").click()
    await expect(page).to_have_url(CHAT_URL)
    match = CHAT_URL.search(page.url)
    assert match
    return match.group(1)


async def sign_in(context: BrowserContext, host: ServerProcess, name: str) -> Page:
    """The host's own login page; it sends the browser on to chatcast under /chat/."""
    page = await context.new_page()
    await page.goto(host.url + "/")
    await page.get_by_label("Name").fill(name)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(host.url + "/chat/")
    return page


async def test_the_example_host_streams_stops_resumes_and_hears_each_answer_once(
        host: ServerProcess, model_api: FakeServer, context: BrowserContext) -> None:
    base = host.url + "/chat"
    page = await sign_in(context, host, "alice")
    await expect(page.get_by_test_id("connection")).to_have_text("Live · WebSocket",
                                                                 timeout=20_000)

    # It streams from the host's provider (the model saw the host's retrieved context) ...
    chat = await send(page, "How many days do I have for returns?")
    await wait_answer(page, chat, min_chars=60, status="streaming")
    asked = model_api.requests[-1].body
    assert "30 days" in asked["messages"][0]["content"] and asked["user"] == "host-alice"
    # ... and stops.
    await page.get_by_role("button", name="Stop").click()
    stopped = await wait_answer(page, chat, status="stopped", timeout=10_000)
    assert stopped["content"].startswith("word0 word1 ")
    assert (await model_api.wait_ended(timeout_s=15)).disconnected

    # An answer that streams on across a reload.
    await record(context)
    first = await wait_answer(page, chat, status="stopped")
    await page.get_by_role("textbox", name="Message").fill("How long does shipping take?")
    await page.get_by_role("button", name="Send").click()
    before = await wait_answer(page, chat, min_chars=60, status="streaming", not_id=first["id"])
    await page.reload()
    await expect(page.get_by_test_id("connection")).to_have_text("Live · WebSocket")
    after = await wait_answer(page, chat, status=("streaming", "complete"), timeout=10_000)
    assert after["id"] == before["id"] and after["content"].startswith(before["content"])
    done = await wait_answer(page, chat, status="complete", timeout=60_000)
    assert done["content"] == "".join(WORDS)
    assert await integrity(page) == [True]
    server_side = await page.request.get(f"{base}/api/chats/{chat}/messages")
    answers = [m for m in (await server_side.json())["messages"] if m["role"] == "assistant"]
    assert [m["status"] for m in answers] == ["stopped", "complete"]
    assert answers[-1]["metadata"]["sources"][0]["title"] == "Shipping"
    # The sources the provider attached are shown with the answer, as links.
    shown = page.locator(".msg.assistant").last.get_by_test_id("sources").locator("a")
    await expect(shown.first).to_have_text("Shipping")
    await expect(shown.first).to_have_attribute("href", "https://example.com/help/shipping")
    mine = {m["id"]: m["content"] for m in await client_messages(page, chat)}
    assert all(mine[m["id"]] == m["content"] for m in answers)

    # One verified delivery per ended answer, and only one.
    got = await wait_deliveries(host, 2)
    by_answer = {d["data"]["message_id"]: d for d in got}
    assert len(got) == 2 and set(by_answer) == {m["id"] for m in answers}
    assert by_answer[answers[0]["id"]]["type"] == "answer.stopped"
    assert by_answer[answers[1]["id"]]["type"] == "answer.completed"
    assert by_answer[answers[1]["id"]]["data"]["message"]["content"] == done["content"]
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        assert await sample(http, "chatcast_webhook_deliveries_total", base,
                            outcome="delivered") == 2
    assert len(deliveries(host)) == 2
    assert not context.page_errors  # type: ignore[attr-defined]


@pytest.mark.parametrize(("blocked", "label"), [("ws", "Live · SSE"),
                                                 ("ws+sse", "Live · long-poll")])
async def test_the_fallback_transports_work_under_the_prefix(
        host: ServerProcess, model_api: FakeServer, context: BrowserContext, blocked: str,
        label: str) -> None:
    model_api.script(Reply.text(*WORDS[:40], delay_s=0.02))
    await context.route_web_socket(re.compile(r"/chat/ws"), lambda ws: ws.close())
    if "sse" in blocked:
        await context.route(re.compile(r"/chat/api/chats/[^/]+/events"),
                            lambda route: route.abort())
    urls: list[str] = []
    context.on("request", lambda r: urls.append(r.url))
    page = await sign_in(context, host, "bob")
    chat = await send(page, "How long does shipping take?")
    await expect(page.get_by_test_id("connection")).to_have_text(label, timeout=30_000)
    done = await wait_answer(page, chat, status="complete", timeout=60_000)
    assert done["content"] == "".join(WORDS[:40])
    path = "/poll" if "sse" in blocked else "/events"
    assert any(u.startswith(f"{host.url}/chat/api/chats/{chat}{path}") for u in urls)
    assert not any(u.startswith(f"{host.url}/api/") for u in urls)  # nothing off the prefix
