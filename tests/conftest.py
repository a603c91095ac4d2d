"""Test-wide setup: headless MuJoCo rendering and quiet, deterministic defaults."""

import os

# No display on CI or here: render offscreen through EGL unless the user chose a backend.
if not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
# Two cores: keep torch from oversubscribing them in tests.
os.environ.setdefault("OMP_NUM_THREADS", "1")


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _scheduling_is_left_as_found():
    """A test that leaves the test process at SCHED_FIFO (say, through the runtime's isolation)
    starves every later test that competes for a core with a child it starts: the child
    inherits the policy and, at the same FIFO priority, never yields. Restore it and fail the
    test that leaked it."""
    if not hasattr(os, "sched_getscheduler"):
        yield
        return
    before = os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
    yield
    after = os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
    if after != before:
        os.sched_setscheduler(0, before[0], os.sched_param(before[1]))
        pytest.fail(f"the test left the test process's scheduling at {after} (policy, priority), "
                    f"found at {before}")
