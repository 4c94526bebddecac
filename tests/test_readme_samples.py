"""Every fenced block of the README is run by a test, or is on a short allow-list that says
why not. Blocks are known by their content (a distinctive first line; each command line of
a shell block on its own), never by line numbers, so moving a sample keeps its test and a
new sample without one fails `test_every_block_is_run_or_allowed`.

The samples no other test runs are run here for real, as a reader would type them, with
only what must differ substituted: a free port for 8000, a throw-away PostgreSQL database
and a private redis-server for the example hosts, the fake OpenAI server for Ollama / vLLM,
a scratch data directory. `scripts/serve` runs with the venv this test runs in (passed as
VENV); it is skipped, not reinstalled, when that venv's install stamp is stale."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.fakes import FakeServer, openai_fake
from tests.helpers.clients import WSClient, cookie_header
from tests.helpers.pg import PgAdmin
from tests.helpers.ports import free_port
from tests.helpers.redis_server import RedisServer
from tests.helpers.server import REPO_ROOT, ServerProcess

README = REPO_ROOT / "README.md"
#: The heavy samples (servers, workers, a browser) run one at a time under --dist loadgroup.
HEAVY = pytest.mark.xdist_group("readme-samples")
#: Generous bounds: the machine has 2 cores shared with other work.
START_S = 120.0
ANSWER_S = 90.0

#: Which test runs each sample. Keys are the start of a block's first line (for a shell
#: block: of each command line).
RUN_BY: dict[str, str] = {
    "scripts/serve            #": "tests/test_readme_samples.py::test_quick_start",
    ".venv/bin/chatcast chat": "tests/test_readme_samples.py::test_quick_start",
    "OPENAI_BASE_URL=http://localhost:11434/v1":
        "tests/test_readme_samples.py::test_openai_compatible_server",
    "OPENAI_BASE_URL=http://localhost:8001/v1":
        "tests/test_readme_samples.py::test_openai_compatible_server",
    "web: chatcast serve": "tests/test_readme_samples.py::test_procfile",
    "export DATABASE_URL=": "tests/test_readme_samples.py::test_deployment",
    "export CHATCAST_SECRET_KEY=": "tests/test_readme_samples.py::test_deployment",
    "chatcast migrate": "tests/test_readme_samples.py::test_deployment",
    "chatcast serve --host 0.0.0.0 --port 8000 --workers":
        "tests/test_readme_samples.py::test_deployment",
    "export CHATCAST_REDIS_CLUSTER=true":
        "tests/integration/test_cluster.py::test_the_readme_cluster_settings_with_two_seed_nodes",
    "scrape_configs:":
        "tests/integration/test_dashboard.py::test_every_panel_returns_data_from_a_real_prometheus",
    '<div id="answer"></div>': "tests/test_readme_samples.py::test_browser_client_sample",
    "import chatcast\n": "tests/embed/test_readme.py::test_the_samples_run_as_one_app",
    "CHATCAST_PROVIDERS=docs=": "tests/test_readme_samples.py::test_providers_setting",
    "from starlette.requests import HTTPConnection":
        "tests/embed/test_readme.py::test_the_samples_run_as_one_app",
    "async def on_done(": "tests/embed/test_readme.py::test_the_samples_run_as_one_app",
    "from fastapi import FastAPI": "tests/embed/test_readme.py::test_the_samples_run_as_one_app",
    "import os\n": "tests/embed/test_readme.py::test_the_samples_run_as_one_app",
    "import { useChat }": "tests/aisdk/test_readme.py::test_readme_sample_is_the_example_code",
    "import asyncio\n": "tests/integration/test_python_client.py::test_readme_sample_runs",
}

#: Samples no test runs, each with the reason.
ALLOWED: dict[str, str] = {
    "scripts/test             #": "CI runs it: .ci/run is `exec scripts/test` "
                                  "(tests/test_docs.py::test_procfile_and_ci)",
    " browser tab ──WS /ws──┐": "the architecture picture, not code",
    "scripts/check     #": "ruff, mypy and scripts/test: what every commit is checked with",
    "scripts/test -k resume": "scripts/test itself, which CI runs; `-k` only passes to pytest",
}


# -- the README's blocks --------------------------------------------------------------------


def blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block, indentation of indented fences removed."""
    found = re.findall(r"^( *)```(\w*)\n(.*?)^\1```", README.read_text(), re.M | re.S)
    out = []
    for indent, lang, body in found:
        lines = [line.removeprefix(indent) for line in body.splitlines()]
        out.append((lang, "\n".join(lines) + "\n"))
    return out


