"""A webhook receiver as its own process (`python -m tests.helpers.webhook_receiver`):
every POST is verified with `chatcast.webhooks.verify` and written as one JSON line to
`--out` (verified or not, with the delivery id), then answered with `--status`.

`Receiver` runs it on a fixed port, so a test can start it late (a receiver that was down)
and read what arrived."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers.ports import free_port, port_open, wait_port_closed
from tests.helpers.server import REPO_ROOT


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--status", type=int, default=200)
    args = parser.parse_args()

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from chatcast.webhooks import DELIVERY_HEADER, WebhookVerificationError, verify

    async def hook(request: Request) -> Response:
        body = await request.body()
        record: dict[str, Any] = {"delivery": request.headers.get(DELIVERY_HEADER)}
        try:
            record["event"] = verify(body, request.headers, args.secret)
            record["verified"] = True
        except WebhookVerificationError as exc:
            record["verified"] = False
            record["reason"] = str(exc)
        with args.out.open("a") as out:
            out.write(json.dumps(record) + "\n")
        return Response(status_code=args.status)

    app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


class Receiver:
    """The receiver process on `port` (chosen now, started by `start`)."""

    def __init__(self, directory: Path, secret: str, *, status: int = 200) -> None:
        self.port = free_port()
        self.secret = secret
        self.status = status
        self.out = directory / f"webhook-{self.port}.jsonl"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def spawn(self) -> subprocess.Popen[bytes]:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.webhook_receiver", "--port", str(self.port),
             "--secret", self.secret, "--out", str(self.out), "--status", str(self.status)],
            cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
        return self.proc

    async def start(self, timeout: float = 30.0) -> None:
        proc = self.spawn()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not port_open(self.port):
            if proc.poll() is not None or loop.time() > deadline:
                raise RuntimeError("webhook receiver did not start")
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
            wait_port_closed(self.port)

    def received(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines() if line]

    async def wait_for(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Wait until at least `count` requests arrived; all of them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(got := self.received()) < count:
            if loop.time() > deadline:
                raise AssertionError(f"{len(got)} webhook requests, not {count}, in "
                                     f"{timeout} s: {got}")
            await asyncio.sleep(0.05)
        return got


if __name__ == "__main__":
    main()
