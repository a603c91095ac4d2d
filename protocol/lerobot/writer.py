"""Export: :func:`export_lerobot`, the :class:`_Writer` that adds episodes to a new dataset,
and the :class:`_Layout` of observation keys onto features."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from protocol.demos import DemoMeta, Demos
from protocol.lerobot.common import (ACTION, DEFAULT_VCODEC, DONE, IMAGE_PREFIX, IS_LAST, REWARD, SIDECAR,
                                     SIDECAR_VERSION, STATE, SUCCESS, LeRobotError, _library, _quiet,
                                     keep_scheduling)

logger = logging.getLogger(__name__)

TaskText = str | Callable[[DemoMeta], str] | None


def default_task_text(meta: DemoMeta) -> str:
    """Returns the LeRobot task string of an episode: ``"<task> <direction>"``."""
    return f"{meta.task} {meta.direction}"


# ---------------------------------------------------------------------- export
@dataclass(frozen=True, kw_only=True)
class _Layout:
    """How one demo set's observation keys map onto features (fixed by the first episode)."""

    state_key: str
    """``state`` or ``proprio``: the key sent as ``observation.state``."""
    cameras: tuple[str, ...]
    """Image keys, each a video feature."""
    vectors: tuple[str, ...]
    """Other vector keys, each ``observation.<key>``."""

    @classmethod
    def of(cls, demos: Demos) -> "_Layout":
        obs = demos.observations
        state_key = "state" if demos.meta.obs_mode == "state" else "proprio"
        cameras = tuple(dict.fromkeys([*demos.meta.cameras, *(k for k in obs if obs[k].ndim == 4)]))
        vectors = tuple(k for k in obs if obs[k].ndim == 2 and k != state_key)
        return cls(state_key=state_key, cameras=cameras, vectors=vectors)

    def feature_of(self, key: str) -> str:
        if key == self.state_key:
            return STATE
        return IMAGE_PREFIX + key if key in self.cameras else f"observation.{key}"

    def features(self, demos: Demos) -> dict[str, dict[str, Any]]:
        obs = demos.observations
        out: dict[str, dict[str, Any]] = {}
        for key in (self.state_key, *self.vectors):
            dim = int(obs[key].shape[1])
            out[self.feature_of(key)] = {"dtype": "float32", "shape": (dim,),
                                         "names": [f"{key}_{i}" for i in range(dim)]}
        for key in self.cameras:
            _, _, height, width = obs[key].shape
            out[self.feature_of(key)] = {"dtype": "video", "shape": (int(height), int(width), 3),
                                         "names": ["height", "width", "channels"]}
        out[ACTION] = {"dtype": "float32", "shape": (demos.action_dim,),
                       "names": [f"action_{i}" for i in range(demos.action_dim)]}
        for key, dtype in ((REWARD, "float32"), (DONE, "bool"), (SUCCESS, "bool"), (IS_LAST, "bool")):
            out[key] = {"dtype": dtype, "shape": (1,), "names": None}
        return out


def export_lerobot(demos: Demos | Iterable[Demos], out_dir: str | os.PathLike[str], *, fps: int,
                   task_text: TaskText = None, robot_type: str | None = None,
                   vcodec: str = DEFAULT_VCODEC) -> Path:
    """Writes demos as a new LeRobotDataset v3 directory ``out_dir``.

    ``demos`` is one :class:`Demos` or an iterable of them (consumed once, one at a time, so a
    long run can be streamed); all must share observation keys and shapes. Each episode's
    task string is ``task_text`` (a string, or a function of the part's meta; default
    :func:`default_task_text`). The dataset is built in a temporary sibling directory and
    renamed into place, so ``out_dir`` never holds half a dataset. Blocks while encoding videos.

    Returns ``out_dir``.

    Raises:
        LeRobotUnavailableError: without the ``lerobot`` extra.
        LeRobotError: when ``out_dir`` exists, ``fps`` is not positive, there is no episode,
            or the parts disagree on observations.
    """
    out = Path(out_dir)
    if out.exists():
        raise LeRobotError(f"{out}: already exists (export writes a new dataset directory)")
    if not isinstance(fps, int) or isinstance(fps, bool) or fps <= 0:
        raise LeRobotError(f"fps: must be a positive int, got {fps!r}")
    library = _library()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    writer = _Writer(library, staging / "dataset", fps=fps, robot_type=robot_type, vcodec=vcodec)
    try:
        with _quiet(), keep_scheduling():
            for part in [demos] if isinstance(demos, Demos) else demos:
                writer.add(part, _task_text(task_text, part.meta))
            writer.finish()
        os.rename(staging / "dataset", out)
    finally:
        with keep_scheduling():
            writer.close()  # before the removal: the library flushes buffered metadata when closed
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("wrote LeRobotDataset %s: %d episodes, %d frames", out, writer.episodes, writer.frames)
    return out


