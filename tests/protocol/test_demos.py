"""The on-disk demo format: round trips, validation errors, episode helpers."""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from protocol.demos import (DemoFormatError, DemoMeta, DemoRecorder, Demos, concatenate, load_demos,
                            save_demos)


def _record(lengths: list[int], *, pixels: bool = False, seed: int = 0) -> Demos:
    rng = np.random.default_rng(seed)
    recorder = DemoRecorder()

    def observation() -> dict[str, np.ndarray]:
        if pixels:
            return {"wrist": rng.integers(0, 256, (3, 16, 16), dtype=np.uint8),
                    "proprio": rng.normal(size=4).astype(np.float32)}
        return {"state": rng.normal(size=5).astype(np.float32)}

    for index, length in enumerate(lengths):
        recorder.start(observation())
        for t in range(length):
            recorder.step(rng.uniform(-1, 1, 3), float(t == length - 1), observation())
        recorder.end(success=index % 2 == 0, terminal=True)
    meta = DemoMeta(task="toy", direction="forward", obs_mode="pixels" if pixels else "state",
                    cameras=("wrist",) if pixels else (), image_size=16 if pixels else None,
                    source="test", notes={"seed": seed})
    return recorder.build(meta)


def test_recorder_layout_is_rlds() -> None:
    demos = _record([3, 2])
    assert demos.num_steps == 7 and demos.num_episodes == 2 and demos.num_transitions == 5
    assert demos.is_first.tolist() == [True, False, False, False, True, False, False]
    assert demos.is_last.tolist() == [False, False, False, True, False, False, True]
    assert demos.terminals.tolist() == demos.is_last.tolist()
    assert np.all(demos.actions[demos.is_last] == 0)  # padding
    assert demos.rewards.tolist() == [0, 0, 1, 0, 0, 1, 0]
    assert demos.episode_success.tolist() == [True, False]
    assert demos.episode_bounds() == [(0, 4), (4, 7)]
    obs_index, next_index = demos.transitions()
    assert obs_index.tolist() == [0, 1, 2, 4, 5] and np.array_equal(next_index, obs_index + 1)


def test_state_round_trip(tmp_path: Path) -> None:
    demos = _record([4, 5, 3])
    path = save_demos(tmp_path / "d.npz", demos)
    loaded = load_demos(path)
    assert loaded.meta == demos.meta
    for key in ("actions", "rewards", "terminals", "is_first", "is_last", "episode_success"):
        assert np.array_equal(getattr(loaded, key), getattr(demos, key)), key
    assert np.array_equal(loaded.observations["state"], demos.observations["state"])
    assert [p.name for p in tmp_path.iterdir()] == ["d.npz"]  # no temp file left behind


def test_pixel_round_trip_and_episode_views(tmp_path: Path) -> None:
    demos = _record([2, 3], pixels=True)
    loaded = load_demos(save_demos(tmp_path / "p.npz", demos))
    assert loaded.observations["wrist"].dtype == np.uint8
    assert loaded.observations["wrist"].shape == (7, 3, 16, 16)
    episodes = list(loaded.episodes())
    assert [e.num_steps for e in episodes] == [3, 4]
    assert episodes[1].episode_success.tolist() == [False]
    assert np.array_equal(episodes[1].observations["wrist"], demos.observations["wrist"][3:])
    assert loaded.episode(-1).num_steps == 4
    with pytest.raises(IndexError):
        loaded.episode(2)


def test_meta_is_json_not_pickle(tmp_path: Path) -> None:
    path = save_demos(tmp_path / "d.npz", _record([2]))
    with np.load(path, allow_pickle=False) as archive:
        assert json.loads(str(archive["meta"]))["task"] == "toy"
        assert sorted(archive.files) == sorted(["obs/state", "actions", "rewards", "terminals", "is_first",
                                               "is_last", "success", "episode_ends", "meta"])


def test_concatenate() -> None:
    a, b = _record([2, 3], seed=1), _record([4], seed=2)
    both = concatenate([a, b])
    assert both.num_episodes == 3 and both.num_steps == a.num_steps + b.num_steps
    assert both.episode_success.tolist() == [True, False, True]
    with pytest.raises(DemoFormatError, match="obs_mode"):
        concatenate([a, _record([2], pixels=True)])
    with pytest.raises(DemoFormatError, match="nothing"):
        concatenate([])


