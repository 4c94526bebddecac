"""Helpers for driving the demo UI: the page's own client state is read through
`window.chatcast` (the raw text it assembled), the server's through the REST API with the
page's cookie."""

from __future__ import annotations

import re
from typing import Any

from playwright.async_api import BrowserContext, Dialog, Page, expect

CHAT_URL = re.compile(r"#/c/([A-Za-z0-9_-]+)$")


async def open_page(context: BrowserContext, base: str, path: str = "/",
                    transport: str = "WebSocket") -> Page:
    page = await context.new_page()
    await page.goto(base + path)
    await expect(page.get_by_test_id("connection")).to_have_text(f"Live · {transport}",
                                                                 timeout=20_000)
    return page


async def open_watched_page(context: BrowserContext, base: str) -> tuple[Page, list[str]]:
    """A page for XSS payloads, watched for what one that ran would do: `window.__xss`
    starts at 0 for the payloads to count up, and every dialog is recorded in the list
    returned, then dismissed so that the page goes on."""
    await context.add_init_script("window.__xss = 0;")
    page = await open_page(context, base)
    dialogs: list[str] = []

    async def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    return page, dialogs


def assert_page_has(page_messages: list[dict[str, Any]], theirs: list[dict[str, Any]],
                    ) -> dict[str, Any]:
    """Every message the server has is in the page, with the same content and status:
    returns the server's last."""
    mine = {m["id"]: m for m in page_messages}
    assert theirs, "server has no messages"
    for m in theirs:
        assert m["id"] in mine, f"message {m['id']} missing in the page"
        assert mine[m["id"]]["content"] == m["content"], f"content of {m['id']} differs"
        assert mine[m["id"]]["status"] == m["status"]
    return theirs[-1]


async def send(page: Page, text: str) -> str:
    """Type and send a message; returns the chat id from the URL."""
    box = page.get_by_role("textbox", name="Message")
    await box.fill(text)
    await page.get_by_role("button", name="Send").click()
    await expect(page).to_have_url(CHAT_URL)
    match = CHAT_URL.search(page.url)
    assert match
    return match.group(1)


async def client_messages(page: Page, chat: str) -> list[dict[str, Any]]:
    """The messages as the page's client assembled them (raw markdown text)."""
    result: list[dict[str, Any]] = await page.evaluate(
        """(chat) => (window.chatcast.chat(chat)?.messages || []).map(
             (m) => ({id: m.id, role: m.role, content: m.content, status: m.status}))""", chat)
    return result


async def last_answer(page: Page, chat: str) -> dict[str, Any] | None:
    msgs = [m for m in await client_messages(page, chat) if m["role"] == "assistant"]
    return msgs[-1] if msgs else None


async def wait_answer(page: Page, chat: str, *, min_chars: int = 1,
                      status: str | tuple[str, ...] | None = None, not_id: str | None = None,
                      timeout: float = 30_000) -> dict[str, Any]:
    """Wait until the chat's last answer has at least `min_chars` and (optionally) a status;
    with `not_id`, until it is another message than that one (a new answer)."""
    statuses = (status,) if isinstance(status, str) else status
    await page.wait_for_function(
        """([chat, n, statuses, notId]) => {
             const ms = (window.chatcast.chat(chat)?.messages || [])
               .filter(m => m.role === 'assistant');
             const m = ms[ms.length - 1];
             return !!m && m.id !== notId && [...m.content].length >= n
               && (!statuses || statuses.includes(m.status));
           }""", arg=[chat, min_chars, list(statuses) if statuses else None, not_id],
        timeout=timeout)
    answer = await last_answer(page, chat)
    assert answer is not None
    return answer


async def server_messages(page: Page, base: str, chat: str) -> list[dict[str, Any]]:
    """The server's copy (GET /api/chats/{chat}/messages), with the page's identity."""
    res = await page.request.get(f"{base}/api/chats/{chat}/messages?limit=200")
    assert res.ok, await res.text()
    body = await res.json()
    messages: list[dict[str, Any]] = body["messages"]
    return messages


RECORDER = """
Object.defineProperty(window, 'chatcast', { configurable: true, get() { return this.__cc; },
  set(client) {
    this.__cc = client;
    window.__integrity = [];
    window.__events = [];
    client.on('integrity', (e) => window.__integrity.push(e.ok));
    client.on('state', (s) => window.__events.push(`state ${s.state} ${s.transport}`));
    client.on('event', (e) => window.__events.push(JSON.stringify(
      {type: e.type, gen: e.gen, seq: e.seq, text: e.text, status: e.status, length: e.length,
       active: e.active && {seq: e.active.seq, content: e.active.content}, cursor: e.cursor})));
  } });
"""


async def record(context: BrowserContext) -> None:
    """From the next page load on, record every `done` verification (length + sha256) and
    every event the page's client applies (printed when a verification fails)."""
    await context.add_init_script(RECORDER)


async def integrity(page: Page) -> list[bool]:
    result: list[bool] = await page.evaluate("() => window.__integrity || []")
    if not all(result):
        events = await page.evaluate("() => window.__events || []")
        print("events seen by the page:", *events, sep="\n  ")
    return result
