"""Stop → upstream close: from a `stop` frame sent over the WebSocket to the moment the fake
provider API (tests/fakes, in this process) sees its streaming response's client hang up.

For each provider (OpenAI and Gemini, through their SDKs) a real chatcast process is
started against the fake API; each trial streams a long answer, waits for a few deltas,
sends `stop` and waits for the fake's recorded disconnect. Both timestamps are
time.monotonic() of this process (the fake runs in a thread of it). No assertion beyond
"it disconnected": the figures are the result, written to results/provider_stop_close.json.

    python -m benchmarks.provider_stop_close --trials 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.fakes import FakeServer, Reply, gemini_fake, openai_fake
from tests.helpers.clients import WSClient, cookie_header
from tests.helpers.server import ServerProcess

RESULTS = Path(__file__).parent / "results"
SLOW = Reply(chunks=tuple(f"w{i} " for i in range(400)), delay_s=0.02)


def server_env(provider: str, fakes: dict[str, FakeServer]) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": f"{fakes['openai'].url}/v1",
        "GEMINI_API_KEY": "gm-bench", "GEMINI_BASE_URL": fakes["gemini"].url,
        "CHATCAST_PROVIDER": provider,
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
    }


async def trial(tab: WSClient, chat: str, api: FakeServer) -> float:
    """One stop; milliseconds from the stop frame to the fake's recorded disconnect."""
    api.requests.clear()
    api.script(SLOW)
    ack = await tab.request({"type": "send", "chat": chat, "content": "talk for a while"})
    assert ack["type"] == "ack", ack
    for _ in range(3):
        await tab.wait_for("delta", lambda e: e["gen"] == ack["gen"])
    stop_at = time.monotonic()
    await tab.send({"type": "stop", "gen": ack["gen"]})
    ended = await api.wait_ended(timeout_s=5)
    done = await tab.wait_done(ack["gen"])
    assert done["status"] == "stopped", done
    assert ended.disconnected and ended.ended_at is not None, ended.ended_by
    tab.drain()
    return (ended.ended_at - stop_at) * 1000


async def measure(provider: str, fakes: dict[str, FakeServer], trials: int,
                  root: Path) -> list[float]:
    srv = ServerProcess(root / provider, env=server_env(provider, fakes))
    await srv.start()
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as http:
            await http.get("/api/chats")  # identity cookie
            chat = (await http.post("/api/chats", json={})).json()["id"]
            async with await WSClient.connect(srv.ws_url, cookie=cookie_header(http)) as tab:
                await tab.subscribe(chat)
                await trial(tab, chat, fakes[provider])  # warm-up (SDK imports, pools)
                return [await trial(tab, chat, fakes[provider]) for _ in range(trials)]
    finally:
        await srv.stop()


def summary(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    return {"p50_ms": round(statistics.median(ordered), 2), "max_ms": round(ordered[-1], 2),
            "min_ms": round(ordered[0], 2), "samples_ms": [round(s, 2) for s in samples]}


async def main(trials: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "what": "stop frame sent over WS -> fake provider API records the client hang-up",
        "trials": trials,
    }
    with FakeServer(openai_fake.app) as openai_api, FakeServer(gemini_fake.app) as gemini_api, \
            tempfile.TemporaryDirectory() as tmp:
        fakes = {"openai": openai_api, "gemini": gemini_api}
        for provider in ("openai", "gemini"):
            out[provider] = summary(await measure(provider, fakes, trials, Path(tmp)))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    result = asyncio.run(main(parser.parse_args().trials))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "provider_stop_close.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
