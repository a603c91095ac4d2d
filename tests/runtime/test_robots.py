"""runtime.robots: the facts the shield is built from come from the robot's own declaration."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest

from hardware.franka import FrankaConfig, FrankaRobot
from hardware.interfaces import ArraySpec
from runtime.__main__ import check_reset_flags, parse_args, resolve_facts
from runtime.robots import RobotFacts, RobotSpecError, robot_facts, shield_config
from tests.runtime.fakes import FakeRobot


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
        check_reset_flags(parse_args(["--robot", "franka", "--reset-schedule", "earl"]))
    with pytest.raises(RobotSpecError, match="simulated"):
        check_reset_flags(parse_args(["--robot", "franka", "--reset-every", "100"]))
    args = parse_args(["--robot", "franka", "--camera", "wrist=1"])
    check_reset_flags(args)
    robot = FrankaRobot(FrankaConfig(hostname="franka.local"))
    facts, source = resolve_facts(args, robot)
    assert (facts.reset_interval, source) == (None, "never")
    assert np.isclose(facts.position_scale, robot.config.max_translation_step)
