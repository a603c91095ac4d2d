"""runtime.robots and the composition root runtime.robot_kinds: what ``--robot`` names, and the
facts the shield is built from, which come from the robot's own declaration."""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from hardware.franka import FrankaConfig, FrankaRobot
from hardware.interfaces import ArraySpec
from hardware.interfaces import Camera, Robot
from runtime.__main__ import build_parser, check_reset_flags, main, resolve_facts, runtime_config
from runtime.robot_kinds import ROBOTS
from runtime.robots import RobotFacts, RobotKind, RobotKinds, RobotSetup, RobotSpecError, shield_config
from tests.runtime.fakes import FakeRobot, FakeSimRobot

robot_facts = ROBOTS.facts


def test_franka_scale_is_its_configured_translation_step() -> None:
    robot = FrankaRobot(FrankaConfig(hostname="franka.local", max_translation_step=0.03))
    facts = robot_facts("franka", robot, task="cube")
    assert (facts.kind, facts.task, facts.position_scale, facts.reset_interval) == ("franka", "cube", 0.03, None)
    config = shield_config(robot, facts, hz=10.0)
    assert config.position_scale == 0.03 and config.max_step == (0.03, 0.03, 0.03)
    assert config.gripper_index == 4  # dx, dy, dz, dyaw, gripper


def test_a_robot_that_does_not_declare_its_scale_is_refused() -> None:
    with pytest.raises(RobotSpecError, match="no config"):
        robot_facts("franka", FakeRobot())  # no default scale is assumed
    robot = FakeRobot()
    robot.config = types.SimpleNamespace(hostname="x")  # type: ignore[attr-defined]
    with pytest.raises(RobotSpecError, match="max_translation_step"):
        robot_facts("franka", robot)
    robot.config = types.SimpleNamespace(max_translation_step=0.02)  # type: ignore[attr-defined]
    assert robot_facts("franka", robot).position_scale == 0.02
    with pytest.raises(RobotSpecError, match="reset schedule"):
        robot_facts("franka", robot, reset_schedule="authors")


class _ThreeElementRobot(FakeRobot):
    """Tabletop's action layout: dx, dy, grasp."""

    @property
    def action_spec(self) -> ArraySpec:
        return ArraySpec(shape=(3,), dtype="float32", low=-1.0, high=1.0)


def test_shield_config_gripper_rule_and_rate_limits() -> None:
    facts = RobotFacts(kind="sim", task="t", position_scale=0.2, reset_interval=None)
    assert shield_config(_ThreeElementRobot(), facts, hz=10.0).gripper_index is None
    config = shield_config(FakeRobot(), facts, hz=20.0)
    assert config.gripper_index == 3
    # one full-scale action per tick on every axis at once stays within the speed limit
    assert config.max_speed * config.control_period_s >= 0.2 * math.sqrt(3.0)
    assert config.max_step == (0.2, 0.2, 0.2)


def test_reset_flags_apply_to_simulated_robots_only() -> None:
    with pytest.raises(RobotSpecError, match="simulated"):
        check_reset_flags(runtime_config(["--robot", "franka", "--reset-schedule", "earl"]))
    with pytest.raises(RobotSpecError, match="simulated"):
        check_reset_flags(runtime_config(["--robot", "franka", "--reset-every", "100"]))
    args = runtime_config(["--robot", "franka", "--camera", "wrist=1"])
    check_reset_flags(args)
    robot = FrankaRobot(FrankaConfig(hostname="franka.local"))
    facts, source = resolve_facts(args, robot)
    assert (facts.reset_interval, source) == (None, "never")
    assert np.isclose(facts.position_scale, robot.config.max_translation_step)


