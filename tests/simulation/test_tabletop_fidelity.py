"""Tabletop twin vs EARL's own demos: replaying their actions reproduces their states."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from simulation.tasks import make
from simulation.tasks.tabletop import GOALS, INITIAL_STATE

REPO_ROOT = Path(__file__).resolve().parents[2]


def _demo_dir() -> Path:
    configured = os.environ.get("RESETFREE_EARL_DEMOS")
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "earl-demos"


def _load(direction: str) -> dict[str, np.ndarray]:
    path = _demo_dir() / f"tabletop_{direction}.npz"
    if not path.exists():
        pytest.skip(f"EARL demos not found at {path}")
    with np.load(path, allow_pickle=False) as demos:
        return {key: demos[key] for key in demos.files}


def _episodes(terminals: np.ndarray) -> list[tuple[int, int]]:
    ends = np.flatnonzero(terminals)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return list(zip(starts.tolist(), (ends + 1).tolist()))


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_replay_reproduces_recorded_states_and_rewards(direction: str) -> None:
    demos = _load(direction)
    env = make("tabletop")
    for start, end in _episodes(demos["terminals"]):
        env.set_state({"task_state": demos["observations"][start]})
        for t in range(start, end):
            obs, reward, *_ = env.step(demos["actions"][t])
            np.testing.assert_allclose(obs, demos["next_observations"][t], atol=1e-5,
                                       err_msg=f"{direction} step {t}")
            solved = reward > 0 if direction == "forward" else env.backward_success()
            assert solved == (demos["rewards"][t] > 0), f"{direction} step {t}"


def test_initial_state_and_goals_match_the_design() -> None:
    forward, backward = _load("forward"), _load("backward")
    env = make("tabletop")
    for start, _ in _episodes(forward["terminals"]):
        recorded = forward["observations"][start]
        np.testing.assert_allclose(recorded[:4], INITIAL_STATE, atol=1e-3)
        goal_index = int(np.argmin(np.linalg.norm(GOALS - recorded[8:10], axis=1)))
        obs, _ = env.reset(seed=0, options={"goal_index": goal_index})
        np.testing.assert_allclose(obs, recorded, atol=1e-3)
    recorded_goals = {tuple(np.round(g, 3)) for g in forward["observations"][:, 8:10]}
    assert recorded_goals == {tuple(g) for g in GOALS}
    # EARL's backward task: the goal vector is the initial state (mug back at (2.5, 0))
    np.testing.assert_allclose(np.unique(backward["observations"][:, 6:], axis=0),
                               [[0, 0, 2.5, 0, -1, -1]], atol=1e-3)


def test_backward_demos_start_where_goal_resets_start() -> None:
    backward = _load("backward")
    env = make("tabletop")
    for start, _ in _episodes(backward["terminals"]):
        recorded = backward["observations"][start]
        goal_index = int(np.argmin(np.linalg.norm(GOALS - recorded[2:4], axis=1)))
        env.set_state({"task_state": np.concatenate([recorded[:6], [0, 0], GOALS[goal_index], [-1, -1]])})
        assert env.forward_success()  # EARL's backward demos start in forward-solved states
