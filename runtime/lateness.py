"""Why was a tick late? A cheap per-tick probe of the loop thread, read only on overruns.

At the end of every tick the loop takes a :class:`ThreadSample` of its own thread (wall
time, CPU time, time runnable but waiting for a core from Linux's
``/proc/self/task/TID/schedstat``, context switches and page faults from
``getrusage(RUSAGE_THREAD)``; a few µs); when the next tick is late by ``L`` after a gap
``G`` since that sample, the difference names the first cause that explains it:

- ``gc``: Python's cyclic collector ran for at least ``L/2`` in the gap;
- ``busy``: the loop thread's own CPU time exceeds ``G − L``, the time it had before the
  deadline (its own callbacks — warm-up passes, message handling, logging — would have
  made it late even on an idle core);
- ``preempted``: it waited at least ``L/2`` runnable for a core (a thread or process at an
  equal or higher priority held it); without schedstat, any involuntary switch;
- ``stalled``: a warm-up pass (pure computation, wrapped in :meth:`LateTickProbe.warmup`)
  took at least ``L/2`` more wall time than its CPU time and its wait for a core, with no
  context switch of its own: the thread neither yielded nor queued, yet did not run — the
  hypervisor took the virtual CPU (steal time) or interrupts held it;
- ``faults``: major page faults (memory paged in from disk);
- ``blocked``: none of the above — it waited off-CPU (the GIL held by a worker in a call
  that does not release it, a lock, or a sleep that woke late).

The log line also names where every other Python thread is at that moment (its innermost
frame): a worker that held the GIL through the gap is usually still in the same call.

Every late tick is counted by cause (reported in ``Status.detail`` as ``late_<cause>``) and
logged at WARNING with these figures, at most one line per ``log_interval_s`` (the line says
how many were not logged). Not thread-safe: the loop thread only.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

try:
    import resource

    _RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", None)
except ImportError:  # not on POSIX
    resource = None  # type: ignore[assignment]
    _RUSAGE_THREAD = None

logger = logging.getLogger(__name__)

LATE_CAUSES = ("busy", "preempted", "gc", "stalled", "faults", "blocked")


@dataclass(frozen=True)
class ThreadSample:
    """Counters of the calling thread at one instant (zeros where the OS has no per-thread usage)."""

    wall: float
    cpu: float
    runqueue: float | None = None
    """Seconds spent runnable, waiting for a core (None without schedstat)."""
    involuntary: int = 0
    voluntary: int = 0
    minor_faults: int = 0
    major_faults: int = 0

    @classmethod
    def now(cls, schedstat_fd: int | None = None) -> ThreadSample:
        """Samples the calling thread; ``schedstat_fd`` is its open ``schedstat`` file."""
        wall, cpu = time.perf_counter(), time.thread_time()
        runqueue = None
        if schedstat_fd is not None:
            try:
                runqueue = int(os.pread(schedstat_fd, 128, 0).split()[1]) * 1e-9
            except (OSError, ValueError, IndexError):
                runqueue = None
        if _RUSAGE_THREAD is None:
            return cls(wall, cpu, runqueue)
        u = resource.getrusage(_RUSAGE_THREAD)
        return cls(wall, cpu, runqueue, u.ru_nivcsw, u.ru_nvcsw, u.ru_minflt, u.ru_majflt)


def open_schedstat() -> int | None:
    """Opens the calling thread's ``/proc/self/task/TID/schedstat`` (None where absent)."""
    try:
        return os.open(f"/proc/self/task/{threading.get_native_id()}/schedstat", os.O_RDONLY)
    except OSError:
        return None


@dataclass(frozen=True)
class LateTick:
    """Where the gap before one late tick went (times in milliseconds)."""

    late_ms: float
    """How late the tick started after its deadline."""
    gap_ms: float
    """Wall time from the end of the previous tick to the start of this one."""
    cpu_ms: float
    """CPU time the loop thread used in the gap."""
    runqueue_ms: float | None
    """Time the loop thread was runnable but waited for a core (None without schedstat)."""
    warmup_ms: float
    """Of which the policy warm-up passes before the tick (wall time)."""
    warmup_cpu_ms: float
    """The loop thread's CPU time in those passes."""
    warmup_runqueue_ms: float | None
    """Its wait for a core in those passes (None without schedstat)."""
    warmup_switches: int
    """Context switches (voluntary and involuntary) in those passes."""
    gc_ms: float
    """Time Python's collector ran in the gap (any thread)."""
    involuntary: int
    voluntary: int
    minor_faults: int
    major_faults: int

    @property
    def stalled_ms(self) -> float:
        """Wall time of the warm-up passes that is neither CPU time nor a wait for a core, when
        the thread made no context switch in them (else 0: it may have yielded, e.g. to the GIL)."""
        if self.warmup_switches:
            return 0.0
        return max(0.0, self.warmup_ms - self.warmup_cpu_ms - (self.warmup_runqueue_ms or 0.0))

    @property
    def cause(self) -> str:
        """The dominant cause, one of :data:`LATE_CAUSES` (see the module docstring)."""
        if self.gc_ms >= 0.5 * self.late_ms:
            return "gc"
        if self.cpu_ms >= self.gap_ms - self.late_ms:
            return "busy"
        if self.runqueue_ms is not None and self.runqueue_ms >= 0.5 * self.late_ms:
            return "preempted"
        if self.runqueue_ms is None and self.involuntary > 0:
            return "preempted"
        if self.stalled_ms >= 0.5 * self.late_ms:
            return "stalled"
        if self.major_faults > 0:
            return "faults"
        return "blocked"