def units() -> list[str]:
    """What has to be run: every command line of a shell block, every other block whole."""
    out: list[str] = []
    for lang, body in blocks():
        if lang == "bash":
            out += [line for line in body.splitlines() if line.strip()]
        else:
            out.append(body)
    return out


def _matches(unit: str, key: str) -> bool:
    return unit.startswith(key)


def readme_line(key: str) -> str:
    """The README's one command line that starts with `key`."""
    [line] = [u for u in units() if "\n" not in u.rstrip("\n") and _matches(u, key)]
    return line


def readme_block(key: str) -> str:
    [block] = [u for u in units() if _matches(u, key)]
    return block


def test_every_block_is_run_or_allowed() -> None:
    every = units()
    assert len(blocks()) >= 15, "the README's fenced blocks were not found"
    unaccounted = []
    for unit in every:
        keys = [k for k in (*RUN_BY, *ALLOWED) if _matches(unit, k)]
        if len(keys) != 1:
            unaccounted.append((unit.splitlines()[0], keys))
    assert not unaccounted, (
        "README samples must be run by a test (RUN_BY) or allowed with a reason (ALLOWED); "
        f"these match no key or more than one: {unaccounted}")
    stale = [k for k in (*RUN_BY, *ALLOWED) if not any(_matches(u, k) for u in every)]
    assert not stale, f"keys that match no README sample any more: {stale}"
    for key, node in RUN_BY.items():
        path, _, name = node.partition("::")
        source = (REPO_ROOT / path).read_text()
        assert re.search(rf"^(async )?def {name}\(", source, re.M), f"{key!r}: no {node}"


# -- running them ---------------------------------------------------------------------------


@pytest.fixture
def venv() -> Path:
    """The venv these tests run in, if `scripts/serve` would use it as it is."""
    prefix = Path(sys.prefix)
    digest = hashlib.sha256((REPO_ROOT / "pyproject.toml").read_bytes()).hexdigest()
    stamps = [prefix / ".chatcast-install", prefix / ".chatcast-install-test"]
    if sys.prefix == sys.base_prefix or not any(
            s.is_file() and s.read_text().strip() == digest for s in stamps):
        pytest.skip(f"{prefix}: no install stamp matching pyproject.toml, so scripts/serve "
                    "would reinstall the venv (run scripts/test, which installs it)")
    return prefix


def substitute(text: str, replacements: Mapping[str, str]) -> str:
    """Replace what must differ here; each must be in the sample (else the sample changed
    and the test with it must)."""
    for old, new in replacements.items():
        assert old in text, f"{old!r} is not in the README sample {text!r}"
        text = text.replace(old, new)
    return text


def written(pattern: str, text: str) -> str:
    """The first group of `pattern` in a sample (which must have it)."""
    match = re.search(pattern, text)
    assert match is not None, f"{pattern!r} not in the README sample {text!r}"
    return match.group(1)


