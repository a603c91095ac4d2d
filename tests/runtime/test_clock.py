"""Clock: absolute deadlines, low jitter, overruns counted, missed ticks skipped (no burst)."""

from __future__ import annotations

import asyncio
import time

import pytest

from runtime.clock import Clock, ClockConfig, install_uvloop
from runtime.stats import Ring


def test_ticks_on_absolute_deadlines_without_drift() -> None:
    clock = Clock(ClockConfig(rate_hz=100.0))

    async def body() -> list[float]:
        starts = []
        for _ in range(60):
            tick = await clock.wait_next()
            starts.append(tick.started)
        return starts

    starts = asyncio.run(body())
    assert starts[-1] - starts[0] == pytest.approx(0.59, abs=0.01)  # no accumulated drift
    p50, p99, worst = clock.jitter_ms()
    assert p50 < 1.0 and worst >= p99 >= p50 >= 0
    assert clock.ticks == 60 and clock.skipped == 0


def test_a_long_stall_is_one_overrun_and_skipped_ticks_not_a_burst() -> None:
    clock = Clock(ClockConfig(rate_hz=50.0))

    async def body() -> list:
        ticks = [await clock.wait_next()]
        time.sleep(0.095)  # block the loop for ~4.75 periods
        for _ in range(3):
            ticks.append(await clock.wait_next())
        return ticks

    ticks = asyncio.run(body())
    assert ticks[1].late and ticks[1].skipped == 3 and ticks[1].index == 4
    assert not ticks[2].late and ticks[2].index == 5
    assert ticks[3].started - ticks[2].started == pytest.approx(0.02, abs=0.004)  # no burst
    assert clock.overruns == 1 and clock.skipped == 3


def test_rebase_restarts_the_grid() -> None:
    clock = Clock(ClockConfig(rate_hz=100.0))

    async def body() -> None:
        await clock.wait_next()
        await asyncio.sleep(0.05)
        clock.rebase()
        tick = await clock.wait_next()
        assert not tick.late and tick.skipped == 0

    asyncio.run(body())
    assert clock.overruns == 0


def test_uvloop_helper_and_config_validation() -> None:
    assert install_uvloop() in (True, False)
    asyncio.set_event_loop_policy(None)
    with pytest.raises(ValueError, match="rate_hz"):
        ClockConfig(rate_hz=0)
    with pytest.raises(ValueError, match="spin_margin_s"):
        ClockConfig(rate_hz=1000, spin_margin_s=0.002)


def test_ring_keeps_a_bounded_window() -> None:
    ring = Ring(4)
    for value in range(10):
        ring.add(float(value))
    assert ring.values().tolist() == [6.0, 7.0, 8.0, 9.0] and ring.total == 10
    assert ring.max_ever == 9.0 and ring.percentile(50) == pytest.approx(7.5)
