"""Teleoperated recording on the simulated cube: a scripted operator drives KeyboardTeleop's
injected key source (closed loop on what it sees, as a person would) and the file is checked."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from hardware.teleop import KeyboardTeleop
from protocol.demos import load_demos
from simulation.tools import record
from simulation.tools.demos_cli import main
from simulation.tools.record import RecordConfig, record_demos
from simulation.tools.rig import RecordError, Rig, RigConfig, Ticker, build_rig, parse_camera

SEED = 24
"""The cube starts within a few millimetres of the centre, square to the fingers (checked)."""
SIZE = 16
HZ = 20.0


def _z(rig: Rig) -> float:
    return float(rig.robot.read_state().ee_position[2])


def _hold(key: str, seconds: float) -> Iterator[str]:
    """A key held down: terminal auto-repeat every 30 ms."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        yield key
        time.sleep(0.03)


def grasp_and_lift(rig: Rig) -> Iterator[str]:
    """Descends until the pads are at the cube's mid-height, closes, lifts 10 cm, marks success."""
    while _z(rig) > 0.027:
        yield "f"
        time.sleep(0.03)
    time.sleep(0.2)
    yield "space"
    time.sleep(0.6)
    while _z(rig) < 0.12:
        yield "r"
        time.sleep(0.03)
    yield "enter"
    time.sleep(0.3)  # the next episode starts from a reset


def _rig() -> Rig:
    return build_rig(RigConfig(robot="sim:cube", hz=HZ, image_size=SIZE, seed=SEED))


def test_keyboard_grasp_lift_discard_failure_quit(tmp_path: Path) -> None:
    out = tmp_path / "cube_fwd.npz"
    rig = _rig()

    def operator() -> Iterator[str]:
        yield from grasp_and_lift(rig)
        yield from _hold("w", 0.2)
        time.sleep(0.2)  # let go of "w" (it counts as held for key_hold_s after the last repeat)
        yield "z"  # discard
        time.sleep(0.3)
        # the keyboard's gripper toggle is still "closed" from the first episode
        yield from _hold("r", 0.3)
        yield "x"  # failure
        time.sleep(0.3)
        yield from _hold("a", 0.2)
        yield "esc"  # quit: the open episode is dropped

    lines: list[str] = []
    teleop = KeyboardTeleop(keys=operator())
    with rig, teleop:
        summary = record_demos(rig, teleop, RecordConfig(out=out, episodes=5, max_steps=300), out=lines.append)
    assert (summary.kept, summary.successes, summary.task_successes) == (2, 1, 1)
    assert summary.discarded == 2 and not summary.interrupted
    assert any("episode 1/5 kept: success" in line and "task solved" in line for line in lines)

    demos = load_demos(out)
    meta = demos.meta
    assert (meta.task, meta.direction, meta.source, meta.obs_mode) == ("cube", "forward", "teleop", "pixels")
    assert meta.cameras == ("wrist", "third_person") and meta.image_size == SIZE
    assert demos.episode_success.tolist() == [True, False]
    assert demos.observations["wrist"].shape[1:] == (3, SIZE, SIZE)
    assert demos.observations["wrist"].dtype == np.uint8 and demos.observations["proprio"].shape[1] == 4
    lift, fail = demos.episode(0), demos.episode(1)
    proprio = lift.observations["proprio"]
    assert proprio[0, 2] == pytest.approx(0.15, abs=1e-3) and proprio[-1, 2] > 0.11  # lifted
    assert 0.04 < proprio[-1, 3] < 0.06  # the pads rest on the 5 cm cube
    assert lift.actions[0].tolist() == [0.0, 0.0, -1.0, 0.0, -1.0]  # down, open
    assert lift.actions[-2, 4] == 1.0 and lift.actions[-2, 2] > 0  # closed, lifting
    assert lift.rewards[-2] == 1.0 and lift.rewards.sum() == 1.0 and lift.terminals[-1]
    assert fail.rewards.sum() == 0.0 and not fail.terminals.any()
    # each episode starts with the gripper open (Teleop.reset), and no "w" leaked in
    assert np.all(fail.actions[:-1, 4] == -1.0) and np.all(fail.actions[:-1, 0] == 0.0)
    assert np.all(np.abs(demos.actions) <= 1.0)


