"""Every entry point that can render works with no display and no MUJOCO_GL set (issue 18)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _bare_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MUJOCO_GL",
                                                              "PYOPENGL_PLATFORM")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=_bare_env(), capture_output=True, text=True,
                          timeout=240)


def test_demos_generate_renders_pixels_without_a_display(tmp_path: Path) -> None:
    # The README's own example, one episode.
    out = tmp_path / "peg_fwd.npz"
    done = _run(["-m", "simulation.tools.demos_cli", "generate", "--task", "peg", "--direction", "forward",
                 "--episodes", "1", "--obs", "pixels", "--out", str(out)], REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.stat().st_size > 10_000 and "DISPLAY" not in done.stderr


def test_a_pixel_sim_robot_renders_without_a_display(tmp_path: Path) -> None:
    # What resetfree-runtime --robot sim:cube --obs pixels builds (the runtime reaches it by plugin).
    code = ("from runtime.robot_kinds import ROBOTS\nfrom runtime.robots import RobotSetup\n"
            "robot, cams = ROBOTS.build('sim:cube', RobotSetup(obs='pixels', seed=0, lockstep=True))\n"
            "robot.connect()\n"
            "[c.connect() for c in cams]\n"
            "print('cameras', len(cams))\n")
    done = _run(["-c", code], REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cameras" in done.stdout


@pytest.mark.parametrize("module", ["simulation.tools.eval_cli", "simulation.tools.demos_cli"])
def test_entry_points_pick_egl_when_there_is_no_display(module: str) -> None:
    done = _run(["-c", f"import {module}, os; print(os.environ.get('MUJOCO_GL'))"], REPO)
    assert done.returncode == 0 and done.stdout.strip() == "egl", done.stderr[-2000:]
