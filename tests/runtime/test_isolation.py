"""Isolation levers against jitter: FIFO levels of worker threads, the CPU-latency request,
the heap that keeps its pages, start-up work at ordinary priority."""

from __future__ import annotations

from pathlib import Path

import pytest

def test_worker_threads_drop_one_fifo_level_below_the_loop() -> None:
    import os
    import threading

    from runtime.isolation import lower_thread_priority

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

    from runtime.isolation import lower_other_threads

    if hasattr(os, "sched_getscheduler") and os.sched_getscheduler(0) == getattr(os, "SCHED_FIFO", None):
        pytest.skip("the test process itself runs SCHED_FIFO")
    assert lower_other_threads() == 0


LOWER_OTHERS = """
import os, threading
from runtime.isolation import lower_other_threads
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

    from runtime import isolation

    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    try:
        assert isolation.hold_cpu_latency(0, str(device)) == "0"
        assert isolation._cpu_latency_fd is not None  # held open: the kernel keeps a request while it is
        assert isolation.hold_cpu_latency(20, str(device)) == "20"  # replaces, one open request
        assert device.read_bytes() == (20).to_bytes(4, sys.byteorder, signed=True)  # s32, native order
    finally:
        isolation.release_cpu_latency()
    assert isolation._cpu_latency_fd is None
    isolation.release_cpu_latency()  # idempotent
    assert isolation.hold_cpu_latency(0, str(tmp_path / "absent")).startswith("refused: ")
    with pytest.raises(ValueError, match="cpu_latency_us"):
        isolation.IsolationConfig(cpu_latency_us=-1)


def test_the_kernel_holds_the_requested_wake_up_latency() -> None:
    import os
    import sys

    from runtime import isolation

    if not os.access(isolation.CPU_LATENCY_DEVICE, os.R_OK | os.W_OK):
        pytest.skip(f"{isolation.CPU_LATENCY_DEVICE} is not accessible here")
    try:
        assert isolation.hold_cpu_latency(0) == "0"
        with open(isolation.CPU_LATENCY_DEVICE, "rb") as f:  # reads the aggregate of all requests
            assert int.from_bytes(f.read(4), sys.byteorder, signed=True) == 0
    finally:
        isolation.release_cpu_latency()


def test_the_cli_takes_a_latency_or_off() -> None:
    from runtime.__main__ import runtime_config

    base = ["--robot", "sim:cube", "--learner", "tcp://127.0.0.1:1"]
    assert runtime_config(base).isolation.cpu_latency_us == 0
    assert runtime_config(base + ["--cpu-latency-us", "off"]).isolation.cpu_latency_us is None
    assert runtime_config(base + ["--cpu-latency-us", "50"]).isolation.cpu_latency_us == 50
    with pytest.raises(SystemExit):
        runtime_config(base + ["--cpu-latency-us", "-3"])


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
from runtime.isolation import keep_heap
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

    from runtime.isolation import ordinary_priority

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
