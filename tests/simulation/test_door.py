"""Door twin: EARL's numbers, gymnasium compliance, determinism, pixels, and the experts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from simulation.experts import get_expert
from simulation.tasks import make, task_info
from simulation.tasks.door import GOAL, HAND_INIT, INITIAL_HANDLE, DoorEnv


def _run_expert(direction: str, episodes: int, noise: float = 0.0) -> float:
    env = make("door")
    expert = get_expert("door", direction, noise=noise, seed=0)
    init = "initial" if direction == "forward" else "goal"
    key = "success" if direction == "forward" else "backward_success"
    successes = 0
    for episode in range(episodes):
        env.reset(seed=1000 + episode, options={"init": init})
        expert.reset(env)
        for _ in range(env.info.eval_horizon):
            _, _, _, _, info = env.step(expert.act(env))
            if info[key]:
                break
        successes += int(info[key] and expert.done(env))
    return successes / episodes


def test_info_matches_earl() -> None:
    info = task_info("door")
    assert (info.eval_horizon, info.earl_reset_interval, info.success_threshold) == (300, 200_000, 0.02)
    assert info.reset_interval == 10_000 and info.move_scale == 0.01  # the paper's schedule; 1 cm per unit
    assert info.cameras == ("doorview",) and info.state_dim == 14 and info.action_dim == 4


def test_scene_matches_design_numbers() -> None:
    env = make("door")
    np.testing.assert_allclose(env.model.body("door").pos, [0.1, 0.95, 0.1], atol=1e-9)
    np.testing.assert_allclose(env.model.jnt_range[env.model.joint("doorjoint").id], [-1.4, 0.0])
    for name, pos, fovy in (("doorview", [0.8, 0.3, 0.8], 45.0), ("clearview", [1.2, 0.3, 0.8], 60.0)):
        np.testing.assert_allclose(env.model.camera(name).pos, pos)
        assert env.model.camera(name).fovy[0] == pytest.approx(fovy)
    # A light door: density 50 instead of 1000 on its collision geoms.
    assert env.model.body("door_link").mass[0] < 0.2
    env.reset(seed=0, options={"door_angle": 0.0})
    np.testing.assert_allclose(env.handle_pos(), [0.2907, 0.7429, 0.1000], atol=1e-3)
    np.testing.assert_allclose(env.handle_pos(), GOAL[4:], atol=1e-6)
    env.reset(seed=0, options={"door_angle": -math.pi / 3})
    np.testing.assert_allclose(env.handle_pos(), INITIAL_HANDLE, atol=1e-6)
    np.testing.assert_allclose(env.data.mocap_pos[0], HAND_INIT, atol=1e-9)


def test_start_distributions() -> None:
    env = make("door")
    def angle_after_reset(seed: int, init: str) -> float:
        env.reset(seed=seed, options={"init": init})
        return env.door_angle()

    initial = [angle_after_reset(s, "initial") for s in range(20)]
    goal = [angle_after_reset(s, "goal") for s in range(20)]
    assert all(-math.pi / 3 <= a <= -math.pi / 3 + math.pi / 20 + 1e-9 for a in initial)
    assert all(-math.pi / 20 <= a <= 0.0 for a in goal)
    obs, info = env.reset(seed=3)
    assert obs.shape == (14,) and obs.dtype == np.float32
    np.testing.assert_allclose(obs[7:], GOAL, atol=1e-6)
    assert not info["success"] and "backward_success" in info
    with pytest.raises(ValueError, match="init"):
        env.reset(options={"init": "nowhere"})


def test_angle_for_handle_inverts_the_hinge() -> None:
    env = make("door")
    for angle in (-1.2, -0.7, -0.1):
        env.reset(seed=0, options={"door_angle": angle})
        assert env.angle_for_handle(env.handle_pos()) == pytest.approx(angle, abs=1e-9)


@pytest.mark.parametrize("obs", ["state", "pixels"])
def test_check_env(obs: str) -> None:
    check_env(make("door", obs=obs, image_size=32), skip_render_check=True)


def test_determinism_under_seed() -> None:
    def rollout() -> np.ndarray:
        env = make("door")
        env.reset(seed=7)
        rng = np.random.default_rng(1)
        return np.stack([env.step(rng.uniform(-1, 1, 4))[0] for _ in range(40)])
    assert np.array_equal(rollout(), rollout())


def test_pixel_observation() -> None:
    env = make("door", obs="pixels")
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"doorview", "proprio"}
    assert obs["doorview"].shape == (3, 84, 84) and obs["doorview"].dtype == np.uint8
    assert obs["doorview"].std() > 5  # an actual scene, not a blank frame
    assert obs["proprio"].shape == (4,) and obs["proprio"].dtype == np.float32
    obs2, *_ = env.step(np.array([1, 0, 0, 0], np.float32))
    assert not np.array_equal(obs["doorview"], obs2["doorview"])  # the hand moved


def test_hand_moves_one_centimetre_per_step_and_is_clipped() -> None:
    env = DoorEnv()
    env.reset(seed=0)
    start = env.data.mocap_pos[0].copy()
    env.step(np.array([1.0, 0.5, 0.0, 0.0], np.float32))
    np.testing.assert_allclose(env.data.mocap_pos[0] - start, [0.01, 0.005, 0.0], atol=1e-9)
    for _ in range(60):
        env.step(np.array([0.0, -1.0, -1.0, 0.0], np.float32))
    np.testing.assert_allclose(env.data.mocap_pos[0, 1:], [0.4, 0.05], atol=1e-9)


def test_backward_success_at_the_initial_configuration() -> None:
    env = make("door")
    _, info = env.reset(seed=0, options={"door_angle": -math.pi / 3})
    assert info["backward_success"] and not info["success"]


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_expert_succeeds(direction: str) -> None:
    assert _run_expert(direction, episodes=6) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_expert_succeeds_in_95_of_100(direction: str) -> None:
    assert _run_expert(direction, episodes=100) >= 0.95
