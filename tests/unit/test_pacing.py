"""Adaptive coalescing: no hold while the event loop keeps up, a bounded one while it lags."""

from __future__ import annotations

import asyncio
import time

import pytest

from chatcast.server.pacing import IDLE_LAG_S, Pacer


def test_no_hold_while_the_loop_keeps_up() -> None:
    pacer = Pacer(max_hold_s=0.04)
    for _ in range(20):
        pacer.observe(0.0002)
    assert pacer.hold_s() == 0.0
    pacer.observe(0.08)  # one long pause (a garbage collection) is not overload
    assert pacer.hold_s() == 0.0


def test_the_hold_follows_the_lag_up_to_the_maximum_and_back() -> None:
    pacer = Pacer(max_hold_s=0.04)
    for _ in range(20):
        pacer.observe(0.005)
    assert 0.015 < pacer.hold_s() <= 0.04
    for _ in range(20):
        pacer.observe(0.5)
    assert pacer.hold_s() == 0.04
    for _ in range(30):
        pacer.observe(0.0)
    assert pacer.lag_s < IDLE_LAG_S and pacer.hold_s() == 0.0


def test_zero_maximum_disables_it() -> None:
    pacer = Pacer(max_hold_s=0.0)
    pacer.observe(1.0)
    assert pacer.hold_s() == 0.0


async def test_it_measures_a_blocked_loop() -> None:
    pacer = Pacer(max_hold_s=0.04)
    pacer.start()
    try:
        await asyncio.sleep(0.01)
        for _ in range(30):
            time.sleep(0.02)  # noqa: ASYNC251 - on purpose: the loop is busy, timers run late
            await asyncio.sleep(0)
        assert pacer.lag_s > IDLE_LAG_S and pacer.hold_s() > 0
    finally:
        await pacer.close()


def test_a_saturated_cpu_holds_even_with_punctual_timers() -> None:
    pacer = Pacer(max_hold_s=0.04)
    cpu = 0.0
    for k in range(21):  # one second at 98 % of a core, timers only 0.5 ms late
        cpu += 0.98 * 0.05
        pacer.observe(0.0005, k * 0.05, cpu)
    assert pacer.cpu == pytest.approx(0.98)
    assert 0.03 < pacer.hold_s() <= 0.04
    for k in range(21, 42):  # then 30 %: no hold
        cpu += 0.3 * 0.05
        pacer.observe(0.0005, k * 0.05, cpu)
    assert pacer.hold_s() == 0.0
