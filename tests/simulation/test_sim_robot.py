"""SimRobot / SimCamera through the hardware.interfaces contracts, on the toy task."""

from __future__ import annotations

import time

import numpy as np
import pytest

from hardware.interfaces import (CameraStatus, DeviceAlreadyConnectedError, DeviceNotConnectedError, Robot,
                                 StaleFrameError, Workspace)
from simulation.sim_robot import DEFAULT_WORKSPACE, SimRobot, task_workspace
from simulation.tasks import task_class
from tests.simulation.test_nonepisodic import GOAL, START, install_toy

RIGHT = np.array([1.0, 0.0], np.float32)


@pytest.fixture(autouse=True)
def _toy(monkeypatch: pytest.MonkeyPatch) -> None:
    install_toy(monkeypatch)


def test_specs_before_connect_and_errors_when_not_connected() -> None:
    robot = SimRobot("toy", obs="pixels", pacing="lockstep", image_size=32)
    assert isinstance(robot, Robot) and not robot.is_connected
    assert robot.action_spec.shape == (2,) and robot.action_spec.low == -1.0
    assert set(robot.state_spec) == {"proprio"} and robot.state_spec["proprio"].shape == (3,)
    assert SimRobot("toy").state_spec["state"].shape == (4,)
    assert robot.workspace == Workspace(low=(-1.0, -1.0, 0.0), high=(1.0, 1.0, 0.5))
    assert set(robot.cameras) == {"top", "side"}
    assert robot.cameras["top"].image_spec.shape == (3, 32, 32)
    with pytest.raises(DeviceNotConnectedError):
        robot.read_state()
    with pytest.raises(DeviceNotConnectedError):
        robot.send_action(RIGHT)
    with pytest.raises(DeviceNotConnectedError):
        robot.cameras["top"].connect()
    robot.disconnect()  # idempotent on a closed robot
    with pytest.raises(ValueError, match="pacing"):
        SimRobot("toy", pacing="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="task"):
        SimRobot("nope")


def test_lockstep_loop_through_the_interfaces() -> None:
    with SimRobot("toy", obs="pixels", pacing="lockstep", seed=0, image_size=32) as robot:
        with pytest.raises(DeviceAlreadyConnectedError):
            robot.connect()
        with robot.cameras["top"] as top:
            assert top.status is CameraStatus.STREAMING
            state = robot.read_state()
            assert abs(state.ee_position[0] - START[0]) <= 0.05 + 1e-6 and state.ee_position.shape == (3,)
            first = top.read_latest(max_age=1.0)
            assert first.image.shape == (3, 32, 32) and first.image.dtype == np.uint8
            for _ in range(25):
                applied = robot.send_action(RIGHT)
                assert np.array_equal(applied, RIGHT)
            frame = top.read_latest(max_age=1.0)
            assert frame.index == first.index + 25 and not np.array_equal(frame.image, first.image)
            now = robot.read_state()
            assert now.ee_position[0] == pytest.approx(min(state.ee_position[0] + 25 * 0.05, 1.0), abs=1e-5)
            assert np.allclose(now.arrays["proprio"][:2], now.ee_position[:2])
            assert robot.steps == 25
        assert top.status is CameraStatus.CLOSED
        with pytest.raises(DeviceNotConnectedError):
            top.read_latest(1.0)
    assert not robot.is_connected
    with pytest.raises(DeviceNotConnectedError):
        robot.read_state()


def test_actions_are_clipped_and_sanitised() -> None:
    with SimRobot("toy", pacing="lockstep", seed=0) as robot:
        applied = robot.send_action(np.array([3.0, np.nan], np.float32))
        assert applied.tolist() == [1.0, 0.0] and robot.clipped_actions == 1
        with pytest.raises(ValueError, match="shape"):
            robot.send_action(np.zeros(3))


def test_success_reset_and_home() -> None:
    with SimRobot("toy", pacing="lockstep", seed=1) as robot:
        assert not robot.last_success
        while not robot.last_success:
            state = robot.read_state()
            robot.send_action(np.clip((GOAL - state.arrays["state"][:2]) / 0.05, -1, 1).astype(np.float32))
            assert robot.steps < 40
        robot.reset_environment()
        assert not robot.last_success and abs(robot.read_state().arrays["state"][0] - START[0]) <= 0.05 + 1e-6
        robot.reset_environment({"init": "goal"})
        assert robot.last_success
        robot.home()
        assert not robot.last_success and robot.resets == 3


def test_stale_frames_detected_in_lockstep() -> None:
    with SimRobot("toy", obs="pixels", pacing="lockstep", image_size=16) as robot:
        camera = robot.cameras["side"]
        camera.connect()
        robot.send_action(RIGHT)
        camera.read_latest(max_age=0.5)
        time.sleep(0.06)
        with pytest.raises(StaleFrameError, match="old"):
            camera.read_latest(max_age=0.05)
        robot.send_action(RIGHT)  # a step renders a fresh frame
        assert camera.read_latest(max_age=0.05).index == 2


def test_realtime_worker_steps_at_the_control_rate() -> None:
    with SimRobot("toy", obs="pixels", pacing="realtime", hz=50, image_size=16, seed=0) as robot:
        camera = robot.cameras["top"]
        camera.connect()
        start_x = robot.read_state().ee_position[0]
        first = camera.read(timeout=1.0)
        t0 = time.monotonic()
        started = time.monotonic()
        for _ in range(10):
            robot.send_action(RIGHT)  # returns at once
            assert time.monotonic() - started < 0.05
            camera.read(timeout=1.0)  # the next tick's frame
            started = time.monotonic()
        elapsed = time.monotonic() - t0
        # 10 ticks at 50 Hz: about 0.2 s (loose bounds: two shared cores)
        assert 0.12 < elapsed < 2.0
        moved = robot.read_state().ee_position[0] - start_x
        assert 0.05 * 8 - 1e-6 <= moved <= 0.05 * 10 + 1e-6
        # with no new actions the twin holds still but frames keep streaming
        x = robot.read_state().ee_position[0]
        later = camera.read(timeout=1.0)
        later = camera.read(timeout=1.0)
        assert later.index > first.index and robot.read_state().ee_position[0] == x
        assert camera.read_latest(max_age=0.1).timestamp >= later.timestamp
        with pytest.raises(TimeoutError):
            camera.read(timeout=0.0)


def test_realtime_newest_action_wins() -> None:
    with SimRobot("toy", pacing="realtime", hz=5, seed=0) as robot:
        x = robot.read_state().ee_position[0]
        robot.send_action(-RIGHT)
        robot.send_action(RIGHT)  # replaces the first before the next tick
        deadline = time.monotonic() + 2.0
        while robot.steps == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert robot.steps == 1 and robot.dropped_actions == 1
        assert robot.read_state().ee_position[0] == pytest.approx(x + 0.05, abs=1e-6)
        robot.send_action(RIGHT)
        robot.stop()  # drops it
        time.sleep(0.3)
        assert robot.steps == 1


def test_workspace_lookup() -> None:
    assert task_workspace(task_class("toy")).high == (1.0, 1.0, 0.5)
    assert task_workspace(object) == DEFAULT_WORKSPACE  # type: ignore[arg-type]


def test_tabletop_goal_camera_if_landed() -> None:
    pytest.importorskip("simulation.tasks.tabletop")
    robot = SimRobot("tabletop", obs="pixels", pacing="lockstep", seed=0)
    assert set(robot.cameras) == {"top", "goal"}
    with robot:
        robot.send_action(np.zeros(3, np.float32))
        goal = robot.cameras["goal"]
        goal.connect()
        assert goal.read_latest(max_age=1.0).image.shape == (3, 84, 84)


def test_draw_goal_changes_only_the_goal_of_a_multi_goal_task() -> None:
    from runtime.robot_kinds import ROBOTS

    with SimRobot("tabletop", pacing="lockstep", seed=2) as robot:
        before = robot.read_state().arrays["state"].copy()
        goals = set()
        for _ in range(30):
            robot.draw_goal()
            state = robot.read_state().arrays["state"]
            np.testing.assert_array_equal(state[:6], before[:6])  # gripper, mug, grasp: unmoved
            goals.add(tuple(state[8:10]))
        assert len(goals) == 4 and robot.steps == 0 and robot.resets == 0
        assert ROBOTS.facts("sim:tabletop", robot).goal_per_turn
    with SimRobot("door", pacing="lockstep", seed=2) as robot:
        assert not ROBOTS.facts("sim:door", robot).goal_per_turn


def test_scene_lost_follows_the_tasks_operator_rule() -> None:
    """``scene_lost`` reports the task's rule at the newest step (cube: out of the hand's reach);
    a task without a rule is never lost."""
    with SimRobot("cube", pacing="lockstep", seed=0) as robot:
        assert not robot.scene_lost
        robot.reset_environment({"init": "goal"})  # held up in the grasp
        assert robot.scene_lost
        robot.home()
        assert not robot.scene_lost
    with SimRobot("door", pacing="lockstep", seed=0) as robot:
        assert not robot.scene_lost
