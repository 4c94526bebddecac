"""A UI message stream leaves the hub however its response ends; who gets
`finishReason: "interrupted"`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import pytest

from chatcast.server.transports.aisdk import _UIStreamResponse, wants_interrupted


class FakeStream:
    closed = 0

    def close(self) -> None:
        self.closed += 1


async def never_iterated() -> AsyncIterator[bytes]:
    raise AssertionError("the body must not be needed")
    yield b""  # pragma: no cover


@pytest.mark.parametrize("spec", ["2.3", "2.4"])
async def test_closed_when_the_client_is_gone_before_the_body(spec: str) -> None:
    stream = FakeStream()
    response = _UIStreamResponse(stream, never_iterated())  # type: ignore[arg-type]

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        raise OSError("gone")

    scope = {"type": "http", "asgi": {"spec_version": spec}}
    with contextlib.suppress(Exception):  # whatever the server's send raised
        await response(scope, receive, send)
    assert stream.closed == 1


def test_interrupted_reason_only_when_asked() -> None:
    assert wants_interrupted({"X-Chatcast-Finish-Interrupted": "1"})
    assert wants_interrupted({"x-chatcast-finish-interrupted": "true"})
    assert not wants_interrupted({"x-chatcast-finish-interrupted": "0"})
    assert not wants_interrupted({})
