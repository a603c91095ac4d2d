"""Tabletop twin: EARL's state layout, kinematics, attach rule, goal images, experts."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from simulation.experts import get_expert
from simulation.tasks import make
from simulation.tasks.tabletop import GOALS, TabletopEnv


@pytest.fixture
def env() -> TabletopEnv:
    environment = make("tabletop")
    yield environment
    environment.close()


def test_initial_state_follows_earls_layout(env: TabletopEnv) -> None:
    for k, goal in enumerate(GOALS):
        obs, info = env.reset(seed=0, options={"goal_index": k})
        expected = [0, 0, 2.5, 0, -1, -1, 0, 0, goal[0], goal[1], -1, -1]
        assert obs.dtype == np.float32 and obs.shape == (12,)
        np.testing.assert_array_equal(obs, np.array(expected, dtype=np.float32))
        assert info["success"] is False


def test_goals_are_drawn_per_reset(env: TabletopEnv) -> None:
    goals = {tuple(env.reset(seed=seed)[0][8:10]) for seed in range(40)}
    assert goals == {tuple(g) for g in GOALS.astype(np.float32)}


def test_move_scale_and_clip(env: TabletopEnv) -> None:
    env.reset(seed=0)
    obs, *_ = env.step(np.array([1.0, -0.5, -1.0]))
    np.testing.assert_allclose(obs[:2], [0.2, -0.1], atol=1e-7)
    for _ in range(30):
        obs, *_ = env.step(np.array([1.0, -1.0, -1.0]))
    np.testing.assert_allclose(obs[:2], [2.8, -2.8])
    obs, *_ = env.step(np.array([5.0, 0.0, -1.0]))  # clipped to [-1, 1] before scaling
    np.testing.assert_allclose(obs[:2], [2.8, -2.8])


def test_grasp_attaches_only_within_radius_before_the_move(env: TabletopEnv) -> None:
    env.set_state({"task_state": np.array([2.05, 0, 2.5, 0, -1, -1, 0, 0, 0, 2, -1, -1])})
    obs, *_ = env.step(np.array([1.0, 0.0, 1.0]))  # 0.45 away before the move: no attach
    assert tuple(obs[4:6]) == (-1, -1)
    np.testing.assert_allclose(obs[2:4], [2.5, 0])
    obs, *_ = env.step(np.array([0.0, 1.0, 1.0]))  # 0.25 away now: attach, mug follows
    assert tuple(obs[4:6]) == (0, 0)
    np.testing.assert_allclose(obs[2:4], [2.5, 0.2], atol=1e-6)
    obs, *_ = env.step(np.array([-1.0, 0.0, -0.01]))  # release: the mug stays
    assert tuple(obs[4:6]) == (-1, -1)
    np.testing.assert_allclose(obs[2:4], [2.5, 0.2], atol=1e-6)


def test_success_criteria() -> None:
    state = np.array([1.0, 1.0, 0.05, 2.0, -1, -1, 0, 0, 0, 2, -1, -1])
    earl, mug = make("tabletop"), make("tabletop", success="mug")
    for e in (earl, mug):
        e.set_state({"task_state": state})
    assert not earl.forward_success()  # EARL: the gripper must be back at the origin too
    assert mug.forward_success()
    earl.set_state({"task_state": np.array([0.1, -0.1, 0.05, 2.05, -1, -1, 0, 0, 0, 2, -1, -1])})
    assert earl.forward_success()
    with pytest.raises(ValueError, match="success"):
        make("tabletop", success="near")


def test_goal_start_is_solved_forward_and_not_backward(env: TabletopEnv) -> None:
    for seed in range(20):
        obs, info = env.reset(seed=seed, options={"init": "goal"})
        assert info["success"] and not env.backward_success()
        assert tuple(obs[4:6]) == (-1, -1)


def test_state_roundtrip_and_invalid_options(env: TabletopEnv) -> None:
    env.reset(seed=1)
    env.step(np.array([0.3, 0.2, 1.0]))
    saved = env.get_state()
    expected, *_ = env.step(np.array([0.5, 0.5, 1.0]))
    env.set_state(saved)
    again, *_ = env.step(np.array([0.5, 0.5, 1.0]))
    np.testing.assert_array_equal(expected, again)
    with pytest.raises(ValueError, match="init"):
        env.reset(options={"init": "middle"})
    with pytest.raises(ValueError, match="goal_index"):
        env.reset(options={"goal_index": 4})
    with pytest.raises(ValueError, match="task_state"):
        env.set_state({"task_state": np.zeros(5)})


def test_determinism_under_a_seed() -> None:
    def rollout() -> np.ndarray:
        e = make("tabletop")
        e.reset(seed=7)
        e.action_space.seed(3)
        return np.stack([e.step(e.action_space.sample())[0] for _ in range(100)])
    np.testing.assert_array_equal(rollout(), rollout())


@pytest.mark.parametrize("obs", ["state", "pixels"])
def test_check_env(obs: str) -> None:
    e = make("tabletop", obs=obs)
    check_env(e, skip_render_check=True)
    e.close()


def test_pixels_are_goal_conditioned() -> None:
    e = make("tabletop", obs="pixels")
    obs, _ = e.reset(seed=0, options={"goal_index": 2})
    assert set(obs) == {"top", "goal", "proprio"}
    assert obs["top"].shape == obs["goal"].shape == (3, 84, 84) and obs["top"].dtype == np.uint8
    np.testing.assert_array_equal(obs["proprio"], [0, 0, 0])
    # the goal image is the scene in the goal state, and it is cached per goal
    goal_image = obs["goal"]
    e.set_state({"task_state": np.array([0, 0, 0, 2, -1, -1, 0, 0, 0, 2, -1, -1])})
    np.testing.assert_array_equal(e.render_camera("top"), goal_image)
    assert e.goal_image() is e.goal_image()  # cached, rendered once per goal
    np.testing.assert_array_equal(e.goal_image(), goal_image)
    assert not np.array_equal(obs["top"], goal_image)
    other, _ = e.reset(seed=0, options={"goal_index": 0})
    assert not np.array_equal(other["goal"], goal_image)
    stepped, *_ = e.step(np.array([0.0, 0.0, 1.0]))
    assert stepped["proprio"][2] == 0.0  # the mug is 2.5 away: nothing to hold
    e.close()


def _expert_successes(direction: str, episodes: int, noise: float) -> int:
    env = make("tabletop")
    expert = get_expert("tabletop", direction, noise=noise, seed=0)
    init = "initial" if direction == "forward" else "goal"
    successes = 0
    for episode in range(episodes):
        env.reset(seed=episode, options={"init": init})
        expert.reset(env)
        for _ in range(env.info.eval_horizon):
            env.step(expert.act(env))
            if expert.done(env):
                successes += 1
                break
    return successes


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_experts_succeed(direction: str) -> None:
    assert _expert_successes(direction, episodes=20, noise=0.1) >= 19


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_experts_succeed_in_95_of_100(direction: str) -> None:
    assert _expert_successes(direction, episodes=100, noise=0.1) >= 95
