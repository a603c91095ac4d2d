"""Late-tick probe: each cause is recognised from what the loop thread did in the gap."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import subprocess
import sys
import threading
import time

import pytest

from runtime.lateness import LATE_CAUSES, LateTick, LateTickProbe, open_schedstat
from tests.runtime.fakes import FakeRobot
from tests.runtime.test_loop import ListSink, build, run_for


def spin(cpu_seconds: float) -> None:
    """Burns this much of the thread's own CPU time (not wall time: the core may be shared)."""
    end = time.thread_time() + cpu_seconds
    while time.thread_time() < end:
        pass


@pytest.fixture
def probe():
    p = LateTickProbe(log_interval_s=0.0)
    yield p
    p.close()


def test_no_report_before_the_first_mark(probe):
    assert probe.late(0.01) is None and probe.counts() == dict.fromkeys(LATE_CAUSES, 0)


def late_after(probe, work, deadline_after_s=0.001):
    """Marks, does ``work``, and reports the tick as due ``deadline_after_s`` after the mark."""
    probe.mark()
    started = time.perf_counter()
    work()
    return probe.late(time.perf_counter() - started - deadline_after_s)


def test_own_work_is_busy(probe):
    report = late_after(probe, lambda: spin(0.02))
    assert report.cause == "busy" and report.cpu_ms >= 20 and report.gap_ms >= 20


def test_waiting_off_cpu_is_blocked(probe):
    report = late_after(probe, lambda: time.sleep(0.02))
    assert report.cpu_ms < 5 and report.voluntary >= 1
    # on a loaded machine the wake-up itself may wait for a core
    assert report.cause == ("preempted" if report.runqueue_ms and report.runqueue_ms >= report.late_ms / 2 else "blocked")


def test_waiting_for_a_core_is_preempted(probe):
    fd = open_schedstat()
    if fd is None:
        pytest.skip("no per-thread schedstat on this OS")
    os.close(fd)
    core = {min(os.sched_getaffinity(0))}
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    affinity = os.sched_getaffinity(0)
    try:
        for b in burners:
            os.sched_setaffinity(b.pid, core)
        os.sched_setaffinity(0, core)  # share one core with two busy processes
        time.sleep(0.05)
        # 10 ms of own work due by 12 ms: on a core of its own it would be on time
        report = late_after(probe, lambda: spin(0.01), deadline_after_s=0.012)
    finally:
        os.sched_setaffinity(0, affinity)
        for b in burners:
            b.kill()
            b.wait()
    assert report.late_ms > 2 and report.runqueue_ms > report.late_ms / 2 and report.cause == "preempted"


def test_a_worker_holding_the_gil_is_blocked(probe):
    stop = threading.Event()

    def hold_gil():
        while not stop.is_set():
            pass

    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.005)  # each wake-up then waits up to 5 ms for the GIL
    worker = threading.Thread(target=hold_gil)
    worker.start()
    try:
        time.sleep(0.01)
        # 20 short sleeps (10 ms nominal), due 8 ms after the mark
        report = late_after(probe, lambda: [time.sleep(0.0005) for _ in range(20)], deadline_after_s=0.008)
    finally:
        stop.set()
        worker.join()
        sys.setswitchinterval(interval)
    # the time went to waiting for the GIL off-CPU: neither own work nor a wait for a core
    assert report.gap_ms > 30 and report.cpu_ms < report.gap_ms - report.late_ms
    waited_for_core = report.runqueue_ms is not None and report.runqueue_ms >= report.late_ms / 2
    assert report.cause == ("preempted" if waited_for_core else "blocked")


def test_counts_every_late_tick_but_rate_limits_the_log(caplog):
    probe = LateTickProbe(log_interval_s=60.0)
    try:
        with caplog.at_level(logging.WARNING, logger="runtime.lateness"):
            for _ in range(3):
                probe.mark()
                time.sleep(0.001)
                probe.late(0.0005)
    finally:
        probe.close()
    assert sum(probe.counts().values()) == 3
    assert len([r for r in caplog.records if "late" in r.getMessage()]) == 1
    probe.close()  # idempotent


