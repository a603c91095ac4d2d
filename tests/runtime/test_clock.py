"""Clock: absolute deadlines, low jitter, overruns counted, missed ticks skipped (no burst)."""

from __future__ import annotations

import asyncio

import pytest

from runtime.clock import Clock, ClockConfig, install_uvloop
from runtime.stats import Ring


class VirtualTime:
    """A time source whose clock moves only when the code under test sleeps or "works"."""

    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds if seconds > 0 else 1e-5  # a spin iteration costs 10 us
        await asyncio.sleep(0)

    def work(self, seconds: float) -> None:
        """Blocking work inside a tick (the event loop does not run meanwhile)."""
        self.t += seconds


def virtual_clock(rate_hz: float) -> tuple[Clock, VirtualTime]:
    vt = VirtualTime()
    return Clock(ClockConfig(rate_hz=rate_hz), now=vt.now, sleep=vt.sleep), vt


def test_ticks_on_absolute_deadlines_without_drift() -> None:
    clock, vt = virtual_clock(100.0)

    async def body() -> list[float]:
        starts = []
        for i in range(60):
            tick = await clock.wait_next()
            starts.append(tick.started)
            vt.work(0.003 + 0.004 * (i % 2))  # uneven work must not shift the grid
        return starts

    starts = asyncio.run(body())
    assert starts[-1] - starts[0] == pytest.approx(0.59, abs=1e-4)  # no accumulated drift
    p50, p99, worst = clock.jitter_ms()
    assert p50 < 0.05 and worst >= p99 >= p50 >= 0
    assert clock.ticks == 60 and clock.skipped == 0 and clock.overruns == 0


def test_real_time_ticks_never_run_ahead_of_the_schedule() -> None:
    clock = Clock(ClockConfig(rate_hz=100.0))

    async def body() -> float:
        first = (await clock.wait_next()).started
        for _ in range(19):
            last = (await clock.wait_next()).started
        return last - first

    assert asyncio.run(body()) >= 0.19 - 1e-6  # a lower bound only: a busy machine may be late


def test_a_long_stall_is_one_overrun_and_skipped_ticks_not_a_burst() -> None:
    clock, vt = virtual_clock(50.0)

    async def body() -> list:
        ticks = [await clock.wait_next()]
        vt.work(0.095)  # block the loop for ~4.75 periods
        for _ in range(3):
            ticks.append(await clock.wait_next())
        return ticks

    ticks = asyncio.run(body())
    assert ticks[1].late and ticks[1].skipped == 3 and ticks[1].index == 4
    assert not ticks[2].late and ticks[2].index == 5
    assert ticks[3].started - ticks[2].started == pytest.approx(0.02, abs=1e-4)  # no burst
    assert clock.overruns == 1 and clock.skipped == 3
    # lateness counts from the first missed deadline (20 ms), not the one after the skip
    assert ticks[1].lateness == pytest.approx(0.075, abs=1e-4) and ticks[2].lateness == pytest.approx(0, abs=1e-4)


def test_rebase_restarts_the_grid() -> None:
    clock, vt = virtual_clock(100.0)

    async def body() -> None:
        await clock.wait_next()
        vt.work(0.05)
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
        ClockConfig(rate_hz=100, spin_margin_s=-0.001)
    ClockConfig(rate_hz=1000)  # the default margin exceeds the 1 ms period: capped, not refused


def test_ring_keeps_a_bounded_window() -> None:
    ring = Ring(4)
    for value in range(10):
        ring.add(float(value))
    assert ring.values().tolist() == [6.0, 7.0, 8.0, 9.0] and ring.total == 10
    assert ring.max_ever == 9.0 and ring.percentile(50) == pytest.approx(7.5)


def test_wait_lead_wakes_just_before_the_next_deadline_without_a_tick() -> None:
    clock, vt = virtual_clock(10.0)

    async def body() -> None:
        assert not await clock.wait_lead(0.004)  # before the first tick: no grid yet
        first = await clock.wait_next()
        assert await clock.wait_lead(0.004)
        assert vt.now() == pytest.approx(first.deadline + 0.1 - 0.004)
        assert not await clock.wait_lead(0.010)  # that moment has passed: returns at once
        assert vt.now() == pytest.approx(first.deadline + 0.1 - 0.004)
        tick = await clock.wait_next()
        assert tick.index == 1 and not tick.late

    asyncio.run(body())
    assert clock.ticks == 2 and clock.overruns == 0


def test_fast_rates_cap_the_spin_margin_at_half_a_period() -> None:
    clock, vt = virtual_clock(1000.0)

    async def body() -> None:
        for _ in range(50):
            await clock.wait_next()

    asyncio.run(body())
    assert clock.ticks == 50 and clock.overruns == 0
