"""Process and thread isolation against period jitter (design §7), for the control loop.

Each lever is best effort and logged: CPU pinning, SCHED_FIFO priority (worker threads one
level below the loop), a held ``/dev/cpu_dma_latency`` request, a heap that keeps its pages,
a frozen or manual garbage collector, a short GIL switch interval. :class:`IsolationConfig`
holds them; :func:`apply_isolation` applies them at start-up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

logger = logging.getLogger(__name__)

GC_MODES = ("default", "freeze", "manual")


@dataclass(frozen=True, kw_only=True)
class IsolationConfig:
    """Process-level levers against period jitter (design §7); each is best effort and logged."""

    cpu: int | None = None
    """Pin the process (and the threads it starts later) to this CPU; None: no pinning."""
    priority: str = "fifo"
    """``none``; ``nice`` (raise priority with ``os.nice(-10)``); ``fifo`` (``SCHED_FIFO``,
    falling back to ``nice``). Needs privileges; without them it is logged and skipped.
    Measured on 2 cores with a learner training: fifo gives 0 overruns at 10 and 50 Hz where
    nice gives hundreds."""
    fifo_priority: int = 10
    """SCHED_FIFO priority when ``priority == "fifo"``."""
    gc_mode: str = "freeze"
    """``default``; ``freeze`` (``gc.freeze()`` after start-up, so collections skip the start-up
    heap); ``manual`` (freeze, ``gc.disable()``, and :func:`collect_young` between ticks)."""
    gc_every_ticks: int = 50
    """``gc_mode == "manual"``: collect generation 0 after every this many ticks."""
    torch_threads: int = 1
    """Intra-op threads for inference (one: no pool wake-ups on the tick)."""
    cpu_latency_us: int | None = 0
    """Hold a PM QoS request on ``/dev/cpu_dma_latency`` for this many µs while the process
    lives (None: leave it): idle CPUs then poll instead of halting, so a sleeping loop wakes
    on time. It costs no CPU time (the idle loop yields to any runnable thread), only power.
    On this 2-vCPU VM a plain SCHED_FIFO sleeper at 50 Hz woke > 2 ms late 4 times in
    6,000 wake-ups (max 8.6 ms) with the CPUs halting, 0 times (max 1.3 ms) with 0 µs held.
    Needs root (or write access to the device); without it, logged and skipped."""
    keep_heap: bool = True
    """glibc only: serve blocks up to 32 MB from the heap and never give freed memory back to
    the OS (``mallopt`` ``M_MMAP_THRESHOLD``, ``M_TRIM_THRESHOLD``). Giving memory back unmaps
    pages, and an unmap interrupts every CPU that runs a thread of this process to flush its
    TLB — the loop's too. On the 2-vCPU VM without it, warm-up passes during weight swaps
    (7.8 MB received, decoded, copied and freed every 3 s) stalled by ~7.5 ms with no context
    switch (``stalled``); over five alternating pairs of 50 Hz minutes under a learner load,
    22 overruns without it, 5 with it and none stalled. The cost is memory: the heap keeps
    its peak (the runtime's RSS held at 521–522 MB through 30 swaps; 508–520 MB without)."""
    switch_interval_s: float = 0.0005
    """``sys.setswitchinterval``: how long a worker thread (weight verification, camera or
    simulator threads) may hold the GIL before the loop's thread gets it back. Python's
    default, 5 ms, lets one busy worker delay a tick by up to 5 ms."""

    def __post_init__(self) -> None:
        if not 1e-5 <= self.switch_interval_s <= 0.05:
            raise ValueError(f"switch_interval_s: must be in [1e-5, 0.05], got {self.switch_interval_s}")
        if self.cpu is not None and self.cpu < 0:
            raise ValueError(f"cpu: must be >= 0 or None, got {self.cpu}")
        if self.priority not in ("none", "nice", "fifo"):
            raise ValueError(f"priority: must be none, nice or fifo, got {self.priority!r}")
        if not 1 <= self.fifo_priority <= 99:
            raise ValueError(f"fifo_priority: must be in [1, 99], got {self.fifo_priority}")
        if self.gc_mode not in GC_MODES:
            raise ValueError(f"gc_mode: must be one of {GC_MODES}, got {self.gc_mode!r}")
        if self.gc_every_ticks < 1:
            raise ValueError(f"gc_every_ticks: must be positive, got {self.gc_every_ticks}")
        if self.torch_threads < 1:
            raise ValueError(f"torch_threads: must be positive, got {self.torch_threads}")
        if self.cpu_latency_us is not None and not 0 <= self.cpu_latency_us <= 2_000_000_000:
            raise ValueError(f"cpu_latency_us: must be in [0, 2e9] or None, got {self.cpu_latency_us}")


def apply_isolation(config: IsolationConfig) -> dict[str, str]:
    """Applies the affinity, priority and thread-count levers of ``config`` to this process.

    Returns lever → outcome (for logs and benchmarks). Never raises for a lever the OS refuses
    (it is logged at WARNING). Call early, before worker threads start, so they inherit it.
    """
    import torch  # lazily: the clock itself needs no torch

    outcome: dict[str, str] = {}
    torch.set_num_threads(config.torch_threads)
    outcome["torch_threads"] = str(config.torch_threads)
    sys.setswitchinterval(config.switch_interval_s)
    outcome["switch_interval_ms"] = f"{config.switch_interval_s * 1e3:g}"
    if config.cpu is not None:
        try:
            os.sched_setaffinity(0, {config.cpu})
            outcome["cpu"] = str(config.cpu)
        except (OSError, ValueError) as e:
            logger.warning("isolation: cannot pin to CPU %d: %s", config.cpu, e)
            outcome["cpu"] = f"refused: {e}"
    if config.priority == "fifo":
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(config.fifo_priority))
            outcome["priority"] = f"SCHED_FIFO {config.fifo_priority}"
            if config.fifo_priority > 1:  # ZeroMQ I/O threads: below the loop, above the learner
                from protocol.transport.common import set_io_thread_scheduling

                set_io_thread_scheduling(os.SCHED_FIFO, config.fifo_priority - 1)
        except (OSError, AttributeError) as e:
            logger.warning("isolation: SCHED_FIFO refused (%s); trying nice", e)
    if config.cpu_latency_us is not None:
        outcome["cpu_latency_us"] = hold_cpu_latency(config.cpu_latency_us)
    if config.keep_heap:
        outcome["keep_heap"] = keep_heap()
    if config.priority in ("nice", "fifo") and "priority" not in outcome:
        try:
            os.nice(-10)
            outcome["priority"] = f"nice {os.nice(0)}"
        except OSError as e:
            logger.warning("isolation: cannot raise priority with nice: %s", e)
            outcome["priority"] = f"refused: {e}"
    logger.info("isolation: %s", ", ".join(f"{k}={v}" for k, v in outcome.items()) or "none")
    return outcome


