"""One small driver interface over three engines, so the core scenarios are written once:

- Firefox (Debian's firefox-esr) over WebDriver BiDi, through puppeteer-core in Node
  (tests/e2e/firefox/bridge.mjs; `npm ci` there installs the pinned version);
- WebKit (WebKitGTK's MiniBrowser) through WebKitWebDriver and Selenium, under `xvfb-run -a`
  (MiniBrowser has no headless mode) with hard timeouts: a session that hangs is killed;
- Chromium through the same puppeteer-core bridge (Playwright drives it in test_ui.py).

Each engine is a `Browser` with `new_page()`; a `Page` navigates, evaluates a JavaScript
function in the page, clicks and fills by CSS selector, reloads, and takes screenshots.
`unavailable(name)` says in one line why an engine cannot run here, or None."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Protocol

HERE = Path(__file__).resolve().parent
BRIDGE_DIR = HERE / "firefox"
FIREFOX = os.environ.get("CHATCAST_FIREFOX", "/usr/bin/firefox-esr")
CHROMIUM = os.environ.get("CHATCAST_CHROMIUM", "/usr/bin/chromium")
WEBKIT_DRIVER = os.environ.get("CHATCAST_WEBKIT_DRIVER", "/usr/bin/WebKitWebDriver")
MINIBROWSER = os.environ.get("CHATCAST_MINIBROWSER",
                             "/usr/lib/x86_64-linux-gnu/webkit2gtk-4.1/MiniBrowser")
#: Longest any single driver command may take before the engine counts as hung.
COMMAND_TIMEOUT = 45.0


class EngineError(RuntimeError):
    pass


class Page(Protocol):
    def goto(self, url: str) -> None: ...
    def js(self, fn: str, *args: Any) -> Any: ...
    def click(self, selector: str) -> None: ...
    def fill(self, selector: str, text: str) -> None: ...
    def reload(self) -> None: ...
    def dialogs(self) -> list[str]: ...
    def screenshot(self, path: Path) -> None: ...
    def close(self) -> None: ...


class Browser(Protocol):
    name: str
    version: str
    def new_page(self) -> Page: ...
    def quit(self) -> None: ...


def unavailable(name: str) -> str | None:
    """Why `name` cannot run here (one line), or None."""
    node = shutil.which("node")
    if name in ("firefox", "chromium"):
        binary = FIREFOX if name == "firefox" else CHROMIUM
        if not Path(binary).exists():
            return f"{binary} not installed"
        if not node:
            return "node not installed (puppeteer-core drives this engine)"
        if not (BRIDGE_DIR / "node_modules" / "puppeteer-core").is_dir():
            return "puppeteer-core not installed (run `npm ci` in tests/e2e/firefox)"
        return None
    if name == "webkit":
        if not Path(WEBKIT_DRIVER).exists():
            return f"{WEBKIT_DRIVER} not installed (Debian package webkit2gtk-driver)"
        if not Path(MINIBROWSER).exists():
            return f"{MINIBROWSER} not installed"
        if not shutil.which("xvfb-run"):
            return "xvfb-run not installed (Debian packages xvfb, xauth)"
        try:
            import selenium  # noqa: F401
        except ImportError:
            return "Python selenium not installed (pip install -e .[test])"
        return None
    return f"unknown engine {name}"


def launch(name: str) -> Browser:
    if name == "firefox":
        return PuppeteerBrowser("firefox", FIREFOX, [])
    if name == "chromium":
        from tests.e2e.conftest import CHROMIUM_ARGS
        return PuppeteerBrowser("chrome", CHROMIUM, CHROMIUM_ARGS)
    if name == "webkit":
        return WebKitBrowser()
    raise EngineError(f"unknown engine {name}")


# ---- puppeteer-core (Firefox over BiDi, Chromium over CDP) -----------------------------------

class PuppeteerBrowser:
    def __init__(self, browser: str, executable: str, args: list[str]) -> None:
        self.name = "firefox" if browser == "firefox" else "chromium"
        self._proc = subprocess.Popen(
            ["node", str(BRIDGE_DIR / "bridge.mjs")], cwd=BRIDGE_DIR, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        self._seq = 0
        self._lock = threading.Lock()
        try:
            self.version = str(self.call("launch", browser=browser, executablePath=executable,
                                         args=args, timeout=90))
        except BaseException:
            self.kill()
            raise

    def call(self, op: str, timeout: float = COMMAND_TIMEOUT, **params: Any) -> Any:
        with self._lock:
            assert self._proc.stdin and self._proc.stdout
            self._seq += 1
            req = {"id": self._seq, "op": op, **params}
            try:
                self._proc.stdin.write((json.dumps(req) + "\n").encode())
                self._proc.stdin.flush()
            except BrokenPipeError as exc:
                raise EngineError(f"{self.name} bridge is gone") from exc
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.kill()
                    raise EngineError(f"{self.name}: {op} took more than {timeout:.0f} s")
                ready, _, _ = select.select([self._proc.stdout], [], [], left)
                if not ready:
                    continue
                line = self._proc.stdout.readline()
                if not line:
                    raise EngineError(f"{self.name} bridge exited during {op}")
                reply = json.loads(line)
                if reply.get("id") != self._seq:
                    continue
                if not reply["ok"]:
                    raise EngineError(f"{self.name}: {op} failed: {reply['error']}")
                return reply["value"]

    def new_page(self) -> PuppeteerPage:
        return PuppeteerPage(self, str(self.call("newPage")))

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait(10)

    def quit(self) -> None:
        try:
            self.call("quit", timeout=20)
            self._proc.wait(10)
        except Exception:
            pass
        self.kill()


class PuppeteerPage:
    def __init__(self, browser: PuppeteerBrowser, page: str) -> None:
        self.b = browser
        self.id = page

    def goto(self, url: str) -> None:
        self.b.call("goto", page=self.id, url=url)

    def js(self, fn: str, *args: Any) -> Any:
        return self.b.call("evaluate", page=self.id, fn=fn, args=list(args))

    def click(self, selector: str) -> None:
        self.b.call("click", page=self.id, selector=selector)

    def fill(self, selector: str, text: str) -> None:
        self.b.call("fill", page=self.id, selector=selector, text=text)

    def reload(self) -> None:
        self.b.call("reload", page=self.id)

    def dialogs(self) -> list[str]:
        return list(self.b.call("dialogs", page=self.id))

    def screenshot(self, path: Path) -> None:
        self.b.call("screenshot", page=self.id, path=str(path))

    def close(self) -> None:
        self.b.call("closePage", page=self.id)


# ---- WebKitGTK through WebKitWebDriver + Selenium ---------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class WebKitBrowser:
    """WebKitWebDriver runs under `xvfb-run -a` (its own X display); every command has a
    deadline, after which the driver's whole process group is killed."""

    name = "webkit"

    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.webkitgtk.options import Options

        port = _free_port()
        self._proc = subprocess.Popen(
            ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", WEBKIT_DRIVER, f"--port={port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        try:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                    break
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    raise EngineError("WebKitWebDriver did not start")
                time.sleep(0.1)
            options = Options()
            options.binary_location = MINIBROWSER
            options.add_argument("--automation")
            self.driver = self._bounded(
                lambda: webdriver.Remote(command_executor=f"http://127.0.0.1:{port}",
                                         options=options), 60, "new session")
            self.driver.set_page_load_timeout(30)
            self.driver.set_script_timeout(30)
            self.version = str(self.driver.capabilities.get("browserVersion", "?"))
            self._first = self.driver.current_window_handle
            self._current = self._first
            self._used_first = False
        except BaseException:
            self.kill()
            raise

    def _bounded(self, fn: Any, timeout: float, what: str) -> Any:
        """Run a driver command; if it takes longer than `timeout`, kill the engine (the call
        then fails instead of hanging the test run)."""
        fired = threading.Event()

        def expire() -> None:
            fired.set()
            self.kill()

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            return fn()
        except Exception as exc:
            if fired.is_set():
                raise EngineError(f"webkit: {what} took more than {timeout:.0f} s") from exc
            raise
        finally:
            timer.cancel()

    def run(self, handle: str, fn: Any, what: str, timeout: float = COMMAND_TIMEOUT) -> Any:
        with self._lock:
            if self._current != handle:
                self._bounded(lambda: self.driver.switch_to.window(handle), timeout, "switch")
                self._current = handle
            return self._bounded(fn, timeout, what)

    def new_page(self) -> WebKitPage:
        with self._lock:
            if not self._used_first:
                self._used_first = True
                return WebKitPage(self, self._first)
            self._bounded(lambda: self.driver.switch_to.new_window("tab"), COMMAND_TIMEOUT,
                          "new tab")
            self._current = self.driver.current_window_handle
            return WebKitPage(self, self._current)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(10)

    def quit(self) -> None:
        with contextlib.suppress(Exception):
            self._bounded(self.driver.quit, 20, "quit")
        self.kill()


class WebKitPage:
    def __init__(self, browser: WebKitBrowser, handle: str) -> None:
        self.b = browser
        self.handle = handle

    def goto(self, url: str) -> None:
        self.b.run(self.handle, lambda: self.b.driver.get(url), "get")

    def js(self, fn: str, *args: Any) -> Any:
        script = f"return ({fn}).apply(null, arguments);"
        return self.b.run(self.handle, lambda: self.b.driver.execute_script(script, *args),
                          "execute_script")

    def _element(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.b.driver, 15).until(
            ec.element_to_be_clickable((By.CSS_SELECTOR, selector)))

    def click(self, selector: str) -> None:
        self.b.run(self.handle, lambda: self._element(selector).click(), "click")

    def fill(self, selector: str, text: str) -> None:
        def fill() -> None:
            el = self._element(selector)
            el.clear()
            el.send_keys(text)
        self.b.run(self.handle, fill, "fill")

    def reload(self) -> None:
        self.b.run(self.handle, self.b.driver.refresh, "refresh")

    def dialogs(self) -> list[str]:
        from selenium.common.exceptions import NoAlertPresentException

        def read() -> list[str]:
            try:
                alert = self.b.driver.switch_to.alert
            except NoAlertPresentException:
                return []
            text = str(alert.text)
            alert.dismiss()
            return [text]
        result: list[str] = self.b.run(self.handle, read, "alert")
        return result

    def screenshot(self, path: Path) -> None:
        self.b.run(self.handle, lambda: self.b.driver.save_screenshot(str(path)), "screenshot")

    def close(self) -> None:
        b = self.b

        def close() -> None:
            if self.handle == b._first:
                b.driver.get("about:blank")
                b._used_first = False
            else:
                b.driver.close()
                b.driver.switch_to.window(b._first)
                b._current = b._first
        b.run(self.handle, close, "close")
