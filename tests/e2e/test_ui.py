"""The demo UI in real Chromium against a real chatcast process: multi-tab streaming and
stop, reload mid-stream, transport fallbacks, a server restart, and the XSS corpus."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import BrowserContext, WebSocketRoute, expect

from tests.e2e.ui import (
    assert_page_has,
    client_messages,
    integrity,
    last_answer,
    open_page,
    open_watched_page,
    record,
    send,
    server_messages,
    wait_answer,
)

pytestmark = pytest.mark.browser

REPO_ROOT = Path(__file__).resolve().parents[2]


async def refuse_websocket(ws: WebSocketRoute) -> None:
    """What a proxy that does not pass WebSockets looks like: the upgrade never reaches the
    server and the socket is closed at once."""
    await ws.close(code=1011, reason="blocked")


async def assert_same_as_server(page: Any, base: str, chat: str) -> dict[str, Any]:
    return assert_page_has(await client_messages(page, chat),
                           await server_messages(page, base, chat))


async def test_two_tabs_share_a_stream_and_a_stop(app: Any, context: BrowserContext) -> None:
    tab1 = await open_page(context, app.url)
    chat = await send(tab1, "Tell me about fan-out to many tabs")
    tab2 = await open_page(context, app.url, f"/#/c/{chat}")
    await wait_answer(tab1, chat, min_chars=40, status="streaming")
    await wait_answer(tab2, chat, min_chars=40, status="streaming")
    a1, a2 = await last_answer(tab1, chat), await last_answer(tab2, chat)
    assert a1 and a2 and a1["id"] == a2["id"]
    shorter, longer = sorted((a1["content"], a2["content"]), key=len)
    assert longer.startswith(shorter)

    await tab2.get_by_role("button", name="Stop").click()
    for tab in (tab1, tab2):
        await wait_answer(tab, chat, status="stopped", timeout=5_000)
        await expect(tab.get_by_role("button", name="Regenerate")).to_be_visible()
        await expect(tab.get_by_role("button", name="Continue")).to_be_visible()
        await expect(tab.get_by_role("button", name="Send")).to_be_visible()
    a1, a2 = await last_answer(tab1, chat), await last_answer(tab2, chat)
    assert a1 and a2 and a1["content"] == a2["content"]
    final = await assert_same_as_server(tab1, app.url, chat)
    assert final["status"] == "stopped" and final["content"] == a1["content"]
    partial = a1["content"]
    assert partial

    await tab1.reload()
    again = await wait_answer(tab1, chat, status="stopped")
    assert again["content"] == partial
    # Both tabs render the same thing.
    html1 = await tab1.locator(".msg.assistant .markdown").last.inner_html()
    html2 = await tab2.locator(".msg.assistant .markdown").last.inner_html()
    assert html1 == html2
    assert not context.page_errors  # type: ignore[attr-defined]


async def test_reload_mid_stream_resumes_without_duplicates(app: Any,
                                                             context: BrowserContext) -> None:
    page = await open_page(context, app.url)
    chat = await send(page, "Explain cursors, please")
    before = await wait_answer(page, chat, min_chars=60, status="streaming")
    await record(context)
    await page.reload()
    await expect(page.get_by_test_id("connection")).to_have_text("Live · WebSocket")
    after = await wait_answer(page, chat, status="streaming", timeout=5_000)
    assert after["content"].startswith(before["content"][:60])
    done = await wait_answer(page, chat, status="complete", timeout=30_000)
    final = await assert_same_as_server(page, app.url, chat)
    assert done["content"] == final["content"]
    assert await integrity(page) == [True]
    # The rendered text has the answer once: its last line is not repeated.
    text = await page.locator(".msg.assistant .markdown").last.inner_text()
    assert text.count("stays a link") == 1
    assert not context.page_errors  # type: ignore[attr-defined]


async def test_websocket_blocked_falls_back_to_sse(app: Any, context: BrowserContext) -> None:
    await context.route_web_socket(re.compile(r"/ws"), refuse_websocket)
    await record(context)
    page = await context.new_page()
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    await page.goto(app.url)
    chat = await send(page, "Compare WebSockets and SSE")
    await expect(page.get_by_test_id("connection")).to_have_text("Live · SSE", timeout=20_000)
    await wait_answer(page, chat, min_chars=20, status="streaming")
    await wait_answer(page, chat, status="complete")
    await assert_same_as_server(page, app.url, chat)
    assert any(f"/api/chats/{chat}/events" in u for u in urls)
    assert not any(f"/api/chats/{chat}/poll" in u for u in urls)
    assert await integrity(page) == [True]

    # Commands go over HTTP in this mode: regenerate, then stop from the page.
    await page.get_by_role("button", name="Regenerate").click()
    await wait_answer(page, chat, min_chars=20, status="streaming")
    await page.get_by_role("button", name="Stop").click()
    await wait_answer(page, chat, status="stopped")
    await assert_same_as_server(page, app.url, chat)
    assert not context.page_errors  # type: ignore[attr-defined]


async def test_sse_blocked_too_falls_back_to_long_poll(app: Any,
                                                        context: BrowserContext) -> None:
    await context.route_web_socket(re.compile(r"/ws"), refuse_websocket)
    await context.route(re.compile(r"/api/chats/[^/]+/events"), lambda route: route.abort())
    await record(context)
    page = await context.new_page()
    await page.goto(app.url)
    chat = await send(page, "What is long polling?")
    await expect(page.get_by_test_id("connection")).to_have_text("Live · long-poll",
                                                                 timeout=30_000)
    await wait_answer(page, chat, min_chars=20, status="streaming")
    await wait_answer(page, chat, status="complete")
    await assert_same_as_server(page, app.url, chat)
    assert await integrity(page) == [True]
    assert not context.page_errors  # type: ignore[attr-defined]


@pytest.mark.parametrize("rate", [12])
async def test_server_restart_mid_stream(app: Any, context: BrowserContext) -> None:
    await record(context)
    page = await open_page(context, app.url)
    chat = await send(page, "Tell me about crash recovery")
    await wait_answer(page, chat, min_chars=80, status="streaming")
    await page.wait_for_timeout(1_500)  # let the server checkpoint some text
    await app.restart()  # SIGKILL, then the same port and data directory
    await expect(page.get_by_test_id("connection")).to_have_text("Live · WebSocket",
                                                                 timeout=30_000)
    answer = await wait_answer(page, chat, status=("interrupted", "complete", "error"),
                               timeout=30_000)
    final = await assert_same_as_server(page, app.url, chat)
    assert answer["content"] == final["content"]
    if answer["status"] == "interrupted":
        await expect(page.get_by_role("button", name="Continue")).to_be_visible()
        seen = len(await integrity(page))
        await page.get_by_role("button", name="Continue").click()
        await wait_answer(page, chat, status="streaming", timeout=10_000)
        done = await wait_answer(page, chat, status="complete", timeout=40_000)
        final = await assert_same_as_server(page, app.url, chat)
        assert done["content"] == final["content"]
        assert done["content"].startswith(answer["content"])
        assert (await integrity(page))[seen:] == [True]
    assert not context.page_errors  # type: ignore[attr-defined]


XSS = [
    "<script>window.__xss = (window.__xss || 0) + 1</script>",
    '<img src=x onerror="window.__xss=(window.__xss||0)+1">',
    '<svg onload="window.__xss=1"><circle r=5 /></svg>',
    '<svg><script>window.__xss=1</script></svg>',
    "[click me](javascript:window.__xss=1)",
    "[tab](JaVaScRiPt&#58;window.__xss=1)",
    "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "![img](javascript:window.__xss=1)",
    '![pixel](https://example.com/x.png" onerror="window.__xss=1)',
    '![x](x" onerror="window.__xss=1)',
    "<a href=\"javascript:window.__xss=1\">link</a>",
    "<iframe src=\"javascript:window.__xss=1\"></iframe>",
    '<math><mtext><table><mglyph><style><img src=x onerror="window.__xss=1">',
    '<details open ontoggle="window.__xss=1">x</details>',
    "<a href='vbscript:msgbox(1)'>vb</a> [vb](vbscript:msgbox)",
    "```html\n<script>window.__xss=1</script>\n```",
    "`<img src=x onerror=window.__xss=1>`",
    "<https://example.com/\"onmouseover=\"window.__xss=1>",
    "[ok](https://example.com/?q=\"><script>window.__xss=1</script>)",
    "<form action=\"javascript:window.__xss=1\"><button>go</button></form>",
    "<style>body{display:none}</style><link rel=stylesheet href=//evil.example/x.css>",
]

UNSAFE_DOM = """() => {
  const bad = [];
  for (const el of document.querySelectorAll('*')) {
    for (const a of el.attributes) {
      const name = a.name.toLowerCase();
      const value = a.value.replace(/[\\u0000-\\u0020]/g, '').toLowerCase();
      if (name.startsWith('on')) bad.push(`${el.tagName} ${name}`);
      if (/^(javascript|vbscript|data):/.test(value) && name !== 'content') {
        bad.push(`${el.tagName} ${name}=${a.value}`);
      }
    }
  }
  const unsafe = ['script', 'iframe', 'object', 'embed', 'svg:not(.icon)', 'style', 'form',
                  'img', 'link'].map((t) => `.thread ${t}`).join(', ');
  for (const el of document.querySelectorAll(unsafe)) {
    bad.push(`element ${el.tagName}`);
  }
  return bad;
}"""


@pytest.mark.parametrize("rate", [400])
async def test_xss_corpus_is_inert(app: Any, context: BrowserContext) -> None:
    page, dialogs = await open_watched_page(context, app.url)
    chat = await send(page, "XSS corpus")
    answer = await wait_answer(page, chat, status="complete")
    for payload in XSS:
        for text in (payload, "echo: " + payload):
            await page.get_by_role("textbox", name="Message").fill(text)
            await page.get_by_role("button", name="Send").click()
            answer = await wait_answer(page, chat, status="complete", not_id=answer["id"],
                                       timeout=20_000)
            if text.startswith("echo:"):
                assert answer["content"] == payload, "the model output went through unchanged"
    # Reloaded, everything renders from the snapshot / history instead of the live stream.
    await page.reload()
    await wait_answer(page, chat, status="complete")
    await expect(page.locator(".msg.user .bubble").last).to_have_text("echo: " + XSS[-1])
    for _ in range(2):
        assert await page.evaluate("() => window.__xss") == 0
        assert await page.evaluate(UNSAFE_DOM) == []
        assert dialogs == []
        await page.reload()
        await wait_answer(page, chat, status="complete")
    # Links that survived are safe and open without a referrer.
    for link in await page.locator(".thread a[href]").all():
        href = await link.get_attribute("href") or ""
        assert re.match(r"^(https?:|mailto:)", href), href
        assert await link.get_attribute("rel") == "noopener noreferrer"
    assert not context.page_errors  # type: ignore[attr-defined]


@pytest.mark.parametrize("rate", [10])
async def test_screenshot_mid_stream(app: Any, context: BrowserContext) -> None:
    """Also a check that the UI looks as intended: saved to test-artifacts/, and to the
    README's docs/screenshot.png when CHATCAST_UPDATE_SCREENSHOT=1 (so a test run leaves
    the work tree clean)."""
    for title in ("Resume after a reload", "Back-pressure and slow clients"):
        res = await context.request.post(f"{app.url}/api/chats", data={"title": title},
                                         headers={"Origin": app.url})
        assert res.ok, await res.text()
    page = await open_page(context, app.url)
    chat = await send(page, "How does chatcast keep every tab in sync?")
    await page.locator(".code-block").first.wait_for(timeout=30_000)
    await wait_answer(page, chat, status="streaming")
    await expect(page.get_by_role("button", name="Stop")).to_be_visible()
    await expect(page.locator(".chat-item")).to_have_count(3)
    target = (REPO_ROOT / "docs" if os.environ.get("CHATCAST_UPDATE_SCREENSHOT") == "1"
              else REPO_ROOT / "test-artifacts")
    target.mkdir(exist_ok=True)
    await page.screenshot(path=str(target / "screenshot.png"))
    await wait_answer(page, chat, status="complete")
