"""Import: :func:`import_lerobot`, the checks of the dataset's files and sidecar before the
library opens it, the :class:`_Reader` of frames into rows, and video decoding (PyAV)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from protocol.demos import DemoMeta, Demos
from protocol.lerobot.common import (ACTION, DONE, IMAGE_PREFIX, IS_LAST, REWARD, SIDECAR, SIDECAR_VERSION, STATE,
                                     SUCCESS, SUPPORTED_VERSION, LeRobotError, LeRobotFeatureError,
                                     LeRobotVersionError, _library, _quiet)

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------- import
def import_lerobot(in_dir: str | os.PathLike[str], *, direction: str | None = None,
                   task: str | None = None) -> Demos:
    """Reads a LeRobotDataset v3 directory as :class:`Demos`. Never touches the network:
    every file is checked to be on disk before the library is asked to open the dataset.
    Blocks while decoding videos.

    A dataset written by :func:`export_lerobot` comes back as it was (images within the
    codec's error). Any other (e.g. recorded with LeRobot) needs ``task`` and ``direction``;
    its last frame per episode becomes the final observation, episodes without
    ``next.success`` count as successful (noted in ``meta.notes["success"]``), one-frame
    episodes are skipped. ``direction`` also selects the episodes of a mixed dataset.

    Returns the demos.

    Raises:
        LeRobotUnavailableError: without the ``lerobot`` extra.
        LeRobotVersionError: for a dataset of another codebase version (e.g. v2.1).
        LeRobotFeatureError: for missing or malformed features (``action``,
            ``observation.state``, non-square or non-RGB images).
        LeRobotError: for a missing file (named), a task or direction that is needed but
            not given or contradicts the dataset, or no episode left.
    """
    root = Path(in_dir)
    info = _read_info(root)
    _check_files(root, info)
    library = _library()
    with _quiet():
        meta_lib = library.LeRobotDatasetMetadata(f"local/{root.name}", root=root)
        _check_episode_files(root, meta_lib)
        dataset = library.LeRobotDataset(f"local/{root.name}", root=root, video_backend="pyav")
        sidecar = _read_sidecar(root, dataset.meta.total_episodes)
        return _Reader(root, dataset, sidecar).demos(direction=direction, task=task)


def _read_info(root: Path) -> dict[str, Any]:
    path = root / "meta" / "info.json"
    if not root.is_dir():
        raise LeRobotError(f"{root}: no such directory")
    if not path.is_file():
        legacy = " (meta/info.json missing: a v1 dataset?)" if (root / "meta_data").is_dir() else ""
        raise LeRobotError(f"{path}: no such file — not a LeRobotDataset directory{legacy}")
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LeRobotError(f"{path}: unreadable ({e})") from e
    if not isinstance(info, dict):
        raise LeRobotError(f"{path}: not a LeRobotDataset info.json (not a JSON object)")
    version = str(info.get("codebase_version", "(none)"))
    if version != SUPPORTED_VERSION:
        raise LeRobotVersionError(root, version)
    if not isinstance(info.get("features"), dict):
        raise LeRobotError(f"{path}: not a LeRobotDataset info.json (no features)")
    return info


def _check_files(root: Path, info: dict[str, Any]) -> None:
    """The library fetches whatever is missing from the hub: so nothing may be missing."""
    for relative in ("meta/tasks.parquet",):
        if not (root / relative).is_file():
            raise LeRobotError(f"{root / relative}: no such file")
    for pattern in ("meta/episodes/*/*.parquet", "data/*/*.parquet"):
        if not any(root.glob(pattern)):
            raise LeRobotError(f"{root}: no {pattern} files")
    if any(ft.get("dtype") == "video" for ft in info["features"].values()) and not info.get("video_path"):
        raise LeRobotError(f"{root / 'meta/info.json'}: video features but no video_path")


def _check_episode_files(root: Path, meta: Any) -> None:
    for episode in range(meta.total_episodes):
        paths = [meta.get_data_file_path(episode), *(meta.get_video_file_path(episode, k) for k in meta.video_keys)]
        for path in paths:
            if not (root / path).is_file():
                raise LeRobotError(f"{root / path}: no such file (episode {episode})")


def _read_sidecar(root: Path, episodes: int) -> dict[str, Any] | None:
    path = root / SIDECAR
    if not path.is_file():
        return None
    try:
        sidecar = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LeRobotError(f"{path}: unreadable ({e})") from e
    if not isinstance(sidecar, dict) or sidecar.get("version") != SIDECAR_VERSION:
        raise LeRobotError(f"{path}: version {sidecar.get('version') if isinstance(sidecar, dict) else None}, "
                           f"this code reads {SIDECAR_VERSION}")
    if len(sidecar.get("directions", ())) != episodes:
        logger.warning("%s: describes %d episodes, the dataset has %d (edited by other tools?): ignored",
                       path, len(sidecar.get("directions", ())), episodes)
        return None
    return sidecar


class _Reader:
    """Turns a loaded dataset's frames and videos into rows; see :func:`import_lerobot`."""

    def __init__(self, root: Path, dataset: Any, sidecar: dict[str, Any] | None) -> None:
        self.root, self.dataset, self.sidecar = root, dataset, sidecar
        self.features: dict[str, dict[str, Any]] = dataset.meta.features
        self.table = dataset.hf_dataset.with_format("arrow")[:].sort_by("index")
        self.episodes: list[dict[str, Any]] = dataset.meta.episodes.with_format("arrow")[:].to_pylist()
        self._columns: dict[str, np.ndarray] = {}
        self._videos: dict[Path, tuple[np.ndarray, np.ndarray]] = {}

    # ------------------------------------------------------------------ features
    def observation_features(self) -> dict[str, str]:
        """Returns observation key → feature, checking each feature's dtype and shape."""
        if self.sidecar is not None:
            mapping = dict(self.sidecar["observations"])
        else:
            self._vector_dim(STATE)
            images = {k[len(IMAGE_PREFIX):]: k for k, ft in self.features.items()
                      if k.startswith(IMAGE_PREFIX) and ft.get("dtype") in ("video", "image")}
            mapping = {("proprio" if images else "state"): STATE, **images}
            ignored = sorted(set(self.features) - {*mapping.values(), ACTION, REWARD, DONE, SUCCESS, IS_LAST}
                             - {"timestamp", "frame_index", "episode_index", "index", "task_index"})
            if ignored:
                logger.info("%s: features not imported: %s", self.root, ", ".join(ignored))
        for key, feature in mapping.items():
            if feature not in self.features:
                raise LeRobotFeatureError(f"{self.root}: no feature {feature!r} (for observation {key!r})")
            if feature.startswith(IMAGE_PREFIX):
                self._image_shape(feature)
            else:
                self._vector_dim(feature)
        self._vector_dim(ACTION)
        return mapping

    def _vector_dim(self, feature: str) -> int:
        if feature not in self.features:
            raise LeRobotFeatureError(f"{self.root}: no feature {feature!r}; resetfree needs {STATE!r} and {ACTION!r}")
        ft = self.features[feature]
        if not str(ft.get("dtype", "")).startswith("float") or len(ft.get("shape", ())) != 1:
            raise LeRobotFeatureError(f"{self.root}: feature {feature!r} is {ft.get('dtype')} "
                                      f"{tuple(ft.get('shape', ()))}, expected a float vector")
        return int(ft["shape"][0])

    def _image_shape(self, feature: str) -> tuple[int, int]:
        ft = self.features[feature]
        shape, names = tuple(ft.get("shape", ())), list(ft.get("names") or [])
        channels_first = len(names) == 3 and names[0] in ("channel", "channels")
        hw = shape[1:] if channels_first else shape[:2]
        channels = shape[0] if channels_first else shape[-1] if shape else None
        if len(shape) != 3 or channels != 3:
            raise LeRobotFeatureError(f"{self.root}: feature {feature!r} has shape {shape}, expected RGB (H, W, 3)")
        if hw[0] != hw[1]:
            raise LeRobotFeatureError(f"{self.root}: feature {feature!r} is {hw[0]}x{hw[1]}; "
                                      "resetfree's images are square")
        return int(hw[0]), int(hw[1])

    # ------------------------------------------------------------------ rows
    def demos(self, *, direction: str | None, task: str | None) -> Demos:
        mapping = self.observation_features()
        episodes = self._select(direction)
        meta = self._meta(mapping, direction, task)
        ours = IS_LAST in self.features
        index = self._column("index")
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("actions", "rewards", "terminals", "rows")}
        success: list[bool] = []
        for episode in episodes:
            rows = np.arange(*np.searchsorted(index, [episode["dataset_from_index"], episode["dataset_to_index"]]))
            if rows.size < 2:
                logger.warning("%s: episode %d has %d frame(s); skipped (an episode needs a transition)",
                               self.root, episode["episode_index"], rows.size)
                continue
            self._append_episode(parts, rows, ours, episode)
            success.append(self._success(rows))
        if not success:
            raise LeRobotError(f"{self.root}: no episode with at least two frames"
                               + (f" for direction {direction!r}" if direction else ""))
        rows = np.concatenate(parts["rows"])
        observations = {key: self._observation(feature, rows, episodes) for key, feature in mapping.items()}
        lengths = [len(r) for r in parts["rows"]]
        first = np.zeros(rows.size, bool)
        first[np.cumsum([0, *lengths[:-1]])] = True
        last = np.zeros(rows.size, bool)
        last[np.cumsum(lengths) - 1] = True
        return Demos(observations=observations, actions=np.concatenate(parts["actions"]),
                     rewards=np.concatenate(parts["rewards"]), terminals=np.concatenate(parts["terminals"]),
                     is_first=first, is_last=last, episode_success=np.asarray(success, bool), meta=meta)

    def _append_episode(self, parts: dict[str, list[np.ndarray]], rows: np.ndarray, ours: bool,
                        episode: dict[str, Any]) -> None:
        flags = self._column(IS_LAST)[rows] if ours else None
        if flags is not None and (not flags[-1] or flags[:-1].any()):
            raise LeRobotError(f"{self.root}: episode {episode['episode_index']}: {IS_LAST} must be set on its last "
                               "frame only")
        actions = self._column(ACTION)[rows].astype(np.float32)
        actions[-1] = 0.0  # padding: ours already are; a recorded episode's last action has no next observation
        rewards = (self._column(REWARD)[rows].reshape(-1).astype(np.float32) if REWARD in self.features
                   else np.zeros(rows.size, np.float32))
        rewards[-1] = 0.0
        terminals = np.zeros(rows.size, bool)
        if DONE in self.features:
            terminals[-1] = bool(self._column(DONE)[rows][-1])
        parts["actions"].append(actions)
        parts["rewards"].append(rewards)
        parts["terminals"].append(terminals)
        parts["rows"].append(rows)

    def _success(self, rows: np.ndarray) -> bool:
        return bool(self._column(SUCCESS)[rows].any()) if SUCCESS in self.features else True

    def _select(self, direction: str | None) -> list[dict[str, Any]]:
        episodes = sorted(self.episodes, key=lambda e: e["episode_index"])
        if self.sidecar is None:
            return episodes
        directions = self.sidecar["directions"]
        found = sorted(set(directions))
        if direction is None and len(found) > 1:
            raise LeRobotError(f"{self.root}: holds {' and '.join(found)} episodes; choose one direction")
        wanted = direction or found[0]
        return [e for e in episodes if directions[e["episode_index"]] == wanted]

    def _meta(self, mapping: dict[str, str], direction: str | None, task: str | None) -> DemoMeta:
        cameras = tuple(k for k, f in mapping.items() if f.startswith(IMAGE_PREFIX))
        if self.sidecar is not None:
            meta = DemoMeta.from_json(json.dumps(self.sidecar["meta"]))
            if task is not None and task != meta.task:
                raise LeRobotError(f"{self.root}: the dataset holds {meta.task!r} demos, not {task!r}")
            directions = set(self.sidecar["directions"])
            return dataclasses.replace(meta, direction=direction or directions.pop())
        if task is None or direction is None:
            raise LeRobotError(f"{self.root}: the dataset does not say which task and direction its demos are "
                               f"(its tasks: {list(self.dataset.meta.tasks.index)}); pass task and direction")
        notes: dict[str, str | int | float | bool] = {"original": str(self.root), "fps": int(self.dataset.fps)}
        if SUCCESS not in self.features:
            notes["success"] = "assumed (the dataset has no next.success)"
        size = self._image_shape(mapping[cameras[0]])[0] if cameras else None
        return DemoMeta(task=task, direction=direction, obs_mode="pixels" if cameras else "state", cameras=cameras,
                        image_size=size, source="lerobot", notes=notes)

    # ------------------------------------------------------------------ columns
    def _column(self, feature: str) -> np.ndarray:
        """Returns a frame feature as ``(N,)`` (scalars) or ``(N, D)`` (vectors), cached."""
        if feature not in self._columns:
            import pyarrow  # a dependency of the library

            column = self.table.column(feature).combine_chunks()
            if pyarrow.types.is_fixed_size_list(column.type) or pyarrow.types.is_list(column.type):
                values = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)
            else:
                values = column.to_numpy(zero_copy_only=False)
            self._columns[feature] = values
        return self._columns[feature]

    def _observation(self, feature: str, rows: np.ndarray, episodes: list[dict[str, Any]]) -> np.ndarray:
        if not feature.startswith(IMAGE_PREFIX):
            return self._column(feature)[rows].astype(np.float32)
        if self.features[feature]["dtype"] == "image":
            return self._stored_images(feature, rows)
        return self._video_frames(feature, rows, episodes)

    def _stored_images(self, feature: str, rows: np.ndarray) -> np.ndarray:
        import io

        from PIL import Image  # a dependency of the library's image features

        cells = self.table.column(feature).take(rows).to_pylist()
        return np.stack([np.asarray(Image.open(io.BytesIO(c["bytes"])).convert("RGB")).transpose(2, 0, 1)
                         for c in cells])

    def _video_frames(self, feature: str, rows: np.ndarray, episodes: list[dict[str, Any]]) -> np.ndarray:
        timestamps = self._column("timestamp").reshape(-1)
        episode_of = self._column("episode_index").reshape(-1)
        by_index = {e["episode_index"]: e for e in episodes}
        tolerance = float(self.dataset.tolerance_s)
        out = []
        for row in rows:
            episode = by_index[int(episode_of[row])]
            path = self.root / self.dataset.meta.get_video_file_path(episode["episode_index"], feature)
            times, frames = self._decoded(path)
            wanted = float(episode[f"videos/{feature}/from_timestamp"]) + float(timestamps[row])
            nearest = int(np.clip(np.searchsorted(times, wanted), 1, len(times) - 1)) if len(times) > 1 else 0
            if len(times) > 1 and abs(times[nearest - 1] - wanted) <= abs(times[nearest] - wanted):
                nearest -= 1
            if abs(times[nearest] - wanted) > tolerance:
                raise LeRobotError(f"{path}: no frame at {wanted:.4f} s (nearest {times[nearest]:.4f} s) for "
                                   f"episode {episode['episode_index']}")
            out.append(frames[nearest])
        return np.stack(out)

    def _decoded(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        if path not in self._videos:
            self._videos[path] = _decode_video(path)
        return self._videos[path]


def _decode_video(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(times_s, frames uint8 (N, 3, H, W))`` of every frame of ``path``, in time order."""
    import av

    times, frames = [], []
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(container.streams.video[0]):
                times.append(float(frame.time))
                frames.append(frame.to_ndarray(format="rgb24").transpose(2, 0, 1))
    except (av.error.FFmpegError, IndexError) as e:
        raise LeRobotError(f"{path}: not a readable video ({e})") from e
    if not frames:
        raise LeRobotError(f"{path}: no video frames")
    order = np.argsort(times, kind="stable")
    return np.asarray(times)[order], np.stack(frames)[order]

