"""Cube-grasp twin: start sets, stable physics, grasp-and-lift success, experts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from simulation.experts import get_expert
from simulation.tasks import make
from simulation.tasks.cube import ID_BOX, ID_YAW, OOD_BOX, REST_Z, CubeGraspEnv


@pytest.fixture
def env() -> CubeGraspEnv:
    environment = make("cube")
    yield environment
    environment.close()


def _folded_yaw(yaw: float) -> float:
    """The cube's yaw modulo its 90° symmetry, in [-45°, 45°)."""
    return (yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4


def test_id_starts(env: CubeGraspEnv) -> None:
    for seed in range(30):
        obs, info = env.reset(seed=seed)
        assert obs.shape == (12,) and obs.dtype == np.float32 and not info["success"]
        cube = env.cube_pos()
        assert np.all(np.abs(cube[:2]) <= ID_BOX) and cube[2] == pytest.approx(REST_Z)
        assert abs(_folded_yaw(env.cube_yaw())) <= ID_YAW + 1e-9
        assert env.gripper_width() == pytest.approx(0.08)


def test_ood_starts_lie_outside_the_id_range(env: CubeGraspEnv) -> None:
    for seed in range(30):
        env.reset(seed=seed, options={"split": "ood"})
        cube = env.cube_pos()
        assert OOD_BOX[0] < np.max(np.abs(cube[:2])) <= OOD_BOX[1]
        assert ID_YAW < abs(_folded_yaw(env.cube_yaw())) <= np.pi / 4 + 1e-9
    with pytest.raises(ValueError, match="split"):
        env.reset(options={"split": "far"})
    with pytest.raises(ValueError, match="init"):
        env.reset(options={"init": "lifted"})


def test_goal_start_holds_the_cube_lifted(env: CubeGraspEnv) -> None:
    for seed in range(10):
        _, info = env.reset(seed=seed, options={"init": "goal"})
        assert info["success"] and env.grasped()
        lifted = env.cube_pos()[2]
        for _ in range(10):  # 1 s holding still: the grip does not slip
            _, reward, *_ = env.step(np.array([0, 0, 0, 0, 1.0]))
        assert reward == 1.0 and env.cube_pos()[2] == pytest.approx(lifted, abs=1e-3)


def test_the_grip_carries_the_cube_at_full_speed(env: CubeGraspEnv) -> None:
    env.reset(seed=0, options={"init": "goal"})
    for direction in ([1, 0, 0], [0, -1, 0], [0, 0, 1], [-1, 1, -0.3]):
        offset = env.cube_pos() - env.ee_pos()
        for _ in range(5):
            env.step(np.array([*direction, 1.0, 1.0]))
        assert env.grasped()
        np.testing.assert_allclose(env.cube_pos() - env.ee_pos(), offset, atol=2e-3)


def test_opening_drops_the_cube_and_success_needs_the_grasp(env: CubeGraspEnv) -> None:
    env.reset(seed=0, options={"init": "goal"})
    _, reward, *_ = env.step(np.array([0, 0, 0, 0, -1.0]))
    assert reward == 0.0
    for _ in range(10):
        env.step(np.array([0, 0, 0, 0, -1.0]))
    assert env.cube_pos()[2] == pytest.approx(REST_Z, abs=2e-3)


def test_physics_stays_stable_under_random_actions(env: CubeGraspEnv) -> None:
    env.action_space.seed(0)
    for seed in range(3):
        env.reset(seed=seed)
        for _ in range(100):
            obs, *_ = env.step(env.action_space.sample())
            assert np.all(np.isfinite(obs))
            cube = env.cube_pos()
            # never through the table, never flung away
            assert cube[2] > 0.015 and np.all(np.abs(cube[:2]) < 0.5)
            assert np.abs(env.data.qvel).max() < 20.0


def test_ee_stays_in_the_workspace(env: CubeGraspEnv) -> None:
    env.reset(seed=0)
    for _ in range(40):
        env.step(np.array([1.0, -1.0, -1.0, 1.0, -1.0]))
    np.testing.assert_allclose(env.ee_target(), [0.15, -0.15, 0.022])
    assert env.ee_yaw() == pytest.approx(np.pi / 2)
    assert env.ee_pos()[2] > 0.015


def test_state_roundtrip_continues_identically(env: CubeGraspEnv) -> None:
    env.reset(seed=4)
    for _ in range(5):
        env.step(np.array([0.2, 0.1, -1.0, 0.5, 1.0]))
    saved = env.get_state()
    actions = [np.array([0.0, 0.3, -0.5, 0.0, 1.0])] * 5
    expected = [env.step(a)[0] for a in actions]
    env.set_state(saved)
    np.testing.assert_array_equal(expected, [env.step(a)[0] for a in actions])


def test_determinism_under_a_seed() -> None:
    def rollout() -> np.ndarray:
        e = make("cube")
        e.reset(seed=11, options={"split": "ood"})
        e.action_space.seed(5)
        return np.stack([e.step(e.action_space.sample())[0] for _ in range(30)])
    np.testing.assert_array_equal(rollout(), rollout())


@pytest.mark.parametrize("obs", ["state", "pixels"])
def test_check_env(obs: str) -> None:
    e = make("cube", obs=obs)
    check_env(e, skip_render_check=True)
    e.close()


def test_pixel_observation() -> None:
    e = make("cube", obs="pixels")
    obs, _ = e.reset(seed=0)
    assert set(obs) == {"wrist", "third_person", "proprio"}
    for camera in ("wrist", "third_person"):
        assert obs[camera].shape == (3, 84, 84) and obs[camera].dtype == np.uint8
        assert obs[camera].std() > 5  # a scene, not a blank frame
    np.testing.assert_allclose(obs["proprio"], [0, 0, 0.15, 0.08], atol=1e-3)
    moved, *_ = e.step(np.array([0, 0, -1.0, 0, -1.0]))
    assert not np.array_equal(moved["wrist"], obs["wrist"])  # the wrist camera rides the hand
    e.close()


def _expert_successes(direction: str, episodes: int, noise: float, split: str = "id") -> int:
    env = make("cube")
    expert = get_expert("cube", direction, noise=noise, seed=0)
    options = {"split": split} if direction == "forward" else {"init": "goal"}
    successes = 0
    for episode in range(episodes):
        env.reset(seed=episode, options=options)
        expert.reset(env)
        for _ in range(env.info.eval_horizon):
            env.step(expert.act(env))
            if expert.done(env):
                successes += 1
                break
    return successes


@pytest.mark.parametrize(("direction", "split"), [("forward", "id"), ("forward", "ood"), ("backward", "id")])
def test_experts_succeed(direction: str, split: str) -> None:
    assert _expert_successes(direction, episodes=10, noise=0.1, split=split) >= 9


@pytest.mark.slow
@pytest.mark.parametrize(("direction", "split"), [("forward", "id"), ("forward", "ood"), ("backward", "id")])
def test_experts_succeed_in_95_of_100(direction: str, split: str) -> None:
    assert _expert_successes(direction, episodes=100, noise=0.1, split=split) >= 95


def test_scene_lost_is_the_cube_out_of_the_hands_reach(env: CubeGraspEnv) -> None:
    """The operator rule: lost when the cube is held, off the table, or past the workspace box."""
    from simulation.tasks.cube import in_reach

    env.reset(seed=0)
    assert not env.scene_lost() and in_reach(env.cube_pos())
    env.reset(seed=0, options={"init": "goal"})  # held up in the grasp
    assert env.scene_lost()
    for _ in range(12):  # let go: it falls back onto the table, inside the box
        env.step(np.array([0, 0, 0, 0, -1.0]))
    assert not env.scene_lost()
    state = env.get_state()
    state["qpos"][env._cube_qpos:env._cube_qpos + 2] = (0.25, 0.0)  # pushed past the hand's reach
    env.set_state(state)
    assert env.scene_lost() and env.info.operator_rule is not None


def test_only_a_task_with_an_operator_rule_can_say_its_scene_is_lost() -> None:
    from simulation.tasks.base import SimulationError, TaskEnv

    door = make("door")
    try:
        assert door.info.operator_rule is None
        with pytest.raises(SimulationError, match="declares no rule"):
            door.scene_lost()
    finally:
        door.close()
    with pytest.raises(TypeError, match="must define scene_lost"):
        type("Ruled", (TaskEnv,), {"info": dataclasses.replace(CubeGraspEnv.info, name="ruled")})