def test_a_callback_that_holds_the_loop_shows_as_busy_in_the_loop_stats():
    robot = FakeRobot()
    sink = ListSink()

    reports = []

    async def body():
        loop = build(robot, sink, rate_hz=50.0)
        probe_late = loop.lateness.late

        def late(late_s):  # every report, not only the last: on a loaded machine later ticks can be late too
            report = probe_late(late_s)
            reports.append(report)
            return report

        loop.lateness.late = late

        async def hog():
            await asyncio.sleep(0.3)
            spin(0.05)  # blocks the event loop thread across a deadline

        try:
            await run_for(loop, 0.6, hog())
        finally:
            loop.policy.close()
        return loop

    loop = asyncio.run(body())
    detail = loop.stats().detail()
    assert loop.clock.overruns >= 1 and detail["late_busy"] >= 1
    assert sum(detail[f"late_{c}"] for c in LATE_CAUSES) == loop.clock.overruns
    assert any(r is not None and r.cpu_ms >= 50 for r in reports), reports  # the hog's tick shows its CPU


def test_the_log_line_names_the_other_threads(caplog):
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, name="weights-worker")
    worker.start()
    probe = LateTickProbe(log_interval_s=0.0)
    try:
        with caplog.at_level(logging.WARNING, logger="runtime.lateness"):
            late_after(probe, lambda: time.sleep(0.002))
    finally:
        stop.set()
        worker.join()
        probe.close()
    assert "weights-worker@wait (threading.py:" in caplog.records[-1].getMessage()


def test_the_collector_hook_lives_from_the_first_mark_to_close():
    probe = LateTickProbe()
    assert not any(getattr(cb, "__self__", None) is probe for cb in gc.callbacks)  # a loop never run adds none
    probe.mark()
    assert any(getattr(cb, "__self__", None) is probe for cb in gc.callbacks)
    probe.close()
    assert not any(getattr(cb, "__self__", None) is probe for cb in gc.callbacks)


def test_warm_up_passes_are_measured_and_a_sleep_in_one_is_not_a_stall(probe):
    probe.mark()
    with probe.warmup():
        spin(0.01)
    with probe.warmup():
        time.sleep(0.01)  # yields: off-CPU by its own doing
    report = probe.late(0.005)
    assert report.warmup_ms >= 20 and 9 <= report.warmup_cpu_ms < report.warmup_ms
    assert report.warmup_switches >= 1 and report.stalled_ms == 0 and report.cause != "stalled"
    probe.mark()  # a mark starts the next gap's figures from zero
    report = probe.late(0.001)
    assert report.warmup_ms == 0 and report.warmup_switches == 0


def late_tick(**changes) -> LateTick:
    figures = dict(late_ms=4.0, gap_ms=20.0, cpu_ms=5.0, runqueue_ms=0.0, warmup_ms=12.0, warmup_cpu_ms=4.5,
                   warmup_runqueue_ms=0.0, warmup_switches=0, gc_ms=0.0, involuntary=0, voluntary=1,
                   minor_faults=0, major_faults=0)
    return LateTick(**{**figures, **changes})


def test_time_lost_inside_a_warm_up_pass_without_a_switch_is_stalled():
    # the signature seen on a 2-vCPU VM: a 12 ms pass with 4.5 ms of CPU, never queued, never yielding
    assert late_tick().stalled_ms == pytest.approx(7.5) and late_tick().cause == "stalled"
    assert late_tick(warmup_switches=1).cause == "blocked"  # it yielded (the GIL, a lock): not a stall
    assert late_tick(warmup_runqueue_ms=7.0).cause == "blocked"  # queued for a core inside the pass
    assert late_tick(warmup_runqueue_ms=None).cause == "stalled"  # no schedstat: CPU time alone
    assert late_tick(warmup_ms=5.0).cause == "blocked"  # 0.5 ms lost: not what made it 4 ms late
    assert late_tick(runqueue_ms=3.0).cause == "preempted" and late_tick(gc_ms=3.0).cause == "gc"


def test_the_latest_warm_up_pass_is_timed_for_the_loop_budget(probe):
    probe.mark()
    with probe.warmup():
        spin(0.01)
    assert 0.01 <= probe.last_pass_s <= probe.warmup_s
    with probe.warmup():
        pass
    assert probe.last_pass_s < 0.01 <= probe.warmup_s