def other_threads() -> str:
    """Returns ``name@function (file:line)`` of every other Python thread's innermost frame."""
    names = {t.ident: t.name for t in threading.enumerate()}
    own = threading.get_ident()
    return ", ".join(
        f"{names.get(ident, ident)}@{frame.f_code.co_name} ({os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno})"
        for ident, frame in sys._current_frames().items() if ident != own) or "none"


class LateTickProbe:
    """Samples the loop thread after every tick; explains, logs and counts late ones."""

    def __init__(self, *, log_interval_s: float = 1.0, log_level: int = logging.WARNING) -> None:
        """``log_level``: of the late-tick lines; INFO where lateness is routine (a lock-step
        loop waits for the learner, so a late tick there harms nothing)."""
        self.log_interval_s = log_interval_s
        self.log_level = log_level
        self._fd: int | None = None
        self._last_log = -math.inf
        self._unlogged = 0
        self._since: ThreadSample | None = None
        self._gc_started: float | None = None
        self._gc_s = 0.0
        self.warmup_s = 0.0
        """Wall time of the warm-up passes since the last mark (:meth:`warmup` adds to it)."""
        self._warmup_cpu_s = 0.0
        self._warmup_runqueue_s: float | None = 0.0
        self._warmup_switches = 0
        self.last_pass_s = 0.0
        """Wall time of the latest pass :meth:`warmup` wrapped (the loop budgets the next one by it)."""
        self.causes: Counter[str] = Counter()
        self.last: LateTick | None = None
        self._started = False  # hook and schedstat file come with the first mark (a loop never run has none)

    def close(self) -> None:
        """Removes the collector hook and closes the schedstat file (idempotent)."""
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._started = False

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started is not None:
            self._gc_s += time.perf_counter() - self._gc_started
            self._gc_started = None

    def mark(self) -> None:
        """Call at the end of every tick's work, on the loop's thread."""
        if not self._started:
            gc.callbacks.append(self._on_gc)
            self._fd = open_schedstat()
            self._started = True
        self._since = ThreadSample.now(self._fd)
        self._gc_s = 0.0
        self.warmup_s = self._warmup_cpu_s = 0.0
        self._warmup_runqueue_s = 0.0
        self._warmup_switches = 0

    @contextlib.contextmanager
    def warmup(self) -> Iterator[None]:
        """Wraps one warm-up pass on the loop thread: its wall time, CPU time, wait for a core
        and context switches go into the next late tick's report (``stalled``)."""
        before = ThreadSample.now(self._fd)
        try:
            yield
        finally:
            after = ThreadSample.now(self._fd)
            self.last_pass_s = after.wall - before.wall
            self.warmup_s += self.last_pass_s
            self._warmup_cpu_s += after.cpu - before.cpu
            if after.runqueue is None or before.runqueue is None or self._warmup_runqueue_s is None:
                self._warmup_runqueue_s = None
            else:
                self._warmup_runqueue_s += after.runqueue - before.runqueue
            self._warmup_switches += (after.voluntary - before.voluntary) + (after.involuntary - before.involuntary)

    def late(self, late_s: float) -> LateTick | None:
        """Call at the start of a late tick: explains the gap since :meth:`mark`, logs it (at
        ``log_level``) and counts its cause. None before the first mark."""
        if self._since is None:
            return None
        now, then = ThreadSample.now(self._fd), self._since
        runqueue = None if now.runqueue is None or then.runqueue is None else (now.runqueue - then.runqueue) * 1e3
        report = LateTick(
            late_ms=late_s * 1e3, gap_ms=(now.wall - then.wall) * 1e3, cpu_ms=(now.cpu - then.cpu) * 1e3,
            runqueue_ms=runqueue,
            warmup_ms=self.warmup_s * 1e3, warmup_cpu_ms=self._warmup_cpu_s * 1e3,
            warmup_runqueue_ms=None if self._warmup_runqueue_s is None else self._warmup_runqueue_s * 1e3,
            warmup_switches=self._warmup_switches, gc_ms=self._gc_s * 1e3,
            involuntary=now.involuntary - then.involuntary, voluntary=now.voluntary - then.voluntary,
            minor_faults=now.minor_faults - then.minor_faults, major_faults=now.major_faults - then.major_faults)
        self.causes[report.cause] += 1
        self.last = report
        if now.wall - self._last_log < self.log_interval_s:
            self._unlogged += 1
            return report
        self._last_log = now.wall
        logger.log(
            self.log_level,
            "loop: tick %.2f ms late (%s): gap %.2f ms, loop thread CPU %.2f ms (warm-up %.2f, of which "
            "CPU %.2f, %d switches), waiting for "
            "a core %s ms, gc %.2f ms, switches %d involuntary / %d voluntary, page faults %d minor / %d major%s; "
            "other threads: %s",
            report.late_ms, report.cause, report.gap_ms, report.cpu_ms, report.warmup_ms, report.warmup_cpu_ms,
            report.warmup_switches,
            "?" if report.runqueue_ms is None else f"{report.runqueue_ms:.2f}", report.gc_ms,
            report.involuntary, report.voluntary, report.minor_faults, report.major_faults,
            f" ({self._unlogged} late ticks since the last line)" if self._unlogged else "", other_threads())
        self._unlogged = 0
        return report

    def counts(self) -> dict[str, int]:
        """Late ticks by cause, every cause present (for ``Status.detail``)."""
        return {cause: self.causes[cause] for cause in LATE_CAUSES}