def _task_text(task_text: TaskText, meta: DemoMeta) -> str:
    if task_text is None:
        return default_task_text(meta)
    return task_text if isinstance(task_text, str) else task_text(meta)


class _Writer:
    """Adds episodes to a dataset created on the first one; :meth:`finish` writes the sidecar."""

    def __init__(self, library: ModuleType, root: Path, *, fps: int, robot_type: str | None, vcodec: str) -> None:
        self._library, self._root = library, root
        self._fps, self._robot_type, self._vcodec = fps, robot_type, vcodec
        self._dataset: Any = None
        self._layout: _Layout | None = None
        self._features: dict[str, dict[str, Any]] = {}
        self._head: DemoMeta | None = None
        self._directions: list[str] = []
        self.episodes = 0
        self.frames = 0

    def add(self, demos: Demos, task: str) -> None:
        """Appends every episode of ``demos`` (encodes its videos). Raises LeRobotError."""
        layout = _Layout.of(demos)
        features = layout.features(demos)
        if self._dataset is None:
            self._layout, self._features, self._head = layout, features, demos.meta
            self._dataset = self._library.LeRobotDataset.create(
                repo_id=f"resetfree/{demos.meta.task}", fps=self._fps, features=features, root=self._root,
                robot_type=self._robot_type, use_videos=True, vcodec=self._vcodec, video_backend="pyav")
        elif (layout, features) != (self._layout, self._features) or demos.meta.obs_mode != self._head.obs_mode:
            raise LeRobotError(f"export: episodes of {demos.meta.task} {demos.meta.direction} "
                               f"({_describe(features)}) differ from the first ones ({_describe(self._features)})")
        for (start, stop), success in zip(demos.episode_bounds(), demos.episode_success):
            self._add_episode(demos, layout, start, stop, task, bool(success))

    def _add_episode(self, demos: Demos, layout: _Layout, start: int, stop: int, task: str, success: bool) -> None:
        for row in range(start, stop):
            last = row == stop - 1
            frame: dict[str, Any] = {layout.feature_of(k): demos.observations[k][row]
                                     for k in (layout.state_key, *layout.vectors)}
            for key in layout.cameras:  # the library's video features are height x width x channels
                frame[layout.feature_of(key)] = np.ascontiguousarray(demos.observations[key][row].transpose(1, 2, 0))
            frame[ACTION] = demos.actions[row]
            frame[REWARD] = demos.rewards[row:row + 1]
            # next.done: the observation the action leads to is terminal (on the final row: this one is)
            frame[DONE] = demos.terminals[row:row + 1] if last else demos.terminals[row + 1:row + 2]
            frame[SUCCESS] = np.array([success and last])
            frame[IS_LAST] = np.array([last])
            frame["task"] = task
            self._dataset.add_frame(frame)
        self._dataset.save_episode()
        self._directions.append(demos.meta.direction)
        self.episodes += 1
        self.frames += stop - start

    def close(self) -> None:
        """Closes the library's parquet writers (idempotent)."""
        if self._dataset is not None:
            self._dataset.finalize()

    def finish(self) -> None:
        """Closes the parquet writers and writes ``meta/resetfree.json``. Raises LeRobotError."""
        if self._dataset is None or self._head is None or self._layout is None:
            raise LeRobotError("export: no episode to write")
        self.close()
        images = self._root / "images"  # the library's per-frame PNGs, removed once encoded
        if images.is_dir() and not any(p.is_file() for p in images.rglob("*")):
            shutil.rmtree(images)
        layout = self._layout
        keys = (layout.state_key, *layout.vectors, *layout.cameras)
        sidecar = {"version": SIDECAR_VERSION, "meta": json.loads(self._head.to_json()),
                   "observations": {k: layout.feature_of(k) for k in keys}, "directions": self._directions}
        (self._root / SIDECAR).write_text(json.dumps(sidecar, indent=1) + "\n")


def _describe(features: dict[str, dict[str, Any]]) -> str:
    return ", ".join(f"{k} {ft['dtype']} {tuple(ft['shape'])}" for k, ft in features.items())