CPU_LATENCY_DEVICE = "/dev/cpu_dma_latency"
_cpu_latency_fd: int | None = None  # the open request; the kernel drops it when this closes


def hold_cpu_latency(us: int, device: str = CPU_LATENCY_DEVICE) -> str:
    """Requests a CPU wake-up latency of at most ``us`` µs (Linux PM QoS) until the process
    exits or :func:`release_cpu_latency`; a second call replaces the first request. Returns
    the outcome for the isolation log: the value held, or why it was refused. Never raises."""
    global _cpu_latency_fd
    release_cpu_latency()
    try:
        fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        logger.warning("isolation: cannot hold a CPU wake-up latency (%s: %s); idle CPUs may wake late",
                       device, e.strerror or e)
        return f"refused: {e.strerror or e}"
    try:
        os.write(fd, int(us).to_bytes(4, sys.byteorder, signed=True))
    except OSError as e:
        os.close(fd)
        logger.warning("isolation: %s refused %d µs: %s", device, us, e.strerror or e)
        return f"refused: {e.strerror or e}"
    _cpu_latency_fd = fd
    return str(us)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
HEAP_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's upper bound on 64-bit (HEAP_MAX_SIZE / 2)


def keep_heap() -> str:
    """Sets glibc's malloc to keep freed memory and to serve blocks up to
    :data:`HEAP_MMAP_THRESHOLD` from the heap (see ``IsolationConfig.keep_heap``); returns the
    outcome for the isolation log. A no-op, logged, without glibc. Never raises."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        logger.info("isolation: no glibc mallopt here; the heap is left as it is")
        return "skipped: no mallopt"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if not (mallopt(M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, 2**31 - 1)):
        logger.warning("isolation: mallopt refused the heap settings")
        return "refused"
    return "on"


def release_cpu_latency() -> None:
    """Drops the request of :func:`hold_cpu_latency` (idempotent)."""
    global _cpu_latency_fd
    if _cpu_latency_fd is not None:
        os.close(_cpu_latency_fd)
        _cpu_latency_fd = None


def _fifo_level(tid: int = 0) -> int | None:
    """The SCHED_FIFO priority of thread ``tid`` (0: the caller); None when not FIFO."""
    if os.sched_getscheduler(tid) != os.SCHED_FIFO:
        return None
    return os.sched_getparam(tid).sched_priority


@contextlib.contextmanager
def ordinary_priority() -> Iterator[None]:
    """Runs the body at SCHED_OTHER when the calling thread runs SCHED_FIFO, then restores
    its level; threads started meanwhile that still run as they inherited it (SCHED_OTHER,
    nice 0, e.g. torch's intra-op workers) are moved to one level below it, where
    :func:`lower_other_threads` would have put them. A no-op when the
    thread is not SCHED_FIFO or the OS refuses. For long start-up computation on a
    real-time thread, such as building and tracing the policy's modules (~1 s of CPU):
    Linux's deadline "fair server" guarantees ordinary tasks 50 ms of every second, and
    after a real-time thread held a CPU for ~0.95 s it preempted every real-time thread
    there — the control loop's included — for 50 ms (a first tick 30 ms late, measured)."""
    try:
        level = _fifo_level()
    except (OSError, AttributeError):  # no sched_* on this OS
        level = None
    lowered = False
    before: set[str] = set()
    if level is not None:
        try:
            before = set(os.listdir("/proc/self/task"))
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            lowered = True
        except (OSError, AttributeError) as e:
            logger.debug("isolation: priority unchanged for start-up work: %s", e)
    try:
        yield
    finally:
        if lowered:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(level))
            helper = os.sched_param(max(1, level - 1))
            for tid in (int(t) for t in set(os.listdir("/proc/self/task")) - before):
                try:  # a thread that chose its own policy (a disk writer at SCHED_BATCH) keeps it
                    if os.sched_getscheduler(tid) == os.SCHED_OTHER and os.getpriority(os.PRIO_PROCESS, tid) == 0:
                        os.sched_setscheduler(tid, os.SCHED_FIFO, helper)
                except OSError:  # it has ended meanwhile
                    pass


