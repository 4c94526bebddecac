"""Logs of a real server process: JSON lines when its output is a file, a readable line per
record when it is a terminal, the same fields either way, and no uvicorn `color_message`."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx
import orjson

from chatcast.store.db import migrate
from tests.conftest import ServerFactory
from tests.helpers.server import ServerProcess
from tests.helpers.threads import run_in_thread

FAST = {"CHATCAST_DEMO_TOKENS_PER_S": "1000", "CHATCAST_DEMO_MAX_TOKENS": "5"}
#: The fields of the "generation ended" record, beyond ts, level, logger and msg.
ENDED = {"gen", "chat", "status", "seq", "duration_s"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class TerminalServer(ServerProcess):
    """A server whose stdout and stderr are a pseudo-terminal; what it prints is copied
    into `log_path` (so `logs()` and `wait_log` work as usual)."""

    def spawn(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        url = self.database_url
        run_in_thread(lambda: migrate(url))
        self.starts += 1
        master, slave = pty.openpty()
        self.proc = subprocess.Popen(self.argv(), cwd=self.data_dir, env=self.environment(),
                                     stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                                     start_new_session=True)
        os.close(slave)
        threading.Thread(target=self._copy, args=(master,), daemon=True).start()

    def _copy(self, master: int) -> None:
        with self.log_path.open("ab") as out:
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the process closed the terminal
                    break
                if not data:
                    break
                out.write(data)
                out.flush()
        os.close(master)


async def _one_answer(srv: ServerProcess) -> str:
    """Send one message, wait for its answer; the generation's id."""
    async with httpx.AsyncClient(base_url=srv.url, timeout=10) as http:
        await http.get("/api/chats")
        chat = (await http.post("/api/chats", json={})).json()["id"]
        r = await http.post(f"/api/chats/{chat}/messages", json={"content": "hello"})
        assert r.status_code == 202, r.text
        gen = str(r.json()["gen"])
        for _ in range(200):
            if (await http.get(f"/api/generations/{gen}")).json()["status"] != "active":
                return gen
            await asyncio.sleep(0.05)
    raise AssertionError("the answer did not finish")


def _console_fields(line: str) -> dict[str, str]:
    """`key=value` pairs after the message of a console line (values may be JSON)."""
    out = {}
    for key, raw in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line.split("  ", 1)[-1]):
        out[key] = orjson.loads(raw) if raw.startswith('"') else raw
    return out


async def test_json_lines_when_not_a_terminal(server: ServerFactory) -> None:
    srv = await server(env=FAST)
    gen = await _one_answer(srv)
    await srv.wait_log('"generation ended"')
    records: list[dict[str, Any]] = []
    for line in srv.logs().splitlines():
        if line.startswith("--- start"):  # the test helper's own marker
            continue
        records.append(orjson.loads(line))  # every line is one JSON object
    assert records and all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)
    assert not any("color_message" in r for r in records)
    assert "color_message" not in srv.logs()
    ended = next(r for r in records if r["msg"] == "generation ended")
    assert ended.keys() - {"ts", "level", "logger", "msg"} == ENDED
    assert ended["gen"] == gen and ended["status"] == "completed"
    assert isinstance(ended["seq"], int) and ended["seq"] >= 1
    assert any(r["logger"] == "uvicorn.error" for r in records)  # uvicorn's own lines too


async def test_readable_lines_on_a_terminal(tmp_path: Path) -> None:
    srv = TerminalServer(tmp_path / "tty", env=FAST)
    try:
        await srv.start()
        gen = await _one_answer(srv)
        await srv.wait_log("generation ended")
        text = srv.logs()
    finally:
        await srv.stop()
    assert "color_message" not in text
    assert "\x1b[32mINFO" in text  # levels are coloured on a terminal
    lines = [ANSI.sub("", line).rstrip("\r") for line in text.splitlines()
             if not line.startswith("--- start")]
    assert not any(line.startswith("{") for line in lines)  # no JSON on a terminal
    ended = next(line for line in lines if " generation ended" in line)
    # `HH:MM:SS.mmm LEVEL logger message  key=value …`
    assert re.match(r"\d\d:\d\d:\d\d\.\d{3} INFO +chatcast\.runner +generation ended  ", ended)
    # The same fields as the JSON line of that record.
    found = _console_fields(ended)
    assert found.keys() == ENDED
    assert found["gen"] == gen and found["status"] == "completed" and found["seq"].isdigit()
    assert any("uvicorn.error" in line and "Uvicorn running on" in line for line in lines)


async def test_format_can_be_forced(server: ServerFactory) -> None:
    srv = await server(env={**FAST, "CHATCAST_LOG_FORMAT": "console"})
    await _one_answer(srv)
    await srv.wait_log("generation ended")
    lines = [line for line in srv.logs().splitlines() if not line.startswith("--- start")]
    assert lines and not any(line.startswith("{") for line in lines)
    assert "\x1b[" not in srv.logs()  # no colours when forced onto a file
    assert "color_message" not in srv.logs()
