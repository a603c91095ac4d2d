"""Test-wide setup: headless MuJoCo rendering and quiet, deterministic defaults."""

import os

# No display on CI or here: render offscreen through EGL unless the user chose a backend.
if not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
# Two cores: keep torch from oversubscribing them in tests.
os.environ.setdefault("OMP_NUM_THREADS", "1")
