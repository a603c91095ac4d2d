"""Deployed-policy evaluation on the toy task (and tabletop when it has landed)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from simulation import evaluation
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


def test_video_written_as_h264_mp4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("imageio_ffmpeg")
    import imageio.v2 as imageio

    monkeypatch.setattr(evaluation, "_announced", set())
    caplog.set_level(logging.INFO, logger="simulation.evaluation")
    # 48 px: not a multiple of 16, so this also checks the frames are not rescaled
    result = evaluate(goal_policy, "toy", episodes=3, horizon=4, video_path=tmp_path / "eval.mp4",
                      video_episodes=2, video_size=48)
    assert result.video_path is not None
    path = Path(result.video_path)
    assert path == tmp_path / "eval.mp4" and path.stat().st_size > 0
    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        assert reader.get_meta_data()["codec"] == "h264"
        frames = list(reader.iter_data())
    finally:
        reader.close()
    assert len(frames) == 2 * (4 + 1)  # two episodes, reset frame + 4 steps each
    assert all(f.shape == (48, 48, 3) and f.dtype == np.uint8 for f in frames)
    evaluate(goal_policy, "toy", episodes=1, horizon=2, video_path=tmp_path / "again.mp4", video_size=32)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evaluation videos")]
    assert said == ["evaluation videos: MP4 (H.264, imageio-ffmpeg)"]  # once per process, at INFO
    assert all(r.levelno == logging.INFO for r in caplog.records if r.getMessage() in said)


@pytest.mark.parametrize("how", ["not installed", "encoder fails"])
def test_video_falls_back_to_gif(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 caplog: pytest.LogCaptureFixture, how: str) -> None:
    import imageio.v2 as imageio

    if how == "not installed":
        monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import raises ImportError
    else:
        def broken_writer(path: Path, *args: object, **kwargs: object) -> None:
            Path(path).write_bytes(b"partial")  # what a dying encoder may leave behind
            raise RuntimeError("ffmpeg: encoder libx264 not found")

        monkeypatch.setattr(imageio, "get_writer", broken_writer)
    monkeypatch.setattr(evaluation, "_announced", set())
    caplog.set_level(logging.INFO, logger="simulation.evaluation")
    for name in ("eval.mp4", "later.mp4"):
        result = evaluate(goal_policy, "toy", episodes=2, horizon=3, video_path=tmp_path / name,
                          video_episodes=1, video_size=32)
        assert result.video_path == str(tmp_path / name.replace(".mp4", ".gif"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.gif", "later.gif"]  # no partial .mp4 left
    frames = imageio.mimread(tmp_path / "eval.gif")
    assert len(frames) == 3 + 1 and frames[0].shape[:2] == (32, 32)
    said = [r for r in caplog.records if r.getMessage().startswith("evaluation videos")]
    assert len(said) == 1 and said[0].levelno == logging.INFO  # logged once, with the reason
    assert said[0].getMessage().startswith("evaluation videos: GIF (the MP4 writer is unavailable or failed: ")
    assert ("imageio_ffmpeg" if how == "not installed" else "libx264 not found") in said[0].getMessage()


def test_errors() -> None:
    with pytest.raises(ValueError, match="episodes"):
        evaluate(goal_policy, "toy", episodes=0)
    with pytest.raises(ValueError, match="task"):
        evaluate(goal_policy, "nope")


def test_tabletop_idle_if_landed() -> None:
    pytest.importorskip("simulation.tasks.tabletop")
    result = evaluate(lambda o: np.zeros(3, np.float32), "tabletop", episodes=1, horizon=10)
    assert result.successes == [False] and result.lengths == [10]
