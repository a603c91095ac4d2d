"""Peg twin: EARL's numbers, gymnasium compliance, determinism, pixels, and the experts."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from simulation.experts import get_expert
from simulation.tasks import make, task_info
from simulation.tasks.peg import GOAL, HAND_INIT, PEG_HIGH, PEG_LOW, distance_to_box


def _run_expert(direction: str, episodes: int) -> float:
    env = make("peg")
    expert = get_expert("peg", direction, seed=0)
    init = "initial" if direction == "forward" else "goal"
    key = "success" if direction == "forward" else "backward_success"
    successes = 0
    for episode in range(episodes):
        env.reset(seed=2000 + episode, options={"init": init})
        expert.reset(env)
        for _ in range(env.info.eval_horizon):
            _, _, _, _, info = env.step(expert.act(env))
            if info[key]:
                break
        successes += int(info[key] and expert.done(env))
    return successes / episodes


def test_info_matches_earl() -> None:
    info = task_info("peg")
    assert (info.eval_horizon, info.earl_reset_interval, info.success_threshold) == (200, 100_000, 0.05)
    assert info.reset_interval == 10_000 and info.move_scale == 0.01  # the paper's schedule; 1 cm per unit
    assert info.cameras == ("clearview",) and info.state_dim == 14 and info.action_dim == 4


def test_scene_matches_design_numbers() -> None:
    env = make("peg")
    np.testing.assert_allclose(env.model.body("box").pos, [-0.3, 0.6, 0.0], atol=1e-9)
    np.testing.assert_allclose(GOAL[4:], [-0.27, 0.6, 0.13], atol=1e-9)
    for seed in range(20):
        obs, info = env.reset(seed=seed)
        peg = env.peg_pos()
        assert np.all(peg >= PEG_LOW - 1e-9) and np.all(peg <= PEG_HIGH + 1e-9)
        np.testing.assert_allclose(env.peg_head(), peg + [-0.1, 0.0, 0.0], atol=1e-6)
        np.testing.assert_allclose(obs[4:7], env.peg_head(), atol=1e-6)
        np.testing.assert_allclose(env.data.mocap_pos[0], HAND_INIT, atol=1e-9)
        assert not info["success"] and info["backward_success"]
    # The hole lines up with the goal: the goal head is 6.6 cm inside the hole's mouth.
    np.testing.assert_allclose(env.data.site("hole").xpos[1:], GOAL[5:], atol=1e-3)


def test_goal_distribution_is_inserted() -> None:
    env = make("peg")
    for seed in range(10):
        _, info = env.reset(seed=seed, options={"init": "goal"})
        assert np.abs(env.peg_head() - GOAL[4:]).max() <= 0.02 + 1e-9
        assert info["success"] and not info["backward_success"]


def test_distance_to_box() -> None:
    low, high = np.zeros(3), np.ones(3)
    assert distance_to_box(np.array([0.5, 0.5, 0.5]), low, high) == 0.0
    assert distance_to_box(np.array([2.0, 0.5, -1.0]), low, high) == pytest.approx(np.sqrt(2))


@pytest.mark.parametrize("obs", ["state", "pixels"])
def test_check_env(obs: str) -> None:
    check_env(make("peg", obs=obs, image_size=32), skip_render_check=True)


def test_determinism_under_seed() -> None:
    def rollout() -> np.ndarray:
        env = make("peg")
        env.reset(seed=11)
        rng = np.random.default_rng(2)
        return np.stack([env.step(rng.uniform(-1, 1, 4))[0] for _ in range(40)])
    assert np.array_equal(rollout(), rollout())


def test_pixel_observation() -> None:
    env = make("peg", obs="pixels", image_size=64)
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"clearview", "proprio"}
    assert obs["clearview"].shape == (3, 64, 64) and obs["clearview"].dtype == np.uint8
    assert obs["clearview"].std() > 5
    np.testing.assert_allclose(obs["proprio"][:3], env.hand_pos(), atol=1e-6)


def test_gripper_closes_with_positive_action() -> None:
    env = make("peg")
    obs, _ = env.reset(seed=0)
    assert obs[3] > 0.95
    for _ in range(10):
        obs, *_ = env.step(np.array([0, 0, 0, 1], np.float32))
    assert obs[3] < 0.7


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_expert_succeeds(direction: str) -> None:
    assert _run_expert(direction, episodes=8) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_expert_succeeds_in_95_of_100(direction: str) -> None:
    assert _run_expert(direction, episodes=100) >= 0.95
