"""FrankaRobot against the fake panda-py: limits every tick, gripper worker, recovery, stop."""

from __future__ import annotations

import itertools
import math
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardware.franka import FrankaConfig, FrankaRobot
from hardware.franka_motion import (
    compute_setpoint,
    quat_angle,
    quat_from_yaw,
    quat_multiply,
)
from hardware.interfaces import (
    DeviceAlreadyConnectedError,
    DeviceFailedError,
    DeviceNotConnectedError,
    HardwareError,
    Workspace,
)
from tests.hardware.fakes import panda_py as fake_panda

_HOSTS = itertools.count()
WS = Workspace(low=(0.25, -0.2, 0.05), high=(0.6, 0.2, 0.5))


def make_robot(*, auto_track: bool = True, gripper_delay: float = 0.0, **overrides: object):
    host = f"fake-franka-{next(_HOSTS)}"
    arm = fake_panda._add_arm(host, auto_track=auto_track, gripper_delay=gripper_delay)
    config = FrankaConfig(hostname=host, workspace=WS, **overrides)
    return FrankaRobot(config, library=fake_panda), arm


def wait_until(predicate, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def assert_limits(config: FrankaConfig, current: np.ndarray, target: np.ndarray) -> None:
    lo, hi = np.asarray(config.workspace.low), np.asarray(config.workspace.high)
    assert np.all(target >= lo - 1e-12) and np.all(target <= hi + 1e-12), (target, lo, hi)
    assert np.all(np.abs(target - current) <= config.translation_error_clip + 1e-12)


# --------------------------------------------------------------------------- pure setpoint
unit = st.floats(-1.0, 1.0, allow_nan=False)
big = st.floats(-1e6, 1e6, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    frac=st.tuples(*[st.floats(0.0, 1.0)] * 3),
    yaw=st.floats(-math.pi / 2, math.pi / 2),
    action=st.tuples(big, big, big, big),
    clip=st.floats(0.001, 0.05),
)
def test_setpoint_inside_workspace_and_clip(frac, yaw, action, clip) -> None:
    config = FrankaConfig(hostname="x", workspace=WS, translation_error_clip=clip)
    lo, hi = np.asarray(WS.low), np.asarray(WS.high)
    current = lo + np.asarray(frac) * (hi - lo)
    orientation = quat_multiply(quat_from_yaw(yaw), np.asarray(config.reference_orientation))
    sp = compute_setpoint(current, orientation, np.clip(np.asarray(action), -1, 1), config)
    assert_limits(config, current, sp.position)
    assert quat_angle(orientation, sp.orientation) <= config.rotation_error_clip + 1e-9
    assert np.all(np.abs(sp.applied) <= 1.0)


def test_setpoint_outside_box_is_pulled_back_at_most_one_clip() -> None:
    config = FrankaConfig(hostname="x", workspace=WS)
    current = np.array([0.9, 0.0, 0.3])  # pushed 0.3 m outside the box by a person
    sp = compute_setpoint(current, np.asarray(config.reference_orientation), np.array([1.0, 0, 0, 0]), config)
    assert sp.position[0] == pytest.approx(0.9 - config.translation_error_clip)
    assert sp.workspace_clipped and sp.error_clipped


def test_yaw_follows_action_and_keeps_roll_pitch() -> None:
    config = FrankaConfig(hostname="x", workspace=WS)
    ref = np.asarray(config.reference_orientation)
    sp = compute_setpoint(np.array([0.4, 0, 0.3]), ref, np.array([0, 0, 0, 1.0]), config)
    assert quat_angle(ref, sp.orientation) == pytest.approx(config.max_rotation_step, abs=1e-9)
    assert sp.applied[3] == pytest.approx(1.0)


@pytest.mark.parametrize("field,value", [("hostname", ""), ("max_translation_step", 0.0),
                                         ("translation_error_clip", float("nan")),
                                         ("home_joints", (0.0,) * 6), ("home_speed_factor", 0.9)])
def test_config_rejects(field: str, value: object) -> None:
    kwargs = {"hostname": "h", field: value}
    with pytest.raises(ValueError, match=field):
        FrankaConfig(**kwargs)


# --------------------------------------------------------------------------- adapter on the fake
def test_connect_moves_nothing_and_lifecycle() -> None:
    robot, arm = make_robot()
    with pytest.raises(DeviceNotConnectedError):
        robot.read_state()
    start = arm.position.copy()
    robot.connect()
    try:
        with pytest.raises(DeviceAlreadyConnectedError):
            robot.connect()
        assert arm.home_calls == []
        assert np.allclose(arm.position, start)
        state = robot.read_state()
        assert state.arrays["proprio"].shape == (4,) and state.arrays["proprio"].dtype == np.float32
        assert state.ee_orientation is not None and state.ee_orientation[0] == pytest.approx(0.0)
    finally:
        robot.disconnect()
    robot.disconnect()  # idempotent
    assert not robot.is_connected


def test_unreachable_robot_raises_hardware_error() -> None:
    robot = FrankaRobot(FrankaConfig(hostname="nowhere"), library=fake_panda)
    with pytest.raises(HardwareError, match="cannot connect"):
        robot.connect()


@settings(max_examples=30, deadline=None)
@given(actions=st.lists(st.tuples(*[st.floats(-3, 3, allow_nan=False)] * 4, unit), min_size=1, max_size=40),
       track=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40))
