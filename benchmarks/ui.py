"""The demo UI measured in real Chromium (Playwright + the DevTools protocol) against a real
chatcast process with the demo model:

1. a 10 000-token answer streaming into the open chat: long-task time (PerformanceObserver
   `longtask`, tasks over 50 ms), JS heap sampled while it streams (Runtime.getHeapUsage);
2. 200 chats opened and closed, twice: JS heap after a forced GC (HeapProfiler.collectGarbage)
   before, after the first round and after the second — a leak grows in both rounds, a bounded
   cache levels off;
3. the page at a phone viewport (390 x 844, touch): horizontal overflow, the message box in
   view and usable, the sidebar as an off-screen drawer opened and closed by taps.

    python -m benchmarks.ui [--tokens 10000] [--rate 500] [--chats 200]

Writes benchmarks/results/ui.json, ui.md and ui_phone.png. No test asserts these figures;
tests/e2e checks the behaviour."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sqlite3
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from playwright.async_api import BrowserContext, Page, async_playwright

from benchmarks import procs
from chatcast.store.ids import new_id

RESULTS = procs.REPO / "benchmarks" / "results"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-timer-throttling",
                 "--disable-renderer-backgrounding", "--enable-precise-memory-info"]

LONG_TASKS = """
window.__long = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__long.push(e.duration);
}).observe({ type: 'longtask', buffered: true });
"""


def long_answer(tokens: int) -> str:
    """Markdown of about `tokens` demo-model tokens (words): headings, paragraphs, lists,
    tables and highlighted code blocks, like a long model answer."""
    para = ("Streaming keeps every tab in step: each chunk has a position, a reconnecting tab "
            "asks for what it missed, and the server checks the whole text at the end. ")
    code = ("```python\nasync def relay(chat, cursor):\n    async for event in chat.events("
            "after=cursor):\n        await send(event)  # exactly once\n```\n\n")
    parts: list[str] = []
    n = 0
    i = 0
    while n < tokens:
        block = (f"## Part {i}\n\n{para * 3}\n\n- first point {i}\n- second point with `code`\n"
                 f"- third point\n\n{code}| key | value |\n|---|---|\n| part | {i} |\n\n")
        parts.append(block)
        n += len(block.split())
        i += 1
    return "".join(parts)


async def new_page(context: BrowserContext, url: str) -> Page:
    page = await context.new_page()
    await page.goto(url)
    await page.wait_for_function(
        "() => document.querySelector('[data-testid=connection]')?.dataset.state === 'open'",
        timeout=30_000)
    return page


async def api(page: Page, method: str, path: str, body: Any = None) -> Any:
    return await page.evaluate(
        """async ([method, path, body]) => {
             const res = await fetch(path, {method, headers: {'Content-Type': 'application/json'},
               body: body === null ? undefined : JSON.stringify(body)});
             if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status}`);
             return res.json();
           }""", [method, path, body])


async def heap(cdp: Any, gc: bool = False) -> float:
    if gc:
        for _ in range(3):
            await cdp.send("HeapProfiler.collectGarbage")
    usage = await cdp.send("Runtime.getHeapUsage")
    return float(usage["usedSize"]) / 2**20


COUNT_MARKDOWN = """(tail) => {
  const r = window.chatcastRenderers;
  r.tail = tail;
  const render = r.markdown;
  window.__md = { calls: 0, chars: 0, ms: 0 };
  r.markdown = (text, opts) => {
    const t = performance.now();
    try { return render(text, opts); } finally {
      window.__md.calls++; window.__md.chars += text.length; window.__md.ms += performance.now() - t;
    }
  };
}"""

METRICS = ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration")


async def main_thread(cdp: Any) -> dict[str, float]:
    got = (await cdp.send("Performance.getMetrics"))["metrics"]
    return {m["name"]: float(m["value"]) for m in got if m["name"] in METRICS}


def renderer_cpu() -> float:
    """CPU seconds used so far by every Chromium renderer process on the machine (this run's
    browser is the only one the benchmark starts): unlike task durations, not inflated by
    time spent waiting for a CPU on a busy machine."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"--type=renderer" in cmd and b"chrom" in cmd and b"--enable-precise-memory-info" in cmd:
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += procs.cpu_seconds(int(entry.name))
    return total


def load_average() -> float:
    return round(float(os.getloadavg()[0]), 1)


async def stream_long_answer(context: BrowserContext, base: str, tokens: int,
                             tail: bool = True) -> dict[str, Any]:
    await context.add_init_script(LONG_TASKS)
    page = await new_page(context, base)
    cdp = await context.new_cdp_session(page)
    await cdp.send("HeapProfiler.enable")
    await cdp.send("Performance.enable")
    await page.evaluate(COUNT_MARKDOWN, tail)
    chat = (await api(page, "POST", "/api/chats", {"title": "Long answer"}))["id"]
    await page.evaluate("(id) => { location.hash = '#/c/' + id; }", chat)
    await page.wait_for_function("(id) => window.chatcast.chat(id)?.ready", arg=chat)
    text = long_answer(tokens)
    before = await heap(cdp, gc=True)
    await page.evaluate("() => { window.__long.length = 0; Object.assign(window.__md,"
                        " {calls: 0, chars: 0, ms: 0}); }")
    m0 = await main_thread(cdp)
    cpu0 = renderer_cpu()
    load0 = load_average()
    started = time.monotonic()
    await api(page, "POST", f"/api/chats/{chat}/messages", {"content": "echo: " + text})
    samples: list[float] = []
    while True:
        samples.append(await heap(cdp))
        done = await page.evaluate(
            "(id) => { const m = window.chatcast.chat(id).messages.at(-1);"
            " return m && m.role === 'assistant' && m.status === 'complete'; }", chat)
        if done:
            break
        if time.monotonic() - started > 600:
            raise RuntimeError("the answer did not finish in 10 minutes")
        await asyncio.sleep(0.25)
    streamed_s = time.monotonic() - started
    await page.wait_for_timeout(500)  # the final render
    m1 = await main_thread(cdp)
    cpu1 = renderer_cpu()
    long_tasks: list[float] = await page.evaluate("() => window.__long")
    markdown: dict[str, float] = await page.evaluate("() => window.__md")
    after = await heap(cdp, gc=True)
    rendered = await page.evaluate(
        "() => ({parts: 0, codeBlocks: document.querySelectorAll('.msg.assistant .code-block')"
        ".length, highlighted: document.querySelectorAll('.msg.assistant [class^=hljs-]')"
        ".length, chars: document.querySelector('.msg.assistant .markdown').innerText.length})")
    await page.close()
    return {
        "tokens": len(text.split()), "chars": len(text), "stream_seconds": round(streamed_s, 2),
        "long_tasks": {"count": len(long_tasks), "total_ms": round(sum(long_tasks), 1),
                       "max_ms": round(max(long_tasks, default=0.0), 1),
                       "share_of_stream": round(sum(long_tasks) / 1000 / streamed_s, 4)},
        "heap_mb": {"before_gc": round(before, 2), "peak_while_streaming": round(max(samples), 2),
                    "median_while_streaming": round(sorted(samples)[len(samples) // 2], 2),
                    "after_gc": round(after, 2)},
        "rendered": rendered,
        "main_thread_ms": {k.removesuffix("Duration").lower(): round((m1[k] - m0[k]) * 1000)
                           for k in METRICS},
        "renderer_cpu_seconds": round(cpu1 - cpu0, 2),
        "markdown_work": {"renders": int(markdown["calls"]), "chars": int(markdown["chars"]),
                          "ms": round(markdown["ms"])},
        "load_average": [load0, load_average()],
        "tail_rendering": tail,
    }


def seed(database_url: str, chats: list[str]) -> None:
    path = database_url.split(":///", 1)[1]
    start = datetime.now(UTC) - timedelta(hours=1)
    rows = []
    for n, chat in enumerate(chats):
        for i, (role, content) in enumerate([
                ("user", f"Question {n}"),
                ("assistant", f"## Answer {n}\n\nSome **markdown** and code:\n\n```js\n"
                              f"const x = {n};\n```\n")]):
            rows.append((new_id(), chat, role, content, "complete", False,
                         (start + timedelta(seconds=2 * n + i)).strftime("%Y-%m-%d %H:%M:%S.%f")))
    with sqlite3.connect(path, timeout=30) as db:
        db.executemany("INSERT INTO message (id, chat_id, role, content, status, is_streaming,"
                       " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)


async def open_close_chats(context: BrowserContext, base: str, database_url: str,
                           count: int) -> dict[str, Any]:
    page = await new_page(context, base)
    cdp = await context.new_cdp_session(page)
    await cdp.send("HeapProfiler.enable")
    chats = [(await api(page, "POST", "/api/chats", {"title": f"Chat {i}"}))["id"]
             for i in range(count)]
    seed(database_url, chats)
    await page.reload()
    await page.wait_for_function(f"() => document.querySelectorAll('.chat-item').length >= {count}")

    async def round_trip() -> float:
        started = time.monotonic()
        for chat in chats:
            await page.evaluate("(id) => { location.hash = '#/c/' + id; }", chat)
            await page.wait_for_function(
                "(id) => window.chatcast.chat(id)?.ready"
                " && document.querySelectorAll('.thread > .msg').length === 2", arg=chat)
            await page.evaluate("() => { location.hash = '#/'; }")
            await page.wait_for_function("() => !document.querySelector('.thread > .msg')")
        return time.monotonic() - started

    # Warm-up: one chat opened and closed, so lazily made structures exist in the baseline.
    await page.evaluate("(id) => { location.hash = '#/c/' + id; }", chats[0])
    await page.wait_for_function("(id) => window.chatcast.chat(id)?.ready", arg=chats[0])
    await page.evaluate("() => { location.hash = '#/'; }")
    baseline = await heap(cdp, gc=True)
    first_s = await round_trip()
    after_first = await heap(cdp, gc=True)
    second_s = await round_trip()
    after_second = await heap(cdp, gc=True)
    dom_nodes = await page.evaluate("() => document.getElementsByTagName('*').length")
    subs = await page.evaluate("() => window.chatcast.subs.size")
    await page.close()
    return {
        "chats": count, "seconds_per_round": [round(first_s, 1), round(second_s, 1)],
        "heap_mb_after_gc": {"baseline": round(baseline, 2), "after_round_1": round(after_first, 2),
                             "after_round_2": round(after_second, 2)},
        "growth_mb": {"round_1": round(after_first - baseline, 2),
                      "round_2": round(after_second - after_first, 2)},
        "dom_elements_after": dom_nodes, "subscriptions_after": subs,
    }


PHONE_CHECK = """() => {
  const doc = document.documentElement;
  const box = document.querySelector('.composer textarea').getBoundingClientRect();
  const send = document.querySelector('.composer button').getBoundingClientRect();
  const side = document.querySelector('.sidebar').getBoundingClientRect();
  return {
    scrollWidth: doc.scrollWidth, clientWidth: doc.clientWidth,
    horizontalScroll: Math.max(doc.scrollWidth, document.body.scrollWidth) > doc.clientWidth,
    input: {top: box.top, bottom: box.bottom, left: box.left, right: box.right, height: box.height},
    sendButton: {right: send.right, bottom: send.bottom, width: send.width, height: send.height},
    sidebar: {left: side.left, right: side.right, width: side.width},
    viewport: {width: innerWidth, height: innerHeight},
  };
}"""


async def phone(browser: Any, base: str) -> dict[str, Any]:
    context = await browser.new_context(viewport={"width": 390, "height": 844},
                                        device_scale_factor=3, is_mobile=True, has_touch=True)
    page = await new_page(context, base)
    box = page.get_by_role("textbox", name="Message")
    await box.tap()
    await box.fill("A question typed on a phone, with a long unbroken word: "
                   "supercalifragilisticexpialidocious-and-then-some-more-characters")
    await page.get_by_role("button", name="Send").tap()
    await page.wait_for_function(
        "() => [...document.querySelectorAll('.msg.assistant')].some("
        "(m) => m.dataset.status === 'complete')", timeout=60_000)
    closed = await page.evaluate(PHONE_CHECK)
    focused = await page.evaluate(
        "() => { const b = document.querySelector('.composer textarea'); b.focus();"
        " return document.activeElement === b; }")
    await page.get_by_role("button", name="Toggle sidebar").tap()
    await page.wait_for_timeout(400)  # the drawer's transition
    opened = await page.evaluate(PHONE_CHECK)
    scrim = await page.locator(".scrim").is_visible()
    await page.screenshot(path=str(RESULTS / "ui_phone_drawer.png"))
    await page.locator(".scrim").tap(position={"x": 370, "y": 400})
    await page.wait_for_timeout(400)
    after = await page.evaluate(PHONE_CHECK)
    await page.screenshot(path=str(RESULTS / "ui_phone.png"))
    await context.close()
    vh = closed["viewport"]["height"]
    return {
        "viewport": closed["viewport"], "horizontal_scroll": closed["horizontalScroll"]
        or opened["horizontalScroll"], "scroll_width": closed["scrollWidth"],
        "input_in_view": closed["input"]["top"] >= 0 and closed["input"]["bottom"] <= vh,
        "input_focusable": focused, "input_rect": closed["input"],
        "send_button": closed["sendButton"],
        "drawer": {"closed_right_edge": closed["sidebar"]["right"],
                   "open_left_edge": opened["sidebar"]["left"],
                   "open_width": opened["sidebar"]["width"], "scrim_shown": scrim,
                   "closed_again_right_edge": after["sidebar"]["right"]},
    }


def markdown_report(r: dict[str, Any]) -> str:
    s, c, p, w = r["stream"], r["chats"], r["phone"], r["stream_whole_rerender"]
    lt, hp, mt = s["long_tasks"], s["heap_mb"], s["main_thread_ms"]
    wlt, wmt = w["long_tasks"], w["main_thread_ms"]
    return f"""# UI measurements (real Chromium)

Run at {r['when']} on commit {r['commit']}, {r['browser']}, {r['machine']}.
`python -m benchmarks.ui` — raw figures in ui.json.

## A {s['tokens']:,}-token answer streaming ({s['chars']:,} characters, {s['stream_seconds']} s)

| | |
|---|---|
| long tasks (> 50 ms) | {lt['count']}, {lt['total_ms']} ms in all ({lt['share_of_stream']:.1%} of the stream), longest {lt['max_ms']} ms |
| JS heap before (after GC) | {hp['before_gc']} MB |
| JS heap while streaming | median {hp['median_while_streaming']} MB, peak {hp['peak_while_streaming']} MB |
| JS heap after (after GC) | {hp['after_gc']} MB |
| renderer CPU time | {s['renderer_cpu_seconds']} s (from /proc) |
| main thread busy | {mt['task']} ms in tasks: script {mt['script']} ms, layout {mt['layout']} ms, style {mt['recalcstyle']} ms |
| rendered | {s['rendered']['codeBlocks']} code blocks, {s['rendered']['highlighted']} highlighted tokens |

Only the text after the last finished block is rendered again on each frame (render.js); the
finished answer is rendered whole once at the end. For comparison, the same answer with the
whole text rendered on every frame (`renderers.tail = false`):

| | tail only (default) | whole answer every frame |
|---|---|---|
| long tasks | {lt['count']}, {lt['total_ms']} ms, longest {lt['max_ms']} ms | {wlt['count']}, {wlt['total_ms']} ms, longest {wlt['max_ms']} ms |
| markdown rendered | {s['markdown_work']['renders']} renders, {s['markdown_work']['chars']:,} characters, {s['markdown_work']['ms']} ms | {w['markdown_work']['renders']} renders, {w['markdown_work']['chars']:,} characters, {w['markdown_work']['ms']} ms |
| renderer CPU time | {s['renderer_cpu_seconds']} s | {w['renderer_cpu_seconds']} s |
| main thread busy | {mt['task']} ms (script {mt['script']} ms) | {wmt['task']} ms (script {wmt['script']} ms) |
| JS heap peak | {hp['peak_while_streaming']} MB | {w['heap_mb']['peak_while_streaming']} MB |
| stream took | {s['stream_seconds']} s | {w['stream_seconds']} s |

The machine's 1-minute load average during the runs: {s['load_average']} and
{w['load_average']} (2 shared cores): long-task figures include time the page's thread waited
for a CPU, so compare the two columns rather than read them as absolute; the renderer CPU
time is what the page really cost.

## {c['chats']} chats opened and closed, twice

| | JS heap after GC |
|---|---|
| baseline | {c['heap_mb_after_gc']['baseline']} MB |
| after round 1 | {c['heap_mb_after_gc']['after_round_1']} MB ({c['growth_mb']['round_1']:+} MB) |
| after round 2 | {c['heap_mb_after_gc']['after_round_2']} MB ({c['growth_mb']['round_2']:+} MB) |

Rounds took {c['seconds_per_round'][0]} s and {c['seconds_per_round'][1]} s; afterwards
{c['subscriptions_after']} subscriptions and {c['dom_elements_after']} DOM elements remain.
What round 1 adds and round 2 does not is the bounded cache of rendered messages (400 entries).

## Phone viewport ({p['viewport']['width']}×{p['viewport']['height']}, touch)

| | |
|---|---|
| horizontal scroll | {'yes' if p['horizontal_scroll'] else 'none'} (document {p['scroll_width']} px wide) |
| message box | {'in view' if p['input_in_view'] else 'NOT in view'} (top {p['input_rect']['top']:.0f} px, bottom {p['input_rect']['bottom']:.0f} px), focusable: {p['input_focusable']} |
| sidebar | a drawer: off-screen when closed (right edge {p['drawer']['closed_right_edge']:.0f} px), opened by the menu button at {p['drawer']['open_left_edge']:.0f} px, {p['drawer']['open_width']:.0f} px wide, scrim shown: {p['drawer']['scrim_shown']}; a tap on the scrim closes it (right edge {p['drawer']['closed_again_right_edge']:.0f} px) |

Screenshots: ui_phone.png, ui_phone_drawer.png.
"""


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.e2e.conftest import chromium_path

    path = chromium_path()
    if not path:
        raise SystemExit("no Chromium found (set CHATCAST_CHROMIUM)")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        server = procs.start_chatcast(
            "ui", data, rate=args.rate, redis_url=None, cpu=None, log=Path(tmp) / "server.log",
            extra={"CHATCAST_MAX_MESSAGE_CHARS": "400000"})
        base = f"http://127.0.0.1:{server.ports[0]}"
        try:
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
                ctx = await browser.new_context(viewport={"width": 1280, "height": 800})
                stream = await stream_long_answer(ctx, base, args.tokens)
                await ctx.close()
                # The same answer with the whole text rendered on every frame, for comparison.
                ctx = await browser.new_context(viewport={"width": 1280, "height": 800})
                whole = await stream_long_answer(ctx, base, args.tokens, tail=False)
                await ctx.close()
                ctx = await browser.new_context(viewport={"width": 1280, "height": 800})
                chats = await open_close_chats(ctx, base, f"sqlite:///{data}/chatcast.db",
                                               args.chats)
                await ctx.close()
                ph = await phone(browser, base)
                version = browser.version
                await browser.close()
        finally:
            server.stop()
    return {"when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "browser": f"Chromium {version}",
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
            "stream": stream, "stream_whole_rerender": whole, "chats": chats, "phone": ph}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=500.0, help="demo tokens per second")
    parser.add_argument("--chats", type=int, default=200)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(run(args))
    result["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=procs.REPO,
                                      capture_output=True, text=True).stdout.strip()
    (RESULTS / "ui.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "ui.md").write_text(markdown_report(result))
    print(markdown_report(result))


if __name__ == "__main__":
    main()
