"""LeRobotDataset v3 export/import through the real library (the lerobot extra; skipped without it).

Round trips are exact except images, which pass through the library's lossy video codec:
their tolerance is a mean absolute error of at most 6 and a 99th percentile of at most 40
(of 255). Every test runs with the hub blocked: the library must never be asked to download.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ledataset")
lerobot_dataset = pytest.importorskip("ledataset.datasets.lerobot_dataset")

from protocol.demos import DemoMeta, Demos, concatenate  # noqa: E402
from protocol.lerobot.common import keep_scheduling  # noqa: E402
from protocol.lerobot import (IS_LAST, LeRobotError, LeRobotFeatureError, LeRobotVersionError,  # noqa: E402
                              export_lerobot, import_lerobot)

MEAN_TOLERANCE, P99_TOLERANCE = 6.0, 40.0


def isolate_library(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    """Makes any hub access of the library (download, version lookup) fail the test, and keeps
    the datasets library's Arrow cache in ``cache`` instead of ~/.cache/huggingface."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"the library tried to reach the hub: {args} {kwargs}")

    import datasets
    from ledataset.datasets import utils

    monkeypatch.setattr(lerobot_dataset, "snapshot_download", refuse)
    monkeypatch.setattr(lerobot_dataset, "HfApi", refuse)
    monkeypatch.setattr(utils, "HfApi", refuse)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_library(monkeypatch, tmp_path / "hf-cache")


