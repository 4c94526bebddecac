"""A running generation has one state; a later reason to end outranks a weaker one only,
and each state ends in one terminal status."""

from __future__ import annotations

from typing import Any, cast

from chatcast.server.runner import Running, State


def _running() -> Running:
    return Running(gen=cast(Any, None), chat_id="c", message_id="m", content="")


def test_a_stop_during_shutdown_ends_stopped_and_nothing_undoes_it() -> None:
    r = _running()
    assert r.state is State.STREAMING and r.state.status == "completed"
    assert r.advance(State.SHUTTING_DOWN) and r.state.status == "interrupted"
    assert r.advance(State.STOPPING) and r.state.status == "stopped"
    assert not r.advance(State.SHUTTING_DOWN) and not r.advance(State.TIMED_OUT)
    assert r.state.status == "stopped"


def test_ended_elsewhere_outranks_a_stop_and_finishing_outranks_all() -> None:
    r = _running()
    assert r.advance(State.STOPPING) and r.advance(State.ENDED_ELSEWHERE)
    assert r.state.status == "interrupted"
    assert r.advance(State.FINISHING)
    assert not any(r.advance(s) for s in State)