def script_server(data_dir: Path, script: str, *, port: int, env: Mapping[str, str],
                  cwd: Path | None = None) -> ServerProcess:
    """A ServerProcess running `script` with bash (-e), in `cwd` (default: the data dir)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "sample.sh"
    path.write_text(f"cd {cwd or data_dir}\n{script}")
    return ServerProcess(data_dir, port=port, env=env, command=["bash", "-e", str(path)],
                         migrate=False)


def path_with(venv: Path) -> str:
    return f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"


@contextlib.asynccontextmanager
async def running(srv: ServerProcess) -> AsyncIterator[ServerProcess]:
    try:
        await srv.start(timeout=START_S)
        yield srv
    finally:
        code = await srv.stop()
        print(f"--- {srv.url} (exit {code}):\n{srv.log_tail()}")


async def ask(srv: ServerProcess, content: str, *, origin: str = "",
              provider: str | None = None) -> tuple[dict[str, Any], dict[str, Any], str]:
    """One anonymous user sends `content` over a WebSocket: (start, done, stored content);
    the assembled text is checked against done's sha256."""
    headers = {"Origin": origin} if origin else {}
    async with httpx.AsyncClient(base_url=srv.url, timeout=30, trust_env=False,
                                 headers=headers) as http:
        (await http.get("/api/chats")).raise_for_status()  # the identity cookie
        chat = (await http.post("/api/chats", json={})).json()["id"]
        if provider:
            (await http.patch(f"/api/chats/{chat}", json={"provider": provider})
             ).raise_for_status()
        async with await WSClient.connect(srv.ws_url, cookie=cookie_header(http),
                                          origin=origin) as tab:
            await tab.subscribe(chat)
            ack = await tab.request({"type": "send", "chat": chat, "content": content})
            start = await tab.wait_for("start", lambda e: e.get("gen") == ack["gen"],
                                       timeout=ANSWER_S)
            done = await tab.wait_done(ack["gen"], timeout=ANSWER_S)
        stored = await stored_content(http, chat, done["message"]["id"])
    assert done["status"] == "completed", done
    return start, done, stored


async def stored_content(http: httpx.AsyncClient, chat: str, message_id: str) -> str:
    messages = (await http.get(f"/api/chats/{chat}/messages")).json()["messages"]
    return str(next(m for m in messages if m["id"] == message_id)["content"])


@HEAVY
async def test_quick_start(tmp_path: Path, venv: Path) -> None:
    """`scripts/serve` serves (an answer streams over a WebSocket), and `chatcast chat`
    chats with it from piped input."""
    srv = script_server(tmp_path / "data", readme_line("scripts/serve            #"),
                        port=(port := free_port()), cwd=REPO_ROOT,
                        env={"VENV": str(venv), "PORT": str(port)})
    async with running(srv):
        _, done, stored = await ask(srv, "echo: hello from the quick start")
        assert done["message"]["content"] == stored == "hello from the quick start"

        chat_line = readme_line(".venv/bin/chatcast chat").split("#", 1)[0].split()
        argv = [str(venv / Path(chat_line[0]).relative_to(".venv")), *chat_line[1:], srv.url]
        proc = await asyncio.create_subprocess_exec(
            *argv, env=srv.environment(), cwd=srv.data_dir, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(b"echo: piped to the chat\n"),
                                            ANSWER_S)
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        printed = out.decode(errors="replace")
        assert proc.returncode == 0, printed
        assert "piped to the chat" in printed and printed.rstrip().endswith("bye"), printed


@HEAVY
@pytest.mark.parametrize("key", ["OPENAI_BASE_URL=http://localhost:11434/v1",
                                 "OPENAI_BASE_URL=http://localhost:8001/v1"],
                         ids=["ollama", "vllm"])
async def test_openai_compatible_server(tmp_path: Path, venv: Path, key: str) -> None:
    """The line as written, with the fake OpenAI server at the base URL: its model is asked
    and its answer streams."""
    line = readme_line(key)
    base = key.removeprefix("OPENAI_BASE_URL=")
    model = written(r"CHATCAST_MODEL=(\S+)", line)
    with FakeServer(openai_fake.app) as fake:
        port = free_port()
        script = substitute(line, {base: f"{fake.url}/v1"})
        srv = script_server(tmp_path / "data", script, port=port, cwd=REPO_ROOT,
                            env={"VENV": str(venv), "PORT": str(port)})
        async with running(srv):
            start, done, stored = await ask(srv, "Hello?")
    assert (start["provider"], start["model"]) == ("openai", model)
    assert done["message"]["content"] == stored == "Hello, world!"
    assert fake.requests and fake.requests[-1].body["model"] == model