def test_every_tick_respects_workspace_and_clip(actions, track) -> None:
    robot, arm = make_robot(auto_track=False)
    with robot:
        for i, action in enumerate(actions):
            applied = robot.send_action(np.asarray(action, dtype=np.float32))
            assert applied.shape == (5,) and np.all(np.abs(applied) <= 1.0)
            arm.track(track[i % len(track)])
        for measured, target, _ in arm.set_control_calls[1:]:  # [0] is the hold at start
            assert_limits(robot.config, measured, target)


def test_drive_into_wall_counts_clips() -> None:
    robot, arm = make_robot(auto_track=False)
    with robot:
        for _ in range(100):
            robot.send_action(np.array([1.0, 0, 0, 0, 0]))
            arm.track(1.0)
        assert arm.position[0] == pytest.approx(WS.high[0])
        assert robot.clip_counts["workspace"] > 0
        assert np.all(robot.send_action(np.array([np.nan, 0, 0, 0, 0])) == 0)
        assert robot.clip_counts["nonfinite"] == 1


def test_gripper_worker_never_blocks_send_action() -> None:
    robot, arm = make_robot(gripper_delay=0.3)
    arm.object_width = 0.03
    with robot:
        durations = []
        for i in range(30):
            g = 1.0 if (i // 3) % 2 == 0 else -1.0  # toggles every 3 ticks: requests pile up
            t0 = time.perf_counter()
            robot.send_action(np.array([0, 0, 0, 0, g]))
            durations.append(time.perf_counter() - t0)
        assert max(durations) < 0.05, max(durations)
        robot.send_action(np.array([0, 0, 0, 0, 1.0]))
        gripper = robot._gripper
        assert wait_until(lambda: gripper.width == pytest.approx(0.03), timeout=3.0)
        assert gripper.commands_done < 10  # superseded requests were dropped, not queued


def test_recovers_after_reflex_and_gives_up_after_budget() -> None:
    robot, arm = make_robot(max_recoveries=2)
    with robot:
        robot.send_action(np.zeros(5))
        arm.reflex("cartesian_reflex")
        assert np.all(robot.send_action(np.array([1.0, 0, 0, 0, 0])) == 0)  # held while recovering
        assert wait_until(lambda: robot.recovery_count == 1)
        assert arm.error is None and arm.controller is not None
        assert np.any(robot.send_action(np.array([1.0, 0, 0, 0, 0])) != 0)
        arm.reflex()
        robot.send_action(np.zeros(5))
        assert wait_until(lambda: robot.recovery_count == 2)
        arm.reflex()
        robot.send_action(np.zeros(5))
        with pytest.raises(DeviceFailedError):
            robot.send_action(np.zeros(5))
        arm.error = None
        robot.recover()  # an operator's explicit recover clears the failure
        assert np.any(robot.send_action(np.array([1.0, 0, 0, 0, 0])) != 0)


def test_stop_holds_and_interrupts_home() -> None:
    robot, arm = make_robot()
    with robot:
        robot.stop()
        assert arm.controller is None
        assert np.all(robot.send_action(np.array([1.0, 1, 1, 1, 1])) == 0)
        robot.resume()
        assert np.any(robot.send_action(np.array([1.0, 0, 0, 0, 0])) != 0)
        robot.home()
        assert arm.home_calls == [robot.config.home_speed_factor]
        assert arm.controller is not None
        result: list[BaseException] = []
        arm.position = np.array([0.5, 0.1, 0.2])

        def slow_home() -> None:
            try:
                robot.home()
            except HardwareError as e:
                result.append(e)

        t = threading.Thread(target=slow_home)
        t.start()
        assert wait_until(lambda: len(arm.home_calls) == 2)  # the joint motion has begun
        robot.stop()
        t.join(2.0)
        assert not t.is_alive() and result == []
        assert arm.controller is None


def test_context_manager_stops_on_crash() -> None:
    robot, arm = make_robot()
    with pytest.raises(KeyError):
        with robot:
            raise KeyError("boom")
    assert arm.controller is None and not robot.is_connected
