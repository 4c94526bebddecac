"""The real `ai` package (6.x and 7.x, pinned in tests/aisdk/node/package-lock.json) against
a real chatcast process: `node --test` runs tests/aisdk/node/*.test.mjs with its URL, and
this test fails with their output when any of them does."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatcast.providers import demo
from tests.conftest import ServerFactory
from tests.fakes import FakeServer, Reply, openai_fake
from tests.helpers.npm import AISDK_TESTS, have_node, npm_ci

NODE_TIMEOUT_S = 240.0


@pytest.fixture(scope="module")
def node_modules() -> Path:
    if not have_node():
        pytest.skip("node and npm are not installed; the AI SDK tests need them")
    return npm_ci(AISDK_TESTS)


@pytest.fixture(scope="module")
def openai_api() -> Iterator[FakeServer]:
    """The fake OpenAI API, refusing every call with a 401 whose message holds a key."""
    with FakeServer(openai_fake.app) as api:
        api.script(then=Reply.error(401))
        yield api


def server_env(openai_api: FakeServer) -> dict[str, str]:
    return {
        "CHATCAST_PROVIDER": "demo",
        # ~80 tokens at 40/s: an answer takes 2 s, long enough to stop or reload mid-way
        "CHATCAST_DEMO_TOKENS_PER_S": "40", "CHATCAST_DEMO_MAX_TOKENS": "80",
        "CHATCAST_MESSAGES_PER_MINUTE": "1000", "CHATCAST_CHECKPOINT_INTERVAL_S": "0.2",
        "OPENAI_API_KEY": "sk-test-aisdk", "OPENAI_BASE_URL": f"{openai_api.url}/v1",
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
    }


# npm ci (when scripts/test has not done it yet) and ~20 Node tests in one test
@pytest.mark.timeout(600)
async def test_ai_sdk_chat_against_chatcast(server: ServerFactory, node_modules: Path,
                                            openai_api: FakeServer) -> None:
    srv = await server(env=server_env(openai_api))
    env = {**os.environ, "CHATCAST_URL": srv.url, "NO_PROXY": "127.0.0.1,localhost",
           "NODE_NO_WARNINGS": "1"}
    thinking = getattr(demo, "THINKING_MODEL", None)  # the demo model's reasoning mode
    if thinking:
        env["CHATCAST_REASONING_MODEL"] = thinking
    files = sorted(str(p) for p in AISDK_TESTS.glob("*.test.mjs"))
    proc = await asyncio.create_subprocess_exec(
        "node", "--test", "--test-concurrency=3", "--test-reporter=spec", *files,
        cwd=AISDK_TESTS, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        async with asyncio.timeout(NODE_TIMEOUT_S):
            out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    report = out.decode(errors="replace")
    print(report)
    assert proc.returncode == 0, f"node tests failed:\n{report[-8000:]}\n" \
                                 f"--- server log:\n{srv.log_tail(40)}"
    passed = re.search(r"^\S pass (\d+)$", report, re.MULTILINE)
    assert passed and int(passed[1]) > 0 and re.search(r"^\S fail 0$", report, re.MULTILINE)
