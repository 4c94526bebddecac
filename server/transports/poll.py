"""Long-poll transport, the last resort: `GET /api/chats/{chat}/poll?cursor=…&wait=25`.

The first call (no cursor) answers a snapshot at once. Later calls wait until there is
something after the cursor, or `wait` seconds. The returned cursor is opaque to clients.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.requests import Request
from starlette.responses import JSONResponse

from chatcast.core import protocol
from chatcast.core.errors import BadRequest
from chatcast.core.protocol import Cursor, Event
from chatcast.server import metrics, positions
from chatcast.server.services import services, user_id

LINGER_S = 0.02  # after the first event, collect what follows at once (e.g. message + start)


async def poll_endpoint(request: Request) -> JSONResponse:
    """
    summary: Long-poll the chat's events after an opaque cursor (none → a snapshot at once)
    responses:
      200: {description: "{events: [...], cursor}"}
    """
    svc, user = services(request), user_id(request)
    chat = request.path_params["chat"]
    await svc.repo.get_chat(user, chat)
    try:
        wait = min(float(request.query_params.get("wait", "25")), svc.settings.poll_max_wait_s)
    except ValueError:
        raise BadRequest("wait must be a number of seconds") from None
    cursor = protocol.parse_cursor(request.query_params.get("cursor"))
    if cursor is None:  # first call, or an unreadable cursor: a snapshot at once
        snap = await svc.replay.snapshot(chat)
        return _answer([snap], _after([snap], None))
    sub = svc.subscriber("poll")
    metrics.CLIENTS.labels("poll").inc()
    try:
        await svc.hub.subscribe(sub, chat, cursor)
        events: list[Event] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(wait, 0)):
                events = await sub.next_batch()
        if events and not sub.overflowed:
            await asyncio.sleep(LINGER_S)
            events += sub.drain()
    finally:
        svc.hub.drop(sub)
        metrics.CLIENTS.labels("poll").dec()
    if sub.overflowed:
        events = []
    metrics.FRAMES_SENT.labels("poll").inc(len(events))
    return _answer(events, _after(events, cursor))


def _after(events: list[Event], cursor: Cursor | None) -> str:
    """The position after these events, as an opaque string."""
    position = (cursor.gen, cursor.seq) if cursor else None
    for event in events:
        position = positions.moved(position, event)
    return positions.encode(position)


def _answer(events: list[Event], cursor: str) -> JSONResponse:
    return JSONResponse({"events": [e.data for e in events], "cursor": cursor})