def smooth_images(n: int, size: int, seed: int) -> np.ndarray:
    """``uint8 (n, 3, size, size)``: gradients and a moving block, like a rendered scene."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    frames = []
    for i in range(n):
        base = np.stack([160 * xx + 40, 160 * yy + 40, np.full_like(xx, 30 + (seed * 37 + i * 11) % 180)])
        x0 = (2 * i) % (size - 8)
        base[:, 4:12, x0:x0 + 8] = [[[220]], [[60]], [[60]]]
        frames.append(base)
    return np.stack(frames).astype(np.uint8)


def make_demos(obs_mode: str = "state", *, direction: str = "forward", episodes: int = 3, size: int = 32,
               seed: int = 0) -> Demos:
    """Episodes of different lengths with rewards, some terminal, some successful."""
    rng = np.random.default_rng(seed)
    lengths = [5 + 2 * e for e in range(episodes)]
    n = sum(lengths)
    first, last = np.zeros(n, bool), np.zeros(n, bool)
    first[np.cumsum([0, *lengths[:-1]])] = True
    last[np.cumsum(lengths) - 1] = True
    actions = rng.uniform(-1, 1, (n, 4)).astype(np.float32)
    actions[last] = 0.0
    rewards = rng.normal(size=n).astype(np.float32)
    rewards[last] = 0.0
    terminals = last & (np.cumsum(last) % 2 == 1)
    success = np.arange(episodes) % 3 != 1
    if obs_mode == "state":
        observations = {"state": rng.normal(size=(n, 7)).astype(np.float32)}
        meta = DemoMeta(task="door", direction=direction, obs_mode="state", source="test", notes={"seed": seed})
    else:
        observations = {"front": smooth_images(n, size, seed), "wrist": smooth_images(n, size, seed + 1)[:, :, ::-1],
                        "proprio": rng.normal(size=(n, 5)).astype(np.float32)}
        meta = DemoMeta(task="door", direction=direction, obs_mode="pixels", cameras=("front", "wrist"),
                        image_size=size, source="test")
    observations = {k: np.ascontiguousarray(v) for k, v in observations.items()}
    return Demos(observations=observations, actions=actions, rewards=rewards, terminals=terminals, is_first=first,
                 is_last=last, episode_success=success, meta=meta)


def assert_same_except_images(got: Demos, want: Demos) -> None:
    assert got.meta == want.meta
    for key in ("actions", "rewards", "terminals", "is_first", "is_last", "episode_success"):
        assert np.array_equal(getattr(got, key), getattr(want, key)), key
        assert getattr(got, key).dtype == getattr(want, key).dtype, key
    assert got.observations.keys() == want.observations.keys()
    for key, array in want.observations.items():
        assert got.observations[key].shape == array.shape and got.observations[key].dtype == array.dtype, key
        if key not in want.meta.cameras:
            assert np.array_equal(got.observations[key], array), key


def test_state_round_trip_is_exact(tmp_path: Path) -> None:
    demos = make_demos("state")
    out = export_lerobot(demos, tmp_path / "ds", fps=10)
    dataset = lerobot_dataset.LeRobotDataset("local/ds", root=out)  # what LeRobot's tools open
    assert dataset.meta.info["codebase_version"] == "v3.0" and dataset.fps == 10
    assert dataset.meta.total_episodes == 3 and dataset.meta.total_frames == demos.num_steps
    assert dataset.meta.features["observation.state"]["shape"] == (7,)
    assert dataset.meta.features["action"]["shape"] == (4,)
    assert list(dataset.meta.tasks.index) == ["door forward"]
    frame = dataset[0]
    assert np.allclose(frame["observation.state"].numpy(), demos.observations["state"][0])
    assert frame["task"] == "door forward" and not frame[IS_LAST].item()
    assert_same_except_images(import_lerobot(out), demos)


def test_pixel_round_trip_within_codec_tolerance(tmp_path: Path) -> None:
    demos = make_demos("pixels", direction="backward")
    out = export_lerobot(demos, tmp_path / "ds", fps=15, task_text="close the door, backwards")
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["features"]["observation.images.front"]["dtype"] == "video"
    assert info["features"]["observation.images.front"]["shape"] == [32, 32, 3]
    assert info["features"]["observation.state"]["shape"] == [5]
    assert sorted(p.parent.parent.name for p in out.glob("videos/*/*/*.mp4")) == [
        "observation.images.front", "observation.images.wrist"]
    assert not (out / "images").exists()
    back = import_lerobot(out)
    assert_same_except_images(back, demos)
    for camera in ("front", "wrist"):
        error = np.abs(back.observations[camera].astype(np.int16) - demos.observations[camera].astype(np.int16))
        assert error.mean() <= MEAN_TOLERANCE and np.percentile(error, 99) <= P99_TOLERANCE, camera


def test_final_rows_travel_as_flagged_frames(tmp_path: Path) -> None:
    """T + 1 rows per episode: the final observation is a frame with a zero action, flagged;
    next.done is the terminal flag of the observation an action leads to."""
    demos = make_demos("state", episodes=2)
    out = export_lerobot(demos, tmp_path / "ds", fps=10)
    table = lerobot_dataset.LeRobotDataset("local/ds", root=out).hf_dataset.with_format("arrow")[:]
    is_last = table.column(IS_LAST).to_numpy()
    done = table.column("next.done").to_numpy()
    success = table.column("next.success").to_numpy()
    assert np.array_equal(is_last, demos.is_last)
    assert np.array_equal(done[:-1] & ~demos.is_last[:-1], demos.terminals[1:] & ~demos.is_last[:-1])
    assert np.array_equal(np.flatnonzero(success), np.flatnonzero(demos.is_last)[demos.episode_success])


def test_mixed_directions_stream_and_select(tmp_path: Path) -> None:
    forward = make_demos(direction="forward", episodes=2)
    backward = make_demos(direction="backward", episodes=1, seed=5)
    parts = iter([forward, backward])  # any iterable of demo sets, consumed once
    out = export_lerobot(parts, tmp_path / "ds", fps=10)
    assert_same_except_images(import_lerobot(out, direction="forward"), forward)
    back = import_lerobot(out, direction="backward")
    assert back.meta.direction == "backward" and np.array_equal(back.actions, backward.actions)
    with pytest.raises(LeRobotError, match="forward"):
        import_lerobot(out)  # which one?
    with pytest.raises(LeRobotError, match="holds 'door' demos"):
        import_lerobot(out, direction="forward", task="peg")


def record_like_lerobot(root: Path, *, episodes: int = 2, frames: int = 6, state_dim: int = 6,
                        image_size: int | tuple[int, int] = 32, fps: int = 30, camera: str = "front",
                        video: bool = True) -> Path:
    """A dataset made with the library's own API, as LeRobot's recorder makes one: state,
    one camera (height, width, channels), action; no reward, done or success features.
    ``state_dim=0``: no state feature; ``video=False``: the camera as PNG images in the parquet."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    features = {
        "observation.state": {"dtype": "float32", "shape": (state_dim,),
                              "names": [f"joint{i}.pos" for i in range(state_dim)]},
        f"observation.images.{camera}": {"dtype": "video" if video else "image", "shape": (height, width, 3),
                                         "names": ["height", "width", "channels"]},
        "action": {"dtype": "float32", "shape": (4,), "names": ["x", "y", "z", "gripper"]},
    }
    if not state_dim:
        del features["observation.state"]
    dataset = lerobot_dataset.LeRobotDataset.create("user/recorded", fps=fps, features=features, root=root,
                                                    robot_type="so100", use_videos=video)
    rng = np.random.default_rng(1)
    with keep_scheduling():  # the library's encoder would leave this thread at SCHED_FIFO (as root)
        for episode in range(episodes):
            images = smooth_images(frames, max(height, width), episode)
            for i in range(frames):
                frame = {"observation.state": rng.normal(size=state_dim).astype(np.float32),
                         f"observation.images.{camera}": images[i, :, :height, :width].transpose(1, 2, 0).copy(),
                         "action": rng.uniform(-1, 1, 4).astype(np.float32), "task": "Open the door"}
                dataset.add_frame({k: v for k, v in frame.items() if k in features or k == "task"})
            dataset.save_episode()
        dataset.finalize()
    return root


