"""The append script's return codes are the ones RedisBus names (each return says which)."""

from __future__ import annotations

import re

from chatcast.server.bus import redis as redis_bus


def test_every_return_of_the_append_script_is_a_named_code() -> None:
    returns = re.findall(r"return (-?\d+), [\w.]+(?: end)?\s+-- (\w+)", redis_bus.APPEND_ONE)
    named = {name: int(value) for value, name in returns}
    assert named == {"SEALED": redis_bus.SEALED, "LOG_LOST": redis_bus.LOG_LOST,
                     "REPEAT": redis_bus.REPEAT, "APPENDED": redis_bus.APPENDED,
                     "ERROR": redis_bus.ERROR}
    # Every return of a status is one of them (and the function has no other).
    assert len(re.findall(r"return ", redis_bus.APPEND_ONE)) == len(returns)
