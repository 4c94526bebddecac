"""The core scenarios on every browser engine — Firefox (BiDi), WebKit (WebKitGTK) and
Chromium — through one driver interface (engines.py), against a real chatcast process:
stream, stop from a second tab, reload mid-stream resumes exactly, WebSocket blocked -> SSE,
and the XSS corpus. An engine that cannot run here is skipped with one line saying why.

Each engine's tests form one xdist group (`--dist loadgroup`): one browser per engine and
worker, and the two workers run different engines side by side."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.engines import Browser, EngineError, Page, launch, unavailable
from tests.e2e.test_ui import UNSAFE_DOM, XSS
from tests.e2e.ui import assert_page_has
from tests.helpers.ws_block_proxy import WebSocketBlockingProxy

pytestmark = pytest.mark.browser

ENGINES = ["firefox", "webkit", "chromium"]
REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"

BOX = ".composer textarea"
SEND = 'button[aria-label="Send"]'
STOP = 'button[aria-label="Stop"]'

# Records what the page saw of a click on Stop and what the client then did.
WATCH_STOP = """() => {
  window.__seen = [];
  const label = (e) => e.target.tagName + ':' + (e.target.closest('button')?.ariaLabel || '');
  for (const type of ['pointerdown', 'click']) {
    document.addEventListener(type, (e) => window.__seen.push(type + ':' + label(e)), true);
  }
  const stop = window.chatcast.stop.bind(window.chatcast);
  window.chatcast.stop = (...a) => {
    window.__seen.push('stop:' + window.chatcast.state);
    return stop(...a);
  };
}"""

_browsers: dict[str, Browser] = {}
_broken: dict[str, str] = {}


def engine_params() -> list[Any]:
    return [pytest.param(e, marks=pytest.mark.xdist_group(f"engine-{e}"), id=e) for e in ENGINES]


@pytest.fixture(scope="session", autouse=True)
def _quit_browsers() -> Iterator[None]:
    yield
    report = os.environ.get("CHATCAST_ENGINE_VERSIONS")  # benchmarks/engines.py reads it
    if report:
        Path(report).write_text(json.dumps({n: b.version for n, b in _browsers.items()}))
    for b in _browsers.values():
        b.quit()
    _browsers.clear()


@pytest.fixture
def browser(engine: str) -> Browser:
    why = unavailable(engine)
    if why:
        pytest.skip(f"{engine}: {why}")
    if engine in _broken:
        pytest.fail(f"{engine} failed to start earlier: {_broken[engine]}")
    b = _browsers.get(engine)
    if b is None:
        try:
            b = _browsers[engine] = launch(engine)
        except EngineError as exc:
            _broken[engine] = str(exc)
            raise
    return b


@pytest.fixture
def pages(browser: Browser, request: pytest.FixtureRequest) -> Iterator[list[Page]]:
    """Pages opened by the test; screenshotted into test-artifacts/ if it fails, then closed."""
    opened: list[Page] = []
    yield opened
    from tests.e2e.conftest import _FAILED

    failed = request.node.stash.get(_FAILED, False)
    for i, page in enumerate(reversed(opened)):
        try:
            if failed:
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(ARTIFACTS / f"{request.node.name}-{i}.png".replace("/", "_"))
            page.close()
        except Exception as exc:  # a dead page must not hide the test's own failure
            print(f"closing page {i}: {exc}")
            _browsers.pop(browser.name, None)
            browser.quit()
            break


# ---- page helpers -------------------------------------------------------------------------------

def wait(page: Page, fn: str, *args: Any, timeout: float = 30, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = page.js(fn, *args)
        if value:
            return value
        if time.monotonic() > deadline:
            state = page.js("() => JSON.stringify((window.chatcast && [...window.chatcast"
                            ".subs.values()].map((s) => s.messages.at(-1))) || null)"
                            ".slice(0, 400)")
            raise AssertionError(f"timed out after {timeout} s waiting for {what or fn}; "
                                 f"last message: {state}")
        time.sleep(0.1)


BADGE = "() => document.querySelector('[data-testid=connection]')?.textContent || ''"


def open_page(browser: Browser, pages: list[Page], url: str,
              transport: str = "WebSocket") -> Page:
    page = browser.new_page()
    pages.append(page)
    page.goto(url)
    wait(page, f"() => ({BADGE})() === {f'Live · {transport}'!r}", timeout=30,
         what=f"Live · {transport}")
    page.js(RECORD)
    return page


RECORD = """() => {
  if (!window.__integrity) {
    window.__integrity = [];
    window.chatcast.on('integrity', (e) => window.__integrity.push(e.ok));
  }
  return true;
}"""

MESSAGES = """(chat) => (window.chatcast.chat(chat)?.messages || []).map(
  (m) => ({id: m.id, role: m.role, content: m.content, status: m.status}))"""

ANSWER = """(chat, n, statuses, notId) => {
  const ms = (window.chatcast.chat(chat)?.messages || []).filter((m) => m.role === 'assistant');
  const m = ms[ms.length - 1];
  return !!m && m.id !== notId && [...m.content].length >= n
    && (!statuses || statuses.includes(m.status))
    ? {id: m.id, content: m.content, status: m.status} : null;
}"""

SET_DRAFT = """(text) => {
  const box = document.querySelector('.composer textarea');
  box.value = text;
  box.dispatchEvent(new Event('input', {bubbles: true}));
  return true;
}"""


def send(page: Page, text: str, *, typed: bool = True) -> str:
    if typed:
        page.fill(BOX, text)
    else:
        page.js(SET_DRAFT, text)
    page.click(SEND)
    chat: str = wait(page, "() => (/^#\\/c\\/([A-Za-z0-9_-]+)$/.exec(location.hash) || [])[1]",
                     what="the chat in the URL")
    return chat


def wait_answer(page: Page, chat: str, *, min_chars: int = 1,
                status: str | tuple[str, ...] | None = None, not_id: str | None = None,
                timeout: float = 30) -> dict[str, Any]:
    statuses = [status] if isinstance(status, str) else list(status) if status else None
    answer: dict[str, Any] = wait(page, ANSWER, chat, min_chars, statuses, not_id,
                                  timeout=timeout, what=f"answer {status} >= {min_chars} chars")
    return answer


def server_messages(page: Page, chat: str) -> list[dict[str, Any]]:
    body: dict[str, Any] = page.js(
        "async (chat) => (await (await fetch(`/api/chats/${chat}/messages?limit=200`,"
        " {cache: 'no-store'})).json())", chat)
    return list(body["messages"])


def assert_same_as_server(page: Page, chat: str) -> dict[str, Any]:
    return assert_page_has(page.js(MESSAGES, chat), server_messages(page, chat))


def integrity(page: Page) -> list[bool]:
    result: list[bool] = page.js("() => window.__integrity || []")
    return result


def page_text(page: Page, selector: str) -> str:
    text: str = page.js("(s) => [...document.querySelectorAll(s)].at(-1)?.innerText || ''",
                        selector)
    return text


def assert_finished_exactly(page: Page, chat: str) -> str:
    """The answer completes with the server's text, the page's digest check passes, and it is
    rendered whole once: returns the rendered text."""
    done = wait_answer(page, chat, status="complete")
    final = assert_same_as_server(page, chat)
    assert done["content"] == final["content"]
    assert integrity(page) == [True]
    # The finished answer is rendered whole once after `done` (render.js), on the page's next
    # frame: on a loaded machine that can come after the client state is final.
    wait(page, "() => !document.querySelector('.msg.assistant .markdown.streaming')"
               " && document.querySelector('.msg.assistant .markdown').textContent"
               ".includes('stays a link')", timeout=15, what="the finished answer rendered")
    text = page_text(page, ".msg.assistant .markdown")
    assert text.count("stays a link") == 1
    return text


# ---- scenarios ----------------------------------------------------------------------------------

@pytest.mark.parametrize("engine", engine_params())
def test_stream(engine: str, browser: Browser, pages: list[Page], app: Any) -> None:
    page = open_page(browser, pages, app.url)
    chat = send(page, "Tell me about streaming")
    wait_answer(page, chat, min_chars=30, status="streaming")
    wait(page, "() => !!document.querySelector('.msg.assistant .markdown.streaming')",
         what="the answer rendered as streaming")
    text = assert_finished_exactly(page, chat)
    assert "<script>" in text  # shown as text, not run
    # The code block is highlighted by the vendored highlight.js.
    assert page.js("() => document.querySelectorAll('.msg.assistant .code-block [class^=hljs-]')"
                   ".length") > 0


@pytest.mark.parametrize("rate", [8])  # still streaming while a second tab opens, under load
@pytest.mark.parametrize("engine", engine_params())
def test_stop_from_a_second_tab(engine: str, browser: Browser, pages: list[Page],
                                app: Any) -> None:
    tab1 = open_page(browser, pages, app.url)
    chat = send(tab1, "Tell me about fan-out to many tabs")
    tab2 = open_page(browser, pages, f"{app.url}/#/c/{chat}")
    wait_answer(tab1, chat, min_chars=20, status="streaming")
    wait_answer(tab2, chat, min_chars=20, status="streaming")
    # What the page saw of the click, and what the client sent: printed if the stop is late.
    tab2.js(WATCH_STOP)
    tab2.click(STOP)
    try:
        a2 = wait_answer(tab2, chat, status="stopped", timeout=8)
    except AssertionError:
        seen = tab2.js("() => [window.__seen, document.visibilityState, document.hasFocus()]")
        print(f"{engine}: Stop click had no effect within 8 s; page saw {seen}; clicking again")
        tab2.js(f"() => document.querySelector({STOP!r}).click()")
        a2 = wait_answer(tab2, chat, status="stopped", timeout=10)
    a1 = wait_answer(tab1, chat, status="stopped", timeout=10)
    assert a1["id"] == a2["id"]
    wait(tab1, "() => !!document.querySelector('button[aria-label=\"Continue\"]')", timeout=10,
         what="Continue button in the first tab")
    final = assert_same_as_server(tab1, chat)
    assert final["status"] == "stopped" and final["content"]
    # Both copies converge on the server's text (the stop point is the server's).
    wait(tab2, "(c, t) => window.chatcast.chat(c).messages.at(-1).content === t", chat,
         final["content"], timeout=10, what="second tab's text equal to the server's")
    wait(tab1, "(c, t) => window.chatcast.chat(c).messages.at(-1).content === t", chat,
         final["content"], timeout=10, what="first tab's text equal to the server's")


@pytest.mark.parametrize("rate", [12])
@pytest.mark.parametrize("engine", engine_params())
def test_reload_mid_stream_resumes_exactly(engine: str, browser: Browser, pages: list[Page],
                                           app: Any) -> None:
    page = open_page(browser, pages, app.url)
    chat = send(page, "Explain cursors, please")
    before = wait_answer(page, chat, min_chars=60, status="streaming")
    page.reload()
    wait(page, f"() => ({BADGE})() === 'Live · WebSocket'", what="Live after reload")
    page.js(RECORD)
    after = wait_answer(page, chat, status="streaming", timeout=10)
    assert after["content"].startswith(before["content"][:60])
    assert_finished_exactly(page, chat)


@pytest.mark.parametrize("engine", engine_params())
def test_websocket_blocked_falls_back_to_sse(engine: str, browser: Browser, pages: list[Page],
                                             app: Any) -> None:
    with WebSocketBlockingProxy(int(app.url.rsplit(":", 1)[1])) as proxy:
        page = browser.new_page()
        pages.append(page)
        page.goto(proxy.url)
        wait(page, f"() => ({BADGE})() === 'Live · SSE'", timeout=40, what="Live · SSE")
        page.js(RECORD)
        chat = send(page, "Compare WebSockets and SSE")
        wait_answer(page, chat, min_chars=20, status="streaming")
        wait_answer(page, chat, status="complete")
        assert_same_as_server(page, chat)
        assert integrity(page) == [True]
        assert proxy.refused >= 1
        # Stop goes over HTTP in this mode.
        page.click('button[aria-label="Regenerate"]')
        wait_answer(page, chat, min_chars=20, status="streaming")
        page.click(STOP)
        wait_answer(page, chat, status="stopped", timeout=10)
        assert_same_as_server(page, chat)
        page.close()
        pages.remove(page)


@pytest.mark.parametrize("rate", [400])
@pytest.mark.parametrize("engine", engine_params())
def test_xss_corpus_is_inert(engine: str, browser: Browser, pages: list[Page],
                             app: Any) -> None:
    page = open_page(browser, pages, app.url)
    chat = send(page, "XSS corpus", typed=False)
    answer = wait_answer(page, chat, status="complete")
    for payload in XSS:
        page.js(SET_DRAFT, "echo: " + payload)
        page.click(SEND)
        answer = wait_answer(page, chat, status="complete", not_id=answer["id"], timeout=20)
        assert answer["content"] == payload
    for _ in range(2):
        assert page.js("() => window.__xss === undefined")
        assert page.js(UNSAFE_DOM) == []
        assert page.dialogs() == []
        page.reload()
        wait(page, f"() => ({BADGE})() === 'Live · WebSocket'", what="Live after reload")
        wait_answer(page, chat, status="complete")
        wait(page, "() => document.querySelectorAll('.msg.assistant').length > 20",
             what="the answers rendered")
    hrefs: list[list[str]] = page.js(
        "() => [...document.querySelectorAll('.thread a[href]')].map("
        "(a) => [a.getAttribute('href'), a.getAttribute('rel')])")
    for href, rel in hrefs:
        assert re.match(r"^(https?:|mailto:)", href), href
        assert rel == "noopener noreferrer"
