"""Clock: absolute deadlines, low jitter, overruns counted, missed ticks skipped (no burst)."""

from __future__ import annotations

import asyncio
from pathlib import Path

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


def test_worker_threads_drop_one_fifo_level_below_the_loop() -> None:
    import os
    import threading

    from runtime.clock import lower_thread_priority

    seen: dict[str, tuple[int, int]] = {}

    def worker(name: str, fifo: bool) -> None:
        if fifo:
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(5))
            except OSError:
                seen[name] = (-1, -1)  # no privileges here: nothing to check
                return
        lower_thread_priority()
        seen[name] = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)

    for name, fifo in (("fifo", True), ("normal", False)):
        t = threading.Thread(target=worker, args=(name, fifo))
        t.start()
        t.join()
    assert seen["normal"] == (os.SCHED_OTHER, 0)  # never raised
    assert seen["fifo"] in ((os.SCHED_FIFO, 4), (-1, -1))
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # only the calling thread changed


def test_lower_other_threads_is_a_no_op_without_fifo():
    import os

    from runtime.clock import lower_other_threads

    if hasattr(os, "sched_getscheduler") and os.sched_getscheduler(0) == getattr(os, "SCHED_FIFO", None):
        pytest.skip("the test process itself runs SCHED_FIFO")
    assert lower_other_threads() == 0


LOWER_OTHERS = """
import os, threading
from runtime.clock import lower_other_threads
try:
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(5))
except (OSError, AttributeError):
    print("refused"); raise SystemExit
stop = threading.Event()
helper = threading.Thread(target=stop.wait)  # inherits FIFO 5 from this thread
helper.start()
before = os.sched_getparam(helper.native_id).sched_priority
lowered = lower_other_threads()
after = os.sched_getparam(helper.native_id).sched_priority
stop.set(); helper.join()
print(before, lowered, after, os.sched_getparam(0).sched_priority)
"""


def test_lower_other_threads_moves_inherited_fifo_threads_below_the_caller():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", LOWER_OTHERS], capture_output=True, text=True, timeout=60,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert out.returncode == 0, out.stderr
    if out.stdout.strip() == "refused":
        pytest.skip("SCHED_FIFO needs privileges this machine does not grant")
    before, lowered, after, own = map(int, out.stdout.split())
    assert (before, after, own) == (5, 4, 5) and lowered >= 1


def test_the_cpu_latency_request_is_written_held_and_released(tmp_path) -> None:
    import sys

    from runtime import clock

    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    try:
        assert clock.hold_cpu_latency(0, str(device)) == "0"
        assert clock._cpu_latency_fd is not None  # held open: the kernel keeps a request while it is
        assert clock.hold_cpu_latency(20, str(device)) == "20"  # replaces, one open request
        assert device.read_bytes() == (20).to_bytes(4, sys.byteorder, signed=True)  # s32, native order
    finally:
        clock.release_cpu_latency()
    assert clock._cpu_latency_fd is None
    clock.release_cpu_latency()  # idempotent
    assert clock.hold_cpu_latency(0, str(tmp_path / "absent")).startswith("refused: ")
    with pytest.raises(ValueError, match="cpu_latency_us"):
        clock.IsolationConfig(cpu_latency_us=-1)


def test_the_kernel_holds_the_requested_wake_up_latency() -> None:
    import os
    import sys

    from runtime import clock

    if not os.access(clock.CPU_LATENCY_DEVICE, os.R_OK | os.W_OK):
        pytest.skip(f"{clock.CPU_LATENCY_DEVICE} is not accessible here")
    try:
        assert clock.hold_cpu_latency(0) == "0"
        with open(clock.CPU_LATENCY_DEVICE, "rb") as f:  # reads the aggregate of all requests
            assert int.from_bytes(f.read(4), sys.byteorder, signed=True) == 0
    finally:
        clock.release_cpu_latency()


def test_the_cli_takes_a_latency_or_off() -> None:
    from runtime.__main__ import daemon_config, parse_args

    base = ["--robot", "sim:cube", "--learner", "tcp://127.0.0.1:1"]
    assert daemon_config(parse_args(base)).isolation.cpu_latency_us == 0
    assert daemon_config(parse_args(base + ["--cpu-latency-us", "off"])).isolation.cpu_latency_us is None
    assert daemon_config(parse_args(base + ["--cpu-latency-us", "50"])).isolation.cpu_latency_us == 50
    with pytest.raises(SystemExit):
        parse_args(base + ["--cpu-latency-us", "-3"])


def test_keep_heap_stops_malloc_from_unmapping_freed_blocks() -> None:
    import ctypes
    import subprocess
    import sys

    try:
        ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        pytest.skip("no glibc here")
    # In a fresh process, glibc's own statistics (mallinfo2's hblkhd: bytes in blocks that are
    # mappings of their own, unmapped when freed) while three 8 MB blocks are held.
    probe = """
import ctypes, sys
from runtime.clock import keep_heap
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
def mapped_mb_while_holding(n):
    baseline = libc.mallinfo2().hblkhd
    blocks = [libc.malloc(8 << 20) for _ in range(n)]
    held = libc.mallinfo2().hblkhd - baseline
    for b in blocks:
        libc.free(b)
    return held >> 20
before = mapped_mb_while_holding(3)
print(keep_heap())
print(before, mapped_mb_while_holding(3))
"""
    repo = Path(__file__).resolve().parents[2]  # `runtime` importable whatever pytest's working directory
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=repo).stdout.split()
    assert out[0] == "on"
    before, after = int(out[1]), int(out[2])
    assert before >= 24  # glibc's default: an 8 MB block is a mapping of its own, unmapped on free
    assert after == 0  # from the heap, which keeps it


def test_start_up_work_runs_at_ordinary_priority_and_its_threads_end_below_the_loop() -> None:
    import os
    import threading

    from runtime.clock import ordinary_priority

    seen: dict[str, object] = {}

    def body() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(5))
        except OSError:
            seen["skip"] = True  # no privileges here: nothing to check
            return
        with ordinary_priority():
            seen["inside"] = os.sched_getscheduler(0)
            started = threading.Event()
            release = threading.Event()

            polite = threading.Event()

            def helper() -> None:
                seen["helper_tid"] = threading.get_native_id()
                started.set()
                release.wait()

            def background() -> None:  # a disk writer that lowers itself
                os.setpriority(os.PRIO_PROCESS, 0, 19)
                seen["background_tid"] = threading.get_native_id()
                polite.set()
                release.wait()

            workers = [threading.Thread(target=helper), threading.Thread(target=background)]
            for w in workers:
                w.start()
            started.wait()
            polite.wait()
        tid, own = int(seen["helper_tid"]), int(seen["background_tid"])
        seen["after"] = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)
        seen["helper"] = (os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority)
        seen["background"] = (os.sched_getscheduler(own), os.getpriority(os.PRIO_PROCESS, own))
        release.set()
        for w in workers:
            w.join()

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if seen.get("skip"):
        pytest.skip("SCHED_FIFO is not permitted here")
    assert seen["inside"] == os.SCHED_OTHER
    assert seen["after"] == (os.SCHED_FIFO, 5)
    assert seen["helper"] == (os.SCHED_FIFO, 4)
    assert seen["background"] == (os.SCHED_OTHER, 19)  # its own choice stands
    with ordinary_priority():  # not real-time: nothing changes
        assert os.sched_getscheduler(0) == os.SCHED_OTHER