@HEAVY
async def test_procfile(tmp_path: Path, venv: Path) -> None:
    """The README's Procfile is the repository's, and its command serves on $PORT."""
    block = readme_block("web: chatcast serve")
    assert block == (REPO_ROOT / "Procfile").read_text()
    port = free_port()
    srv = script_server(tmp_path / "data", block.removeprefix("web: "), port=port,
                        env={"PORT": str(port), "PATH": path_with(venv)})
    async with running(srv):
        _, done, stored = await ask(srv, "echo: from the Procfile")
    assert done["message"]["content"] == stored == "from the Procfile"


def _server_side_owner(server_port: int, client_port: int, pids: list[int]) -> int | None:
    """The process holding the accepted socket of the connection from `client_port`."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                local, remote = fields[1].rsplit(":", 1)[1], fields[2].rsplit(":", 1)[1]
                if (int(local, 16), int(remote, 16)) == (server_port, client_port):
                    inode = fields[9]
    if inode is None:
        return None
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                        return pid
    return None


def _group(pgid: int) -> list[int]:
    """The processes of a process group (the script, the supervisor, its workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                    pids.append(int(entry.name))
    return pids


@pytest.fixture
def pg_database(pg_admin: PgAdmin) -> Iterator[tuple[PgAdmin, str]]:
    """An empty throw-away database: the deployment's `chatcast migrate` creates its tables."""
    name = pg_admin.create(pg_admin.new_name("readme_"))
    try:
        yield pg_admin, name
    finally:
        pg_admin.drop(name)


@HEAVY
@pytest.mark.postgres
@pytest.mark.timeout(300)
async def test_deployment(tmp_path: Path, venv: Path, pg_database: tuple[PgAdmin, str],
                          redis_server: Callable[[], RedisServer]) -> None:
    """The deployment block as one shell script (PostgreSQL, Redis, a generated secret key,
    migrate, four workers): two tabs of one user whose sockets landed on different workers
    both get the whole answer, which one of them asked for."""
    admin, name = pg_database
    redis = redis_server()
    lines = [readme_line(k) for k in ("export DATABASE_URL=", "export CHATCAST_SECRET_KEY=",
                                      "chatcast migrate", "chatcast serve --host 0.0.0.0")]
    port = free_port()
    script = substitute("\n".join(lines) + "\n", {
        "postgresql://chatcast@db/chatcast":
            f"postgresql://{admin.user}@127.0.0.1:5432/{name}",
        "redis://redis:6379/0": redis.url,
        "--port 8000": f"--port {port}",
    })
    workers = int(written(r"--workers (\d+)", script))
    origin = written(r"CHATCAST_ALLOWED_ORIGINS=(\S+)", script)  # kept: sent as the Origin
    srv = script_server(tmp_path / "data", script, port=port, env={"PATH": path_with(venv)})
    async with running(srv), httpx.AsyncClient(
            base_url=srv.url, timeout=30, trust_env=False, headers={"Origin": origin}) as http:
        # /healthz answers once one worker is up; the kernel only spreads sockets over
        # the workers that are listening, so wait for all of them first.
        await srv.wait_log("Application startup complete", START_S, times=workers)
        (await http.get("/api/chats")).raise_for_status()
        chat = (await http.post("/api/chats", json={})).json()["id"]
        owners: dict[int, WSClient] = {}  # worker pid -> the one tab kept on it
        opened = 0
        try:
            # Open sockets until two are on different workers (the kernel picks the worker);
            # one landing on a worker already seen is closed at once, so the user stays
            # under the per-process socket limit however the kernel spreads them.
            for _ in range(8 * workers):
                tab = await WSClient.connect(srv.ws_url, cookie=cookie_header(http),
                                             origin=origin)
                opened += 1
                owner = _server_side_owner(port, tab.conn.local_address[1], _group(srv.pid))
                if owner is None or owner in owners:
                    await tab.close()
                    continue
                owners[owner] = tab
                if len(owners) >= 2:
                    break
            assert len(owners) >= 2, f"every socket landed on one worker: {owners}"
            # the script's shell, uvicorn's supervisor and its workers
            assert len(_group(srv.pid)) >= workers + 1, _group(srv.pid)
            print(f"{opened} sockets opened until two were on different workers")
            asker, watcher = list(owners.values())[:2]
            for tab in (asker, watcher):
                await tab.subscribe(chat)
            ack = await asker.request({"type": "send", "chat": chat,
                                       "content": "echo: one answer, two workers"})
            dones = [await tab.wait_done(ack["gen"], timeout=ANSWER_S)
                     for tab in (asker, watcher)]
        finally:
            for tab in owners.values():
                await tab.close()
        stored = await stored_content(http, chat, dones[0]["message"]["id"])
    assert [d["status"] for d in dones] == ["completed", "completed"]
    assert dones[0]["sha256"] == dones[1]["sha256"]
    assert stored == "one answer, two workers"


PROVIDER_FACTORY = '''"""A factory: CHATCAST_PROVIDERS calls it and uses the provider it returns."""

from myapp.llm import answer


def make_provider():
    return answer
'''


@HEAVY
async def test_providers_setting(tmp_path: Path, venv: Path) -> None:
    """The CHATCAST_PROVIDERS line, with myapp.llm the README's own provider sample and
    myapp.rag a factory returning it: `docs` is the default, a chat may pick `rag`."""
    data = tmp_path / "data"
    app = data / "myapp"
    app.mkdir(parents=True)
    section = README.read_text().split("### Your own provider", 1)[1].split("\n### ", 1)[0]
    [provider_sample] = re.findall(r"```python\n(.*?)```", section, re.S)
    (app / "__init__.py").write_text("")
    (app / "llm.py").write_text(provider_sample)
    (app / "rag.py").write_text(PROVIDER_FACTORY)
    port = free_port()
    line = readme_line("CHATCAST_PROVIDERS=docs=")
    assert line.rstrip().endswith("chatcast serve")
    srv = script_server(data, f"{line.rstrip()} --port {port}\n", port=port,
                        env={"PATH": path_with(venv)})
    async with running(srv):
        start, done, stored = await ask(srv, "What about returns?")
        assert start["provider"] == "docs"
        assert stored == done["message"]["content"] == "Returns are accepted within 30 days. "
        assert done["message"]["metadata"] == {"sources": ["returns"]}
        start, done, stored = await ask(srv, "And shipping?", provider="rag")
        assert start["provider"] == "rag"
        assert stored == "Orders ship in two days. "


@HEAVY
@pytest.mark.browser
async def test_browser_client_sample(tmp_path: Path, server: ServerFactory) -> None:
    """The HTML sample as a page of chatcast's own origin in Chromium: the answer it asks
    for appears in its #answer, equal to the stored one."""
    playwright_api = pytest.importorskip("playwright.async_api")
    from tests.e2e.conftest import CHROMIUM_ARGS, chromium_path

    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium binary found (set CHATCAST_CHROMIUM)")
    srv = await server(env={"CHATCAST_DEMO_TOKENS_PER_S": "100"})
    sample = readme_block('<div id="answer"></div>')
    html = f"<!doctype html>\n<html><body>\n{sample}</body></html>\n"
    page_url = f"{srv.url}/readme-sample.html"
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.route(page_url, lambda route: route.fulfill(
                status=200, content_type="text/html", body=html))
            await page.goto(page_url)
            # Only once the page shows text does it hold its identity cookie, which the
            # page's own requests below then share (before, they would get another user).
            await page.wait_for_function(
                "document.getElementById('answer').textContent.length > 0",
                timeout=ANSWER_S * 1000)
            stored, shown = "", None
            loop = asyncio.get_running_loop()
            deadline = loop.time() + ANSWER_S
            while loop.time() < deadline:
                chats = (await (await page.request.get(f"{srv.url}/api/chats")).json())
                items = chats["chats"] if isinstance(chats, dict) else chats
                if items:
                    chat = items[0]["id"]
                    r = await page.request.get(f"{srv.url}/api/chats/{chat}/messages")
                    answers = [m for m in (await r.json())["messages"]
                               if m["role"] == "assistant" and m["status"] == "complete"]
                    if answers:
                        stored = answers[-1]["content"]
                        shown = await page.locator("#answer").text_content()
                        if shown == stored:
                            break
                await asyncio.sleep(0.2)
            assert not errors, errors
            assert stored and shown == stored, (shown, stored)
        finally:
            await browser.close()
