"""chatcast.client against a real server process: streaming, stop, regenerate, continue,
resume after a cut connection (assembled text = SQL), done verification of a corrupted
stream, reasoning, and the identity modes."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator

import pytest

from chatcast.client import (
    Client,
    ConnectionChanged,
    Done,
    ReasoningDelta,
    ServerError,
    Start,
    TextDelta,
    connect,
)
from chatcast.core.codes import Code
from chatcast.core.errors import BadRequest, TooLarge
from chatcast.core.protocol import MAX_FRAME_BYTES
from chatcast.core.retry import Backoff
from tests.conftest import ServerFactory
from tests.helpers.server import REPO_ROOT, ServerProcess
from tests.helpers.tcp_proxy import TcpProxy
from tests.integration.conftest import sql_rows
from tests.integration.test_auth import create_token

pytestmark = pytest.mark.timeout(180)
#: Quick reconnects: the tests cut connections on purpose.
FAST = Backoff(base_s=0.05, max_s=0.5, jitter=1.0)


async def sql_row(srv: ServerProcess, message_id: str) -> tuple[str, str, str]:
    """(content, reasoning, status) of a message, straight from SQL."""
    [row] = await sql_rows(srv, "SELECT content, reasoning, status FROM message WHERE id = :id",
                           id=message_id)
    return str(row[0]), str(row[1] or ""), str(row[2])


@pytest.fixture
async def client(srv: ServerProcess) -> AsyncIterator[Client]:
    async with connect(srv.url, trust_env=False, backoff=FAST) as c:
        yield c


async def test_send_streams_an_answer_equal_to_sql(client: Client, srv: ServerProcess) -> None:
    chat = await client.create_chat("python")
    reply = client.send(chat.id, "Tell me about cursors")
    kinds, assembled, done = [], "", None
    async with asyncio.timeout(60):
        async for event in reply:
            kinds.append(type(event).__name__)
            if isinstance(event, TextDelta):
                assembled += event.text
            if isinstance(event, Done):
                done = event
    assert kinds[0] == "Start" and kinds[-1] == "Done" and "TextDelta" in kinds
    assert done is not None and done.status == "completed" and done.verified
    assert reply.gen == done.gen and reply.user_message is not None
    content, _, status = await sql_row(srv, str(done.message["id"]))
    assert assembled == done.text == content and status == "complete"
    answer = await client.ask(chat.id, "And about stops?")
    assert answer.status == "completed" and answer.verified and answer.usage
    assert answer.text == (await sql_row(srv, answer.message))[0]
    assert [c.id for c in await client.chats()] == [chat.id]


async def test_stop_regenerate_and_continue(slow_srv: ServerProcess) -> None:
    async with connect(slow_srv.url, trust_env=False, backoff=FAST) as c:
        chat = await c.create_chat()
        reply = c.send(chat.id, "A long answer please")
        assembled, done = "", None
        async with asyncio.timeout(60):
            async for event in reply:
                if isinstance(event, TextDelta):
                    assembled += event.text
                    if len(assembled) > 20 and reply.gen:
                        assert await reply.stop() in ("stopping", "stopped")
                if isinstance(event, Done):
                    done = event
        assert done is not None and done.status == "stopped" and done.verified
        content, _, status = await sql_row(slow_srv, str(done.message["id"]))
        assert (status, content) == ("stopped", assembled) and content

        # continue: the same message goes on from its partial text
        async with asyncio.timeout(90):
            more = await c.continue_generation(chat.id, done.gen).answer()
        assert more.message == done.message["id"] and more.status == "completed"
        assert more.text.startswith(assembled) and len(more.text) > len(assembled)
        assert more.verified and more.text == (await sql_row(slow_srv, more.message))[0]

        # regenerate: a new message for the same question
        async with asyncio.timeout(90):
            again = await c.regenerate(chat.id).answer()
        assert again.message != more.message and again.status == "completed"
        assert again.verified and again.text == (await sql_row(slow_srv, again.message))[0]

        # stopping an unknown generation is refused, not ignored
        with pytest.raises(ServerError) as refused:
            await c.stop(gen="no-such-gen")
        assert refused.value.code == Code.NOT_FOUND
        # a message too large for one frame is refused before it is sent: the connection
        # (which the server would close with 1009) stays
        with pytest.raises(TooLarge):
            await c.ask(chat.id, "x" * (MAX_FRAME_BYTES + 1))
        with pytest.raises(BadRequest):
            await c.ask("not a chat id!", "hi")
        reconnects = c.reconnects
        assert (await c.ask(chat.id, "still there?")).status == "completed"
        assert c.reconnects == reconnects and c.state == "open"


async def test_cut_connections_resume_exactly(slow_srv: ServerProcess) -> None:
    """The connection is cut three times mid-answer (twice under it, once by the client's
    own `reconnect()`); the answer read from the events is the one in SQL, each position
    once."""
    with TcpProxy(slow_srv.port) as proxy:
        async with connect(proxy.url, trust_env=False, backoff=FAST) as c:
            chat = await c.create_chat()
            reply = c.send(chat.id, "Resume me")
            assembled, seqs, cuts, states, done = "", [], 0, [], None
            async with asyncio.timeout(90):
                async for event in reply:
                    if isinstance(event, ConnectionChanged):
                        states.append(event.state)
                    if isinstance(event, TextDelta):
                        assembled += event.text
                        seqs.append(event.seq)
                        if cuts < 3 and len(seqs) in (2, 5, 8):
                            if len(seqs) == 5:
                                await c.reconnect()
                                cuts += 1
                            else:
                                cuts += proxy.drop() > 0
                    if isinstance(event, Done):
                        done = event
            assert cuts == 3 and c.reconnects >= 3 and states.count("open") >= 3
            assert done is not None and done.status == "completed" and done.verified
            assert seqs == sorted(set(seqs))  # each position once, in order
            content, _, _ = await sql_row(slow_srv, str(done.message["id"]))
            assert assembled == content == done.text


async def test_a_corrupted_stream_fails_verification_and_is_repaired(
        srv: ServerProcess) -> None:
    """What the WebSocket delivers is altered on the way (the demo answer's `subscribe`
    becomes `SUBSCRIBE`): `done` says so, and the answer is the stored one."""
    with TcpProxy(srv.port, corrupt=(b"subscribe", b"SUBSCRIBE")) as proxy:
        async with connect(proxy.url, trust_env=False, backoff=FAST) as c:
            chat = await c.create_chat()
            assembled, done = "", None
            async with asyncio.timeout(60):
                async for event in c.send(chat.id, "Corrupt me"):
                    if isinstance(event, TextDelta):
                        assembled += event.text
                    if isinstance(event, Done):
                        done = event
            assert proxy.corrupted > 0 and "SUBSCRIBE" in assembled
            assert done is not None and not done.verified
            content, _, _ = await sql_row(srv, str(done.message["id"]))
            assert done.text == content != assembled and "**subscribe**" in content


async def test_reasoning_of_a_thinking_model(client: Client, srv: ServerProcess) -> None:
    chat = await client.create_chat(model="demo-thinking")
    reasoning, answer_text, order = "", "", []
    done = None
    async with asyncio.timeout(60):
        async for event in client.send(chat.id, "How do cursors work?"):
            if isinstance(event, ReasoningDelta):
                reasoning += event.text
                order.append("r")
            elif isinstance(event, TextDelta):
                answer_text += event.text
                order.append("t")
            elif isinstance(event, Done):
                done = event
    assert reasoning and answer_text and order.index("t") > order.index("r")
    assert done is not None and done.verified
    content, stored_reasoning, _ = await sql_row(srv, str(done.message["id"]))
    assert (done.text, done.reasoning) == (answer_text, reasoning) == (content,
                                                                        stored_reasoning)


async def test_events_of_a_chat_from_another_client(client: Client, srv: ServerProcess) -> None:
    """A second client watching the chat (a host's back end) sees the same answer."""
    chat = await client.create_chat()
    async with connect(srv.url, trust_env=False, cookies=dict(client.http.cookies)) as watcher:
        seen: list[str] = []

        async def watch() -> Done:
            async for event in watcher.events(chat.id):
                if isinstance(event, Start | TextDelta):
                    seen.append(type(event).__name__)
                if isinstance(event, Done):
                    return event
            raise AssertionError("events ended")

        async with asyncio.timeout(60):
            watching = asyncio.create_task(watch())
            await watcher.subscribe(chat.id)
            answer = await client.ask(chat.id, "Shared")
            done = await watching
        assert done.text == answer.text and done.verified and seen[0] == "Start"


async def test_token_identity_and_refusals(server: ServerFactory) -> None:
    srv = await server(env={"CHATCAST_AUTH": "token"})
    token = create_token(srv, "host-user")
    async with connect(srv.url, token=token, trust_env=False) as c:
        chat = await c.create_chat()
        answer = await asyncio.wait_for(c.ask(chat.id, "hi"), 60)
        assert answer.verified and answer.status == "completed"
    # the same credential as a header of the host's choosing (what an identity hook reads)
    async with connect(srv.url, headers={"Authorization": f"Bearer {token}"},
                       trust_env=False) as c:
        assert [x.id for x in await c.chats()] == [chat.id]
    with pytest.raises(ServerError) as refused:
        async with connect(srv.url, token="cc_wrong", trust_env=False):
            pass
    assert refused.value.code == Code.UNAUTHORIZED and refused.value.status == 401


async def test_readme_sample_runs(srv: ServerProcess) -> None:
    """The README's Python client sample, as written, against a real server."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Python client and terminal chat", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the Python client section has no python sample"
    code = match.group(1)
    assert '"http://127.0.0.1:8000"' in code
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code.replace("http://127.0.0.1:8000", srv.url),
        env=srv.environment(), cwd=srv.data_dir, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    printed = out.decode()
    assert proc.returncode == 0, printed
    assert "You asked" in printed and "[completed, verified=True]" in printed
    assert printed.rstrip().splitlines()[-1].startswith("completed ")


async def test_a_server_restart_mid_answer_then_continue(server: ServerFactory) -> None:
    """The server shuts down while an answer streams (too briefly to finish it) and comes
    back on the same port: the client reconnects by itself, the answer ends as the server
    recorded it (equal to SQL), and `continue` finishes it."""
    slow_srv = await server(env={"CHATCAST_DEMO_TOKENS_PER_S": "20",
                                 "CHATCAST_SHUTDOWN_GRACE_S": "0.2"})
    async with connect(slow_srv.url, trust_env=False, backoff=FAST) as c:
        chat = await c.create_chat()
        reply = c.send(chat.id, "Survive a restart")
        assembled, done, states = "", None, []
        async with asyncio.timeout(120):
            async for event in reply:
                if isinstance(event, ConnectionChanged):
                    states.append(event.state)
                if isinstance(event, TextDelta):
                    assembled += event.text
                    if len(assembled) > 20 and slow_srv.starts == 1:
                        slow_srv.terminate()
                        await slow_srv.wait_async(30)
                        await slow_srv.restart()
                if isinstance(event, Done):
                    done = event
        assert done is not None and done.status == "interrupted", done
        content, _, _ = await sql_row(slow_srv, str(done.message["id"]))
        assert done.text == content and content.startswith(assembled[:20])
        async with asyncio.timeout(120):  # (sent once the client is connected again)
            more = await c.continue_generation(chat.id, done.gen).answer()
        assert c.reconnects >= 1
        assert more.status == "completed" and more.verified and more.text.startswith(content)
        assert more.text == (await sql_row(slow_srv, more.message))[0]
