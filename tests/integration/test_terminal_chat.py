"""`chatcast chat` in a pseudo-terminal against a real server: a typed prompt streams its
reasoning (dimmed) and answer, Ctrl-C stops it (the server records `stopped`), a second
Ctrl-C quits with 0, and a connection cut mid-answer resumes to the stored text. Piped
input works too; an unreachable or refusing server is a clear line and exit 1."""

from __future__ import annotations

import asyncio
import sys

import pexpect
import pytest

from tests.conftest import ServerFactory
from tests.helpers.server import ServerProcess
from tests.helpers.tcp_proxy import TcpProxy
from tests.integration.conftest import sql_rows
from tests.integration.test_auth import create_token

pytestmark = pytest.mark.timeout(180)
#: Generous: the machine may be loaded; every expect is bounded by it.
WAIT_S = 60


def spawn(srv: ServerProcess, url: str, *args: str) -> pexpect.spawn[str]:
    env = srv.environment()
    env.update({"TERM": "xterm-256color", "COLUMNS": "100", "LINES": "40"})
    child = pexpect.spawn(sys.executable, ["-m", "chatcast.server.cli", "chat", url, *args],
                          env=env, cwd=str(srv.data_dir), dimensions=(40, 100),
                          encoding="utf-8", codec_errors="replace", timeout=WAIT_S)
    child.expect("/help")
    child.expect("> ")
    return child


async def answers(srv: ServerProcess) -> list[tuple[str, str]]:
    """(content, status) of every assistant message, straight from SQL."""
    rows = await sql_rows(srv, "SELECT content, status FROM message WHERE role = 'assistant' "
                               "ORDER BY created_at")
    return [(str(r[0]), str(r[1])) for r in rows]


async def test_stream_then_ctrl_c_stops_and_a_second_quits(slow_srv: ServerProcess) -> None:
    # no scheme: http is meant
    child = spawn(slow_srv, f"127.0.0.1:{slow_srv.port}", "--model", "demo-thinking")
    try:
        child.sendline("Tell me about reconnects")
        # the reasoning first, dimmed (SGR 2 in the attributes of its first words)
        child.expect(r"\x1b\[(?:\d+;)*2(?:;\d+)*mThinking about")
        child.expect("You asked")  # then the answer, streaming, rendered
        child.sendcontrol("c")
        child.expect(r"\(thought for \d+ s\) \[stopped\]")
        child.expect("> ")
        [(content, status)] = await answers(slow_srv)
        assert status == "stopped" and content.startswith("## On ")
        child.sendcontrol("c")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before


async def test_commands_and_a_dropped_connection_resumes(slow_srv: ServerProcess) -> None:
    with TcpProxy(slow_srv.port) as proxy:
        child = spawn(slow_srv, proxy.url)
        try:
            words = " ".join(f"w{i}" for i in range(1, 81))  # 4 s at 20 tokens/s
            child.sendline(f"echo: {words} the-end")
            child.expect("the-end")  # the typed line, echoed
            child.expect("w12 ")  # the answer, streaming
            assert proxy.drop() > 0
            child.expect("the-end")  # the rest of it, after the reconnect
            child.expect("> ")
            assert proxy.websockets >= 2  # it reconnected
            [(content, status)] = await answers(slow_srv)
            assert status == "complete" and content == f"{words} the-end"
            assert "did not match" not in (child.before or "")
            child.sendline("/chats")
            child.expect("echo: w1 w2")  # the chat's title
            child.sendline("/new")
            child.expect("next message")
            child.sendline("/quit")
            child.expect("bye")
            child.expect(pexpect.EOF)
        finally:
            child.close(force=True)
        assert child.exitstatus == 0, child.before


async def run_piped(srv: ServerProcess, url: str, stdin: bytes,
                    *args: str) -> tuple[int, str]:
    """`chatcast chat` with its input from a pipe (a script, not a person)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatcast.server.cli", "chat", url, *args, env=srv.environment(),
        cwd=srv.data_dir, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(stdin), WAIT_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_piped_input_and_refusals(server: ServerFactory) -> None:
    srv = await server(env={"CHATCAST_DEMO_TOKENS_PER_S": "200"})
    code, out = await run_piped(srv, srv.url, b"echo: piped [b]in[/b]\n")
    assert code == 0 and "piped [b]in[/b]" in out and out.rstrip().endswith("bye"), out
    code, out = await run_piped(srv, "http://127.0.0.1:1", b"")
    assert code == 1 and "cannot reach" in out, out
    token_srv = await server(env={"CHATCAST_AUTH": "token"})
    code, out = await run_piped(token_srv, token_srv.url, b"hi\n")
    assert code == 1 and "refused" in out, out
    code, out = await run_piped(token_srv, token_srv.url, b"echo: with a token\n", "--token",
                                create_token(token_srv, "terminal-user"))
    assert code == 0 and "with a token" in out, out
