"""The demo UI's fallbacks, long chats and the browser's saved copy, in real Chromium against
a real chatcast process: malformed stream data injected into the live WebSocket is skipped and
reported while the answer goes on; a renderer that throws shows that message as plain text and
is reported; a 1 200-message chat keeps a bounded DOM; a reload paints the chat list and the
open chat from the saved copy at once, then the server's state replaces it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from playwright.async_api import BrowserContext, Route, WebSocketRoute, expect
from playwright.async_api import TimeoutError as PlaywrightTimeout

from chatcast.store.ids import new_id
from tests.e2e.test_ui import assert_same_as_server
from tests.e2e.ui import integrity, open_page, record, send, wait_answer

pytestmark = pytest.mark.browser


async def collect_reports(context: BrowserContext) -> list[dict[str, Any]]:
    """Reports the page POSTs to /api/client-errors (answered 202 here, whatever the server
    does with them)."""
    reports: list[dict[str, Any]] = []

    async def take(route: Route) -> None:
        reports.append(json.loads(route.request.post_data or "{}"))
        await route.fulfill(status=202, body="{}", content_type="application/json")

    await context.route(re.compile(r"/api/client-errors$"), take)
    return reports


async def test_malformed_frames_are_skipped_and_the_stream_goes_on(
        app: Any, context: BrowserContext) -> None:
    injected: list[str] = []

    async def tamper(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def from_server(message: str | bytes) -> None:
            if isinstance(message, str) and '"type":"delta"' in message.replace(" ", ""):
                frame = json.loads(message)
                bad = [
                    '{"type": "delta", "chat": "' + frame["chat"] + '", "te',  # cut short
                    json.dumps({**frame, "seq": "x", "text": "EVIL1"}),
                    json.dumps({**frame, "seq": frame["seq"] + 1, "text": {"no": "EVIL2"}}),
                    "[1, 2, 3]",
                ]
                if len(injected) < 12:
                    bad_frame = bad[len(injected) % len(bad)]
                    injected.append(bad_frame)
                    ws.send(bad_frame)
            ws.send(message)

        server.on_message(from_server)

    await context.route_web_socket(re.compile(r"/ws"), tamper)
    reports = await collect_reports(context)
    await record(context)
    page = await open_page(context, app.url)
    chat = await send(page, "Tell me about malformed frames")
    await wait_answer(page, chat, min_chars=30, status="streaming")
    done = await wait_answer(page, chat, status="complete")
    final = await assert_same_as_server(page, app.url, chat)
    assert done["content"] == final["content"]
    assert "EVIL" not in done["content"]
    assert len(injected) == 12
    assert await integrity(page) == [True]
    await expect(page.locator(".msg.assistant .markdown h2")).to_have_count(1)
    kinds = {r["kind"] for r in reports}
    assert kinds == {"malformed_frame"}
    whys = {r["message"] for r in reports}
    assert {"not a JSON event", "delta without an integer seq",
            "delta text is not a string"} <= whys
    assert all(r.get("detail", {}).get("frame") for r in reports)
    assert not context.page_errors  # type: ignore[attr-defined]


THROWING_RENDERER = """() => {
  const original = window.chatcastRenderers.markdown;
  window.chatcastRenderers.markdown = (text, opts) => {
    if (text.includes('BOOM')) throw new Error('renderer exploded');
    return original(text, opts);
  };
}"""


async def test_a_renderer_that_throws_falls_back_to_plain_text(
        app: Any, context: BrowserContext) -> None:
    reports = await collect_reports(context)
    page = await open_page(context, app.url)
    chat = await send(page, "Tell me about rendering")
    first = await wait_answer(page, chat, status="complete")
    await page.evaluate(THROWING_RENDERER)
    await page.get_by_role("textbox", name="Message").fill("echo: **BOOM** and `code` here")
    await page.get_by_role("button", name="Send").click()
    answer = await wait_answer(page, chat, status="complete", not_id=first["id"])
    assert answer["content"] == "**BOOM** and `code` here"
    plain = page.locator(".msg.assistant .markdown.plain")
    await expect(plain).to_have_count(1)
    await expect(plain).to_have_text("**BOOM** and `code` here")  # as text, unrendered
    # The earlier answer still shows as markdown, and the chat keeps working.
    await expect(page.locator(".msg.assistant .markdown h2")).to_have_count(1)
    await page.get_by_role("textbox", name="Message").fill("Tell me more")
    await page.get_by_role("button", name="Send").click()
    await wait_answer(page, chat, status="complete", not_id=answer["id"])
    await expect(page.locator(".msg.assistant .markdown h2")).to_have_count(2)
    await expect(plain).to_have_count(1)
    errors = [r for r in reports if r["kind"] == "render_error"]
    assert errors, reports
    assert errors[0]["message"] == "renderer exploded"
    assert errors[0]["chat_id"] == chat
    assert errors[0]["detail"]["message_id"] == answer["id"]


def seed_messages(database_url: str, chat: str, count: int) -> None:
    """Write `count` alternating user/assistant messages into the server's SQLite database."""
    path = database_url.split(":///", 1)[1]
    start = datetime.now(UTC) - timedelta(hours=2)
    ids = sorted(new_id() for _ in range(count))
    rows = [(ids[i], chat, "user" if i % 2 == 0 else "assistant",
             f"message {i}" if i % 2 == 0 else f"Answer number **{i}**.\n\n- point {i}",
             "complete", False, (start + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S.%f"))
            for i in range(count)]
    with sqlite3.connect(path, timeout=30) as db:
        db.executemany("INSERT INTO message (id, chat_id, role, content, status, is_streaming, "
                       "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)


DOM_SIZE = "() => document.querySelectorAll('.thread > .msg').length"
LOADED = "(chat) => window.chatcast.chat(chat)?.messages.length || 0"


async def test_a_long_chat_keeps_a_bounded_dom(app: Any, context: BrowserContext) -> None:
    res = await context.request.post(f"{app.url}/api/chats", data={"title": "Long chat"},
                                     headers={"Origin": app.url})
    assert res.ok, await res.text()
    chat = (await res.json())["id"]
    seed_messages(app.database_url, chat, 1200)
    page = await open_page(context, app.url, f"/#/c/{chat}")
    await expect(page.locator(".thread > .msg").last).to_contain_text("Answer number 1199")
    sizes = [await page.evaluate(DOM_SIZE)]
    # Scroll up to the very first message: the page fetches all 1 200 from the server.
    for _ in range(200):
        first = await page.locator(".thread > .msg").first.get_attribute("data-id")
        if await page.locator(".thread > .msg[data-role=user]").first.inner_text() == "message 0":
            break
        await page.evaluate("() => { const s = document.querySelector('.scroller');"
                            " s.scrollTop = 0; s.dispatchEvent(new Event('scroll')); }")
        # Wait for the window to move (or older history to arrive), however slow the machine.
        with contextlib.suppress(PlaywrightTimeout):
            await page.wait_for_function(
                "(id) => document.querySelector('.thread > .msg')?.dataset.id !== id",
                arg=first, timeout=5_000)
        sizes.append(await page.evaluate(DOM_SIZE))
    else:
        loaded = await page.evaluate(LOADED, chat)
        raise AssertionError(f"never reached the first message; {loaded} loaded")
    assert await page.evaluate(LOADED, chat) == 1200
    assert max(sizes) <= 60, sizes
    # Back to the end in one click; the DOM stays bounded and the chat works.
    await page.get_by_role("button", name="Jump to latest").click()
    await expect(page.locator(".thread > .msg").last).to_contain_text("Answer number 1199")
    await expect(page.locator(".thread > .msg").last).to_be_in_viewport()
    await page.get_by_role("textbox", name="Message").fill("And one more")
    await page.get_by_role("button", name="Send").click()
    await wait_answer(page, chat, status="complete")
    await expect(page.locator(".thread > .msg").last).to_contain_text("stays a link",
                                                                      timeout=30_000)
    assert await page.evaluate(DOM_SIZE) <= 60
    assert not context.page_errors  # type: ignore[attr-defined]


class Hold:
    """Keeps the page from reaching the server (REST held, WebSocket refused) until released:
    what the page shows meanwhile comes from the browser alone."""

    def __init__(self) -> None:
        self.released = asyncio.Event()
        self.released.set()

    async def install(self, context: BrowserContext) -> None:
        async def http(route: Route) -> None:
            await self.released.wait()
            await route.continue_()

        async def ws(route: WebSocketRoute) -> None:
            if not self.released.is_set():
                await route.close(code=1011, reason="held")
                return
            route.connect_to_server()

        await context.route(re.compile(r"/api/(?!client-errors)|/healthz"), http)
        await context.route_web_socket(re.compile(r"/ws"), ws)

    def hold(self) -> None:
        self.released.clear()

    def release(self) -> None:
        self.released.set()


SAVED = """(chat) => Object.keys(localStorage).filter((k) => k.startsWith('chatcast.cache.'))
  .some((k) => k.endsWith('chat.' + chat))"""
SAVED_KEYS = "() => Object.keys(localStorage).filter((k) => k.startsWith('chatcast.cache.'))"


async def test_reload_paints_the_saved_copy_then_the_server_wins(
        app: Any, context: BrowserContext) -> None:
    hold = Hold()
    await hold.install(context)
    page = await open_page(context, app.url)
    chat = await send(page, "Tell me about caching")
    await wait_answer(page, chat, status="complete")
    await page.wait_for_function(SAVED, arg=chat)
    await expect(page.locator(".chat-item")).to_have_count(1)
    # The page is cut off from the server first (so it cannot pick up what follows and
    # save it), then the chat changes on the server.
    hold.hold()
    res = await page.request.patch(f"{app.url}/api/chats/{chat}",
                                   data={"title": "Renamed on the server"},
                                   headers={"Origin": app.url})
    assert res.ok, await res.text()
    await page.reload()
    # Painted from the browser's copy, with the server unreachable: list, answer, a note.
    await expect(page.locator(".chat-item")).to_have_count(1)
    await expect(page.locator(".chat-item")).to_contain_text("Tell me about caching")
    await expect(page.locator(".msg.assistant .markdown")).to_contain_text("stays a link")
    await expect(page.locator(".saved-note")).to_be_visible()
    await expect(page.get_by_role("button", name="Regenerate")).to_have_count(0)
    await expect(page.get_by_role("button", name="Stop")).to_have_count(0)
    hold.release()
    # (While held the WebSocket was refused, so the client may have moved on to SSE.)
    await expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "open",
                                                                      timeout=20_000)
    await expect(page.locator(".saved-note")).to_have_count(0)
    await expect(page.locator(".chat-item")).to_contain_text("Renamed on the server")
    await expect(page.get_by_role("button", name="Regenerate")).to_be_visible()
    await assert_same_as_server(page, app.url, chat)

    # The setting: off removes the copy, and a reload shows nothing before the server answers.
    await page.get_by_label("Keep a copy on this device").uncheck()
    assert await page.evaluate(SAVED_KEYS) == []
    hold.hold()
    await page.reload()
    await expect(page.locator(".loading")).to_be_visible()
    await expect(page.locator(".chat-item")).to_have_count(0)
    await expect(page.locator(".msg")).to_have_count(0)
    hold.release()
    await expect(page.locator(".msg.assistant .markdown")).to_contain_text("stays a link",
                                                                           timeout=20_000)
    await expect(page.get_by_label("Keep a copy on this device")).not_to_be_checked()
    assert await page.evaluate(SAVED_KEYS) == []
    assert not context.page_errors  # type: ignore[attr-defined]


@pytest.mark.parametrize("rate", [10])
async def test_a_saved_streaming_answer_is_not_shown_as_live(
        app: Any, context: BrowserContext) -> None:
    hold = Hold()
    await hold.install(context)
    await record(context)
    page = await open_page(context, app.url)
    chat = await send(page, "Tell me about stale state")
    await wait_answer(page, chat, min_chars=40, status="streaming")
    await page.wait_for_function(
        """(chat) => { const k = Object.keys(localStorage).find((k) => k.endsWith('chat.' + chat));
             const saved = k && JSON.parse(localStorage.getItem(k));
             return saved && saved.messages.some((m) => m.status === 'streaming'); }""", arg=chat)
    hold.hold()
    await page.reload()
    answer = page.locator(".msg.assistant").last
    await expect(answer).to_have_attribute("data-status", "saved")
    await expect(answer.locator(".note")).to_contain_text("Saved on this device")
    await expect(page.locator(".markdown.streaming")).to_have_count(0)
    await expect(page.get_by_role("button", name="Stop")).to_have_count(0)
    hold.release()
    await expect(page.get_by_role("button", name="Stop")).to_be_visible(timeout=20_000)
    await expect(answer).to_have_attribute("data-status", "streaming")
    done = await wait_answer(page, chat, status="complete", timeout=40_000)
    final = await assert_same_as_server(page, app.url, chat)
    assert done["content"] == final["content"]
    assert await integrity(page) == [True]
    assert not context.page_errors  # type: ignore[attr-defined]