def test_the_emulated_operator_needs_a_simulated_task_with_an_operator_rule() -> None:
    with pytest.raises(RobotSpecError, match="has a real one"):
        check_reset_flags(runtime_config(["--robot", "franka", "--operator"]))
    cube = runtime_config(["--robot", "sim:cube", "--operator"])
    facts, _ = resolve_facts(cube, FakeSimRobot())  # a sim kind's facts come from its task
    assert facts.operator and "out" in str(facts.operator_rule)
    assert not resolve_facts(runtime_config(["--robot", "sim:cube"]), FakeSimRobot())[0].operator
    with pytest.raises(RobotSpecError, match="declares no rule"):
        resolve_facts(runtime_config(["--robot", "sim:door", "--operator"]), FakeSimRobot())


def test_an_unknown_simulated_task_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--robot", "sim:drawer", "--spill-dir", str(tmp_path)]) == 2  # before any loop or isolation
    err = capsys.readouterr().err
    assert err == ("resetfree-runtime: --robot sim:drawer: unknown task 'drawer'; expected sim:TASK with TASK one of "
                   "cube, door, peg, tabletop, or franka\n"), err
    assert ROBOTS.check("sim:door") == ("sim", "door") and ROBOTS.check("franka") == ("franka", None)
    for bad in ("ur5", "sim", "sim:", "franka:cube", ":door"):
        with pytest.raises(RobotSpecError, match="expected 'sim:TASK' or 'franka'"):
            ROBOTS.check(bad)


def test_a_robot_pc_without_the_simulator_is_told_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "simulation.registry", None)  # as if the package were absent
    with pytest.raises(RobotSpecError, match="the sim package is not installed"):
        ROBOTS.check("sim:door")


def test_importing_the_composition_root_loads_no_robot() -> None:
    # Each factory imports its package when called: a robot PC without MuJoCo can load the registry.
    code = ("import sys, runtime.robot_kinds\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'simulation' or m in "
            "('hardware.franka', 'hardware.realsense', 'mujoco', 'pyrealsense2', 'panda_py')))\n")
    import subprocess

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.strip() == "[]", done.stdout


class _Arm(FakeRobot):
    def __init__(self, task: str | None) -> None:
        super().__init__()
        self.task = task


def _arm_kind(name: str = "arm", *, tasks: tuple[str, ...] | None = None) -> RobotKind:
    def build(task: str | None, setup: RobotSetup) -> tuple[Robot, list[Camera]]:
        return _Arm(task), []

    def facts(task: str | None, robot: Robot, name: str | None, schedule: str) -> RobotFacts:
        return RobotFacts(kind="arm", task=name or task or "arm", position_scale=0.02, reset_interval=None)

    return RobotKind(name=name, build=build, facts=facts, tasks=None if tasks is None else (lambda: tasks))


def test_a_new_robot_kind_is_one_registration() -> None:
    kinds = RobotKinds([_arm_kind(), _arm_kind("twin", tasks=("reach",))])
    assert kinds.usage == "'arm' or 'twin:TASK'"
    robot, cameras = kinds.build("twin:reach", RobotSetup())
    assert isinstance(robot, _Arm) and robot.task == "reach" and cameras == []
    assert kinds.facts("arm", robot, "stack").task == "stack"
    assert kinds.check("twin:reach") == ("twin", "reach") and kinds.check("arm") == ("arm", None)
    with pytest.raises(RobotSpecError, match="unknown task 'lift'; expected twin:TASK with TASK one of reach, or arm"):
        kinds.check("twin:lift")
    with pytest.raises(RobotSpecError, match="expected 'arm' or 'twin:TASK', got 'twin'"):
        kinds.build("twin", RobotSetup())
    with pytest.raises(RobotSpecError, match="reset schedule"):
        kinds.facts("arm", robot, reset_schedule="weekly")
    with pytest.raises(ValueError, match="registered twice"):
        RobotKinds([_arm_kind(), _arm_kind()])
    with pytest.raises(ValueError, match="without ':'"):
        _arm_kind("a:b")


def test_help_shows_the_rate_and_switch_defaults() -> None:
    text = " ".join(build_parser().format_help().split())
    assert "control rate in Hz (default 10)" in text
    assert "steps per agent before switching to the other (default 200)" in text