def lower_thread_priority() -> None:
    """Drops the calling thread one SCHED_FIFO level below the loop (a no-op unless it runs
    SCHED_FIFO above level 1). For worker threads (executors, and the device threads they
    start, which inherit it): at the loop's own level a FIFO worker is never preempted by
    the loop, and a simulator render or a weights hash then delayed ticks by up to 18 ms
    (13 overruns in 15,000 ticks at 50 Hz); one level down they still run before the learner."""
    try:
        level = _fifo_level()
        if level is not None and level > 1:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(level - 1))
    except (OSError, AttributeError) as e:  # no privileges, or no sched_* on this OS
        logger.debug("isolation: worker priority unchanged: %s", e)


def lower_other_threads() -> int:
    """Drops every other thread of this process that runs SCHED_FIFO at or above the calling
    (loop) thread's level to one level below it; returns how many were lowered (0 unless the
    caller runs SCHED_FIFO above level 1, or off Linux).

    For threads started outside the executors' :func:`lower_thread_priority` initializer,
    which inherit the loop's level from the thread that created them: pyzmq's zero-copy
    garbage-collector thread and its ZeroMQ I/O thread (started by the first large send on
    the loop thread), and any a library starts. Call once after start-up, before the loop."""
    try:
        level = _fifo_level()
        tasks = os.listdir("/proc/self/task")
    except (OSError, AttributeError):
        return 0
    if level is None or level <= 1:
        return 0
    own, lowered = threading.get_native_id(), 0
    for tid in map(int, tasks):
        try:
            theirs = _fifo_level(tid) if tid != own else None
            if theirs is not None and theirs >= level:
                os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(level - 1))
                lowered += 1
        except OSError as e:  # the thread exited meanwhile, or no privileges
            logger.debug("isolation: thread %d unchanged: %s", tid, e)
    return lowered


def settle_gc(mode: str) -> None:
    """Applies ``mode`` (see :class:`IsolationConfig`) after start-up: collects once, freezes the
    surviving heap and, for ``manual``, disables automatic collection. Blocks for one collection."""
    import gc

    if mode == "default":
        return
    gc.collect()
    gc.freeze()
    if mode == "manual":
        gc.disable()
    logger.info("gc: %d objects frozen%s", gc.get_freeze_count(), ", automatic collection off" if mode == "manual" else "")


def collect_young() -> None:
    """Collects generation 0 (call between ticks when automatic collection is off); ~µs."""
    import gc

    gc.collect(0)
