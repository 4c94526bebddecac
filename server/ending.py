"""How a generation's end reaches the bus, whoever ends it (its owner, or the reaper for an
owner that died): after the final content is in SQL, `done` is appended to the generation's
log (which seals it) and the log is kept for the retention period only. While the bus is
down this is retried; subscribers that miss it resynchronise from SQL when the bus is back.
"""

from __future__ import annotations

import logging
from typing import Any

from chatcast.core import protocol
from chatcast.core.retry import Backoff, retry
from chatcast.server.bus.base import BusUnavailable, GenerationLog, LogEntry, LogSealed

log = logging.getLogger("chatcast.ending")

#: Pauses between tries while the bus is down: 0.25 s doubling to 5 s, 12 tries (~38 s).
DONE_BACKOFF = Backoff(base_s=0.25, max_s=5.0)
DONE_ATTEMPTS = 12


async def publish_done(logs: GenerationLog, chat_id: str, gen_id: str, seq: int, status: str,
                       msg: dict[str, Any], usage: dict[str, Any] | None,
                       error: dict[str, Any] | None,
                       lost: list[LogEntry] | None = None,
                       attempts: int = DONE_ATTEMPTS) -> bool:
    """Append the generation's `done` at `seq + 1` and end its log. `lost`: the owner's
    copy of a log the bus lost, written again first (so the `done` follows every delta).
    Whether the log has a `done` now (this one, or another process's)."""
    event = protocol.done(chat_id, gen_id, seq + 1, status, msg, usage=usage, err=error)
    unrestored = lost

    async def attempt() -> None:
        nonlocal unrestored
        if unrestored is not None:
            await logs.restore_log(gen_id, unrestored, chat=chat_id)
            unrestored = None
        await logs.append(event)
        await logs.end_log(gen_id, chat=chat_id)

    try:
        await retry(attempt, retry_on=BusUnavailable, backoff=DONE_BACKOFF,
                    attempts=attempts)
    except LogSealed:
        pass  # another process published this generation's done
    except BusUnavailable:
        log.error("done not published: bus unavailable", extra={"gen": gen_id, "chat": chat_id})
        return False
    return True
