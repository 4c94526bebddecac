"""Reasoning in the demo UI, in real Chromium against a real chatcast process (the demo
model's thinking mode): it streams in its block above the answer, the block collapses when
the answer starts, "Thought for N s" survives a reload, and the XSS corpus as reasoning text
runs nothing."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.async_api import BrowserContext, expect

from tests.e2e.test_ui import UNSAFE_DOM, XSS
from tests.e2e.ui import (
    integrity,
    open_page,
    open_watched_page,
    record,
    send,
    server_messages,
    wait_answer,
)

pytestmark = pytest.mark.browser

THOUGHT = re.compile(r"^Thought for \d+ s$")


async def page_answer(page: Any, chat: str) -> dict[str, Any]:
    """The last answer as the page's client holds it, reasoning included."""
    result: dict[str, Any] = await page.evaluate(
        """(chat) => { const ms = window.chatcast.chat(chat).messages
             .filter((m) => m.role === 'assistant');
           const m = ms[ms.length - 1];
           return {id: m.id, content: m.content, reasoning: m.reasoning || '',
                   status: m.status}; }""", chat)
    return result


@pytest.mark.parametrize("rate", [12])
async def test_reasoning_streams_collapses_and_is_remembered(app: Any,
                                                             context: BrowserContext) -> None:
    await record(context)
    page = await open_page(context, app.url)
    chat = await send(page, "think: what is a cursor?")
    block = page.locator(".msg.assistant .reasoning").last
    head, body = block.locator("summary"), block.locator(".reasoning-body")
    answer_text = page.locator(".msg.assistant > .body > .markdown:not(.reasoning-body)").last

    # Live: "Thinking…", open, its text growing, no answer yet.
    await expect(head).to_have_text("Thinking…")
    await expect(body).to_be_visible()
    await expect(body).to_contain_text("Thinking about")
    first = await body.inner_text()
    await expect(body).not_to_have_text(first)  # still streaming in
    assert (await page_answer(page, chat))["content"] == ""
    assert await block.evaluate("(el) => el.open")

    # The answer starts: the block collapses and says how long the model thought.
    await wait_answer(page, chat, min_chars=1)
    await expect(head).to_have_text(THOUGHT)
    await expect(body).to_be_hidden()
    await expect(answer_text).not_to_be_empty()
    done = await wait_answer(page, chat, status="complete")
    label = await head.inner_text()
    [*_, theirs] = await server_messages(page, app.url, chat)
    assert theirs["content"] == done["content"]
    assert theirs["reasoning"] == (await page_answer(page, chat))["reasoning"] != ""
    assert theirs["reasoning_started_at"] < theirs["reasoning_ended_at"]

    # The reader may open it again; markdown renders (bold from the demo's reasoning).
    await head.click()
    await expect(body).to_be_visible()
    await expect(body.locator("strong").first).to_contain_text("Thinking about")

    # After a reload, from the server's row: the same label, collapsed, the same text.
    await page.reload()
    await wait_answer(page, chat, status="complete")
    block = page.locator(".msg.assistant .reasoning").last
    await expect(block.locator("summary")).to_have_text(label)
    await expect(block.locator(".reasoning-body")).to_be_hidden()
    assert (await page_answer(page, chat))["reasoning"] == theirs["reasoning"]
    assert all(await integrity(page))
    assert not context.page_errors  # type: ignore[attr-defined]


@pytest.mark.parametrize("rate", [12])
async def test_stop_while_thinking_keeps_the_reasoning_open(app: Any,
                                                            context: BrowserContext) -> None:
    page = await open_page(context, app.url)
    chat = await send(page, "think: stop me")
    block = page.locator(".msg.assistant .reasoning").last
    await expect(block.locator(".reasoning-body")).to_contain_text("Thinking about")
    await page.get_by_role("button", name="Stop", exact=True).click()
    answer = await wait_answer(page, chat, min_chars=0, status="stopped")
    assert answer["content"] == ""
    await expect(block.locator("summary")).to_have_text(THOUGHT)
    await expect(block.locator(".reasoning-body")).to_be_visible()  # no answer to show
    [*_, theirs] = await server_messages(page, app.url, chat)
    assert theirs["status"] == "stopped" and theirs["reasoning"]
    assert theirs["reasoning"] == (await page_answer(page, chat))["reasoning"]


@pytest.mark.parametrize("rate", [400])
async def test_xss_corpus_as_reasoning_is_inert(app: Any, context: BrowserContext) -> None:
    page, dialogs = await open_watched_page(context, app.url)
    chat = await send(page, "echo:<think>" + XSS[0] + "</think>ok")
    answer = await wait_answer(page, chat, status="complete")
    for payload in XSS[1:]:
        await page.get_by_role("textbox", name="Message").fill(f"echo:<think>{payload}</think>ok")
        await page.get_by_role("button", name="Send").click()
        answer = await wait_answer(page, chat, status="complete", not_id=answer["id"],
                                   timeout=20_000)
        mine = await page_answer(page, chat)
        assert (mine["reasoning"], mine["content"]) == (payload, "ok")
    for _ in range(2):
        blocks = page.locator(".msg.assistant .reasoning")
        assert await blocks.count() == len(XSS)
        for block in await blocks.all():  # open every block: its markdown is in the page
            await block.evaluate("(el) => { el.open = true; }")
        assert await page.evaluate("() => window.__xss") == 0
        assert await page.evaluate(UNSAFE_DOM) == []
        assert dialogs == []
        await page.reload()  # then again, rendered from the server's rows
        await wait_answer(page, chat, status="complete")
    assert not context.page_errors  # type: ignore[attr-defined]
