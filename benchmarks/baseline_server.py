"""The baseline: a minimal `websockets` broadcast server — no framework, no bus, no SQL.

It speaks the subset of chatcast's protocol the load generator uses (`subscribe`, `send`,
`stop`; `ack`, `start`, `delta`, `done` with `length`/`sha256`; and `stats`, the longest
event loop stall, measured as chatcast measures its own) and is fed by the same token
source, `providers.demo.DemoProvider` (chunk k due at t0 + k/R). Each delta is encoded once
with orjson and written to every subscriber of the chat with `websockets.broadcast` (no
per-socket queue, no coalescing, no back-pressure). Runs on uvloop, like chatcast.

    python -m benchmarks.baseline_server --port 9000 --rate 50 [--timestamps]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import time
from typing import Any

import orjson
import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

from chatcast.providers.base import ChatMessage, StreamParams
from chatcast.providers.demo import DemoProvider
from chatcast.server.loopwatch import StallWatch


class Baseline:
    def __init__(self, rate: float, timestamps: bool) -> None:
        self.provider = DemoProvider(tokens_per_s=rate)
        self.timestamps = timestamps
        self.chats: dict[str, set[ServerConnection]] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.ids = itertools.count(1)
        self.stalls = StallWatch()

    async def handler(self, ws: ServerConnection) -> None:
        mine: set[str] = set()
        try:
            async for raw in ws:
                req: dict[str, Any] = orjson.loads(raw)
                kind, rid, chat = req.get("type"), req.get("rid"), str(req.get("chat", ""))
                if kind == "subscribe":
                    self.chats.setdefault(chat, set()).add(ws)
                    mine.add(chat)
                    await ws.send(orjson.dumps({"type": "ack", "rid": rid, "chat": chat}),
                                  text=True)
                elif kind == "send":
                    gen = f"g{next(self.ids)}"
                    self.tasks[gen] = asyncio.create_task(
                        self.generate(chat, gen, str(req.get("content", ""))))
                    await ws.send(orjson.dumps({"type": "ack", "rid": rid, "gen": gen}),
                                  text=True)
                elif kind == "stats":
                    await ws.send(orjson.dumps({"type": "ack", "rid": rid, "longest_stall_ms":
                                                round(self.stalls.longest_s * 1000, 1)}),
                                  text=True)
                elif kind == "stop":
                    task = self.tasks.get(str(req.get("gen")))
                    if task is not None:
                        task.cancel()
                    await ws.send(orjson.dumps({"type": "ack", "rid": rid}), text=True)
        except ConnectionClosed:
            pass
        finally:
            for chat in mine:
                self.chats.get(chat, set()).discard(ws)

    async def generate(self, chat: str, gen: str, prompt: str) -> None:
        subs = self.chats.setdefault(chat, set())
        broadcast(subs, orjson.dumps({"type": "start", "chat": chat, "gen": gen}), text=True)
        text: list[str] = []
        seq, status = 0, "completed"
        try:
            async for chunk in self.provider.stream([ChatMessage("user", prompt)],
                                                    model="demo-1", params=StreamParams()):
                if not chunk.text:
                    continue
                seq += 1
                text.append(chunk.text)
                event: dict[str, Any] = {"type": "delta", "chat": chat, "gen": gen, "seq": seq,
                                         "text": chunk.text}
                if self.timestamps:
                    event["ts"] = time.time()
                broadcast(subs, orjson.dumps(event), text=True)
        except asyncio.CancelledError:
            status = "stopped"
        content = "".join(text)
        broadcast(subs, orjson.dumps({
            "type": "done", "chat": chat, "gen": gen, "seq": seq + 1, "status": status,
            "message": {"content": content}, "length": len(content),
            "sha256": hashlib.sha256(content.encode()).hexdigest()}), text=True)
        self.tasks.pop(gen, None)


async def main_async(host: str, port: int, rate: float, timestamps: bool) -> None:
    app = Baseline(rate, timestamps)
    app.stalls.start()
    async with serve(app.handler, host, port, compression=None, max_size=64 * 1024):
        print(f"baseline listening on {host}:{port}", flush=True)
        await asyncio.Future()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--timestamps", action="store_true")
    args = parser.parse_args()
    uvloop.run(main_async(args.host, args.port, args.rate, args.timestamps))


if __name__ == "__main__":
    main()