def test_ctrl_c_keeps_saved_episodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "d.npz"
    rigs: list[Rig] = []

    def build(config: RigConfig) -> Rig:
        assert config.seed == SEED and config.image_size == SIZE
        rigs.append(_rig())
        return rigs[-1]

    def operator() -> Iterator[str]:
        yield from grasp_and_lift(rigs[0])
        while not out.exists():
            time.sleep(0.02)
        yield from _hold("f", 0.3)  # the next episode is under way ...
        os.kill(os.getpid(), signal.SIGINT)  # ... when the operator hits Ctrl-C

    monkeypatch.setattr(record, "build_rig", build)
    monkeypatch.setattr(record, "build_teleop", lambda kind, dim: KeyboardTeleop(keys=operator(), action_dim=dim))
    code = main(["record", "--robot", "sim:cube", "--teleop", "keyboard", "--episodes", "3", "--hz", str(HZ),
                 "--image-size", str(SIZE), "--seed", str(SEED), "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "interrupted (Ctrl-C)" in text and "recorded 1 episodes (1 successful, 1 discarded" in text
    demos = load_demos(out)
    assert demos.num_episodes == 1 and demos.episode_success.tolist() == [True]
    assert not rigs[0].robot.is_connected


def test_configs_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="robot"):
        RigConfig(robot="ur5")
    with pytest.raises(ValueError, match="hz"):
        RigConfig(robot="sim:cube", hz=0)
    with pytest.raises(ValueError, match="direction"):
        RecordConfig(out=tmp_path / "x.npz", direction="sideways")
    assert parse_camera("wrist=12345") == ("wrist", "12345")
    with pytest.raises(ValueError, match="NAME=SERIAL"):
        parse_camera("wrist")
    with pytest.raises(RecordError, match="--camera"):
        build_rig(RigConfig(robot="franka"))
    assert main(["record", "--robot", "franka", "--out", str(tmp_path / "x.npz")]) == 1
    assert "needs at least one --camera" in capsys.readouterr().err
    assert main(["record", "--robot", "sim:nope", "--out", str(tmp_path / "x.npz")]) == 1
    assert "unknown 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["record", "--help"])
    assert exit_info.value.code == 0


def test_shield_limits_of_the_sim_cube() -> None:
    rig = _rig()
    cfg = rig.shield_config()
    assert cfg.position_scale == 0.01 and cfg.max_step == (0.01, 0.01, 0.01) and cfg.gripper_index == 4
    assert cfg.workspace.low == pytest.approx((-0.15, -0.15, 0.022))
    assert cfg.max_state_age_s > 1 / HZ and cfg.max_frame_age_s > 1 / HZ


@pytest.mark.parametrize("task, scale, gripper", [("tabletop", 0.2, None), ("door", 0.01, 3), ("peg", 0.01, 3),
                                                  ("cube", 0.01, 4)])
def test_rig_shield_is_the_runtimes_shield(task: str, scale: float, gripper: int | None) -> None:
    from runtime.robot_kinds import ROBOTS
    from runtime.robots import shield_config

    rig = build_rig(RigConfig(robot=f"sim:{task}", hz=HZ, image_size=SIZE, seed=SEED))
    cfg = rig.shield_config()
    # the task's declared move_scale, and the runtime's gripper rule (tabletop's dx, dy, grasp has none)
    assert cfg.position_scale == scale and cfg.gripper_index == gripper
    assert cfg == shield_config(rig.robot, ROBOTS.facts(f"sim:{task}", rig.robot), HZ)


def test_ticker_counts_an_overrun() -> None:
    ticker = Ticker(200.0)
    ticker.start()
    started = time.monotonic()
    for _ in range(4):
        ticker.wait()
    assert time.monotonic() - started == pytest.approx(0.02, abs=0.015) and ticker.overruns == 0
    time.sleep(0.05)
    ticker.wait()
    assert ticker.overruns == 1
