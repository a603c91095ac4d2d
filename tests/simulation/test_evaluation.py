"""Deployed-policy evaluation on the toy task (and tabletop when it has landed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simulation.evaluation import evaluate
from tests.simulation.test_nonepisodic import goal_policy, install_toy


@pytest.fixture(autouse=True)
def _toy(monkeypatch: pytest.MonkeyPatch) -> None:
    install_toy(monkeypatch)


def test_goal_policy_succeeds_everywhere() -> None:
    result = evaluate(goal_policy, "toy", episodes=3, seed=5)
    assert result.success_rate == 1.0 and result.successes == [True] * 3
    assert result.lengths == [40] * 3  # full eval horizon from TaskInfo
    # 1.0 apart at 0.05 per step, success within 0.1: first success at step 17 or 18 (+- start noise)
    assert all(15 <= s <= 21 for s in result.first_success)
    # once there the policy stays: sparse return counts the remaining steps
    assert all(r == 40 - s + 1 for r, s in zip(result.returns, result.first_success))
    assert result.wall_s > 0


def test_idle_policy_fails_and_stop_on_success() -> None:
    idle = evaluate(lambda o: np.zeros(2, np.float32), "toy", episodes=2, horizon=5)
    assert idle.success_rate == 0.0 and idle.first_success == [None, None] and idle.lengths == [5, 5]
    quick = evaluate(goal_policy, "toy", episodes=1, stop_on_success=True)
    assert quick.lengths == quick.first_success and quick.returns == [1.0]


def test_success_at_any_step_counts() -> None:
    # pass through the goal and keep going: success at some step, not at the end
    result = evaluate(lambda o: np.array([1.0, 0.0], np.float32), "toy", episodes=1, horizon=30)
    assert result.successes == [True] and result.returns[0] < 30


def test_same_seed_same_result_and_pixels_mode() -> None:
    noisy = lambda o: np.clip(goal_policy(o) + np.sin(o[0] * 50), -1, 1)  # noqa: E731 — deterministic in obs
    a = evaluate(noisy, "toy", episodes=2, seed=3)
    b = evaluate(noisy, "toy", episodes=2, seed=3)
    assert a.returns == b.returns and a.first_success == b.first_success
    seen = []
    result = evaluate(lambda o: seen.append(o) or np.zeros(2, np.float32), "toy", episodes=1, horizon=2,
                      obs="pixels", env_kwargs={"image_size": 32})
    assert result.successes == [False]
    assert seen[0]["top"].shape == (3, 32, 32) and seen[0]["top"].dtype == np.uint8


def test_video_written(tmp_path: Path) -> None:
    result = evaluate(goal_policy, "toy", episodes=3, horizon=4, video_path=tmp_path / "eval.mp4",
                      video_episodes=2, video_size=32)
    assert result.video_path is not None
    path = Path(result.video_path)
    assert path.exists() and path.stat().st_size > 0
    import imageio.v2 as imageio
    frames = imageio.mimread(path)
    assert len(frames) == 2 * (4 + 1)  # two episodes, reset frame + 4 steps each


def test_errors() -> None:
    with pytest.raises(ValueError, match="episodes"):
        evaluate(goal_policy, "toy", episodes=0)
    with pytest.raises(ValueError, match="task"):
        evaluate(goal_policy, "nope")


def test_tabletop_idle_if_landed() -> None:
    pytest.importorskip("simulation.tasks.tabletop")
    result = evaluate(lambda o: np.zeros(3, np.float32), "tabletop", episodes=1, horizon=10)
    assert result.successes == [False] and result.lengths == [10]