def test_a_recorded_dataset_imports_with_task_and_direction(tmp_path: Path) -> None:
    root = record_like_lerobot(tmp_path / "rec")
    with pytest.raises(LeRobotError, match="Open the door"):  # which resetfree task is it?
        import_lerobot(root)
    demos = import_lerobot(root, task="door", direction="forward")
    assert demos.meta.obs_mode == "pixels" and demos.meta.cameras == ("front",) and demos.meta.image_size == 32
    assert demos.meta.source == "lerobot" and demos.meta.notes["fps"] == 30 and "assumed" in demos.meta.notes["success"]
    assert demos.num_episodes == 2 and demos.num_steps == 12 and demos.episode_success.all()
    assert not demos.actions[demos.is_last].any()  # a recorded last action has no next observation
    table = lerobot_dataset.LeRobotDataset("user/recorded", root=root).hf_dataset.with_format("arrow")[:]
    recorded = table.column("action").combine_chunks().flatten().to_numpy().reshape(-1, 4)
    assert np.array_equal(demos.actions[~demos.is_last], recorded[~demos.is_last])
    assert demos.observations["proprio"].shape == (12, 6)


def test_image_features_import_losslessly(tmp_path: Path) -> None:
    root = record_like_lerobot(tmp_path / "png", episodes=1, frames=4, video=False)
    demos = import_lerobot(root, task="door", direction="forward")
    assert np.array_equal(demos.observations["front"], smooth_images(4, 32, 0))


def test_a_v2_dataset_is_refused_naming_both_versions(tmp_path: Path) -> None:
    root = record_like_lerobot(tmp_path / "old", episodes=1)
    info = json.loads((root / "meta/info.json").read_text())
    (root / "meta/info.json").write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    with pytest.raises(LeRobotVersionError, match=r"v2\.1.*v3\.0") as error:
        import_lerobot(root)
    assert error.value.found == "v2.1"


def test_missing_files_are_named_and_never_downloaded(tmp_path: Path) -> None:
    out = export_lerobot(make_demos("pixels", episodes=1), tmp_path / "ds", fps=10)
    video = next(out.glob("videos/observation.images.wrist/*/*.mp4"))
    saved = tmp_path / "video.mp4"
    shutil.move(video, saved)
    with pytest.raises(LeRobotError, match=str(video)):
        import_lerobot(out)
    shutil.move(saved, video)
    shutil.rmtree(out / "data")
    with pytest.raises(LeRobotError, match="data/"):
        import_lerobot(out)
    with pytest.raises(LeRobotError, match="not a LeRobotDataset"):
        import_lerobot(tmp_path)
    with pytest.raises(LeRobotError, match="no such directory"):
        import_lerobot(tmp_path / "nowhere")


def test_features_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    root = record_like_lerobot(tmp_path / "wide", episodes=1, image_size=(32, 48))
    with pytest.raises(LeRobotFeatureError, match="square"):
        import_lerobot(root, task="door", direction="forward")
    root = record_like_lerobot(tmp_path / "stateless", episodes=1, state_dim=0)
    with pytest.raises(LeRobotFeatureError, match="observation.state"):
        import_lerobot(root, task="door", direction="forward")


def test_export_refuses_an_existing_directory_and_mixed_observations(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    with pytest.raises(LeRobotError, match="already exists"):
        export_lerobot(make_demos(), tmp_path / "ds", fps=10)
    with pytest.raises(LeRobotError, match="fps"):
        export_lerobot(make_demos(), tmp_path / "other", fps=0)
    with pytest.raises(LeRobotError, match="differ"):
        export_lerobot([make_demos(), make_demos("pixels")], tmp_path / "mixed", fps=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # nothing half-written left behind


def test_concatenated_parts_round_trip(tmp_path: Path) -> None:
    demos = concatenate([make_demos(episodes=1), make_demos(episodes=2, seed=3)])
    assert_same_except_images(import_lerobot(export_lerobot(demos, tmp_path / "ds", fps=10)), demos)