def _save_raw(path: Path, demos: Demos, **overrides: np.ndarray) -> Path:
    arrays = {f"obs/{k}": v for k, v in demos.observations.items()}
    arrays.update(actions=demos.actions, rewards=demos.rewards, terminals=demos.terminals,
                  is_first=demos.is_first, is_last=demos.is_last, success=demos.episode_success,
                  meta=np.array(demos.meta.to_json()))
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(("override", "match"), [
    ({"actions": None}, "missing key 'actions'"),
    ({"rewards": np.zeros(3, np.float32)}, "rewards: expected 7 rows"),
    ({"actions": np.zeros((7, 3), np.float64)}, "actions: dtype must be float32"),
    ({"obs/wrist": np.zeros((7, 3, 16, 16), np.float32)}, "obs/wrist: dtype must be uint8"),
    ({"obs/wrist": np.zeros((7, 3, 8, 8), np.uint8)}, r"obs/wrist: images must be \(3, 16, 16\)"),
    ({"obs/proprio": None}, "missing.*obs/proprio"),
    ({"success": np.zeros(3, bool)}, "episode_success: expected 2 rows"),
    ({"is_first": np.array([True, False, True, False, True, False, False])}, "episode boundary broken"),
    ({"terminals": np.array([True] + [False] * 6)}, "terminals: set on row 0"),
    ({"meta": np.array("{not json")}, "meta: not valid JSON"),
    ({"episode_ends": np.array([1, 6])}, "episode_ends: disagrees"),
])
def test_load_rejects_broken_files(tmp_path: Path, override: dict, match: str) -> None:
    path = _save_raw(tmp_path / "bad.npz", _record([2, 3], pixels=True), **override)
    with pytest.raises(DemoFormatError, match=match):
        load_demos(path)


def test_load_rejects_wrong_version_missing_file_and_pickles(tmp_path: Path) -> None:
    demos = _record([2])
    raw = json.loads(demos.meta.to_json())
    raw["version"] = 99
    with pytest.raises(DemoFormatError, match="meta.version"):
        load_demos(_save_raw(tmp_path / "v.npz", demos, meta=np.array(json.dumps(raw))))
    with pytest.raises(DemoFormatError, match="no such file"):
        load_demos(tmp_path / "absent.npz")
    with pytest.raises(DemoFormatError, match="not a readable demo archive"):
        load_demos(_save_raw(tmp_path / "o.npz", demos, meta=np.array({"a": 1}, dtype=object)))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DemoFormatError, match="not an npz archive"):
        load_demos(tmp_path / "junk.npz")
    # a text file is named for what it is not, not as "pickled (object) data" (np.load's guess)
    (tmp_path / "README.md").write_text("# resetfree\n\nAutonomous, reset-free robot RL.\n")
    with pytest.raises(DemoFormatError, match=r"README.md: not an npz archive") as caught:
        load_demos(tmp_path / "README.md")
    assert "pickle" not in str(caught.value)
    assert zipfile.is_zipfile(save_demos(tmp_path / "ok.npz", demos))


def test_constructor_validation() -> None:
    demos = _record([2])
    with pytest.raises(DemoFormatError, match="actions: contains NaN"):
        dataclasses.replace(demos, actions=np.full_like(demos.actions, np.nan))
    with pytest.raises(DemoFormatError, match="one-row episode"):
        dataclasses.replace(demos, is_first=np.array([True, False, True]),
                            is_last=np.array([False, True, True]),
                            episode_success=np.zeros(2, bool))
    with pytest.raises(DemoFormatError, match="meta.direction"):
        DemoMeta(task="toy", direction="sideways", obs_mode="state")
    with pytest.raises(DemoFormatError, match="meta.cameras"):
        DemoMeta(task="toy", direction="forward", obs_mode="pixels", image_size=84)


def test_recorder_misuse_and_open_episode_dropped() -> None:
    recorder = DemoRecorder()
    with pytest.raises(DemoFormatError, match="step"):
        recorder.step(np.zeros(2), 0.0, {"state": np.zeros(2, np.float32)})
    recorder.start({"state": np.zeros(2, np.float32)})
    with pytest.raises(DemoFormatError, match="at least one step"):
        recorder.end(success=False)
    recorder.step(np.zeros(2), 0.0, {"state": np.ones(2, np.float32)})
    recorder.end(success=True)
    recorder.start({"state": np.zeros(2, np.float32)})  # left open: not in the build
    recorder.step(np.zeros(2), 0.0, {"state": np.ones(2, np.float32)})
    demos = recorder.build(DemoMeta(task="toy", direction="backward", obs_mode="state"))
    assert demos.num_episodes == 1 and demos.num_steps == 2
