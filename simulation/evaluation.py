"""Deployed-policy evaluation (EARL): run the forward policy from the initial-state
distribution in a separate environment for the task's eval horizon, several episodes.

**Success criterion.** An episode succeeds when ``info["success"]`` is true at *any* step of
the episode (the task was solved at some point within the horizon), as MEDAL's and EARL's
success-rate curves count it; the sparse return (the number of successful steps) is kept
beside it. Episodes run the full horizon unless ``stop_on_success`` is set, so returns stay
comparable to EARL's.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simulation.tasks import make, task_info
from simulation.tasks.base import ObsMode, TaskEnv

logger = logging.getLogger(__name__)

ActFn = Callable[[Any], np.ndarray]
"""Maps an observation (state vector or pixel dict) to an action in ``[-1, 1]^A``."""


@dataclass(frozen=True, kw_only=True)
class EvalResult:
    """The outcome of :func:`evaluate`."""

    success_rate: float
    """Fraction of episodes with success at any step."""
    successes: list[bool]
    """Per episode: success at any step."""
    returns: list[float]
    """Per episode: sum of the sparse rewards (successful steps)."""
    lengths: list[int]
    """Per episode: steps run."""
    first_success: list[int | None] = field(default_factory=list)
    """Per episode: the step (1-based) of the first success, ``None`` when never."""
    wall_s: float = 0.0
    """Wall-clock seconds for the whole evaluation."""
    video_path: str | None = None
    """Where the video was written, if one was asked for (``.gif`` when the MP4 writer fell back)."""

    def to_dict(self) -> dict[str, Any]:
        """Returns the result as JSON-ready builtins."""
        return dataclasses.asdict(self)


def evaluate(
    policy: ActFn,
    task: str,
    *,
    episodes: int = 10,
    obs: ObsMode = "state",
    seed: int = 0,
    horizon: int | None = None,
    split: str | None = None,
    stop_on_success: bool = False,
    video_path: str | Path | None = None,
    video_episodes: int = 2,
    video_size: int = 256,
    env_kwargs: dict[str, Any] | None = None,
) -> EvalResult:
    """Evaluates ``policy`` on ``task`` in a fresh environment. Blocks until done.

    Episode ``i`` resets with ``seed + i`` and ``options={"init": "initial"}`` (plus
    ``"split"`` when given: the cube's ``"id"``/``"ood"`` start positions) and runs
    ``horizon`` steps (default ``TaskInfo.eval_horizon``). The first ``video_episodes``
    episodes are recorded to ``video_path`` (see :func:`write_video`: an ``.mp4`` falls back
    to a GIF next to it when the MP4 writer is unavailable).

    Returns an :class:`EvalResult`.

    Raises:
        ValueError: for an unknown task or a non-positive ``episodes``/``horizon``.
    """
    if episodes <= 0:
        raise ValueError(f"episodes: must be positive, got {episodes}")
    horizon = task_info(task).eval_horizon if horizon is None else horizon
    if horizon <= 0:
        raise ValueError(f"horizon: must be positive, got {horizon}")
    options: dict[str, Any] = {"init": "initial"}
    if split is not None:
        options["split"] = split
    env = make(task, obs=obs, **(env_kwargs or {}))
    frames: list[np.ndarray] = []
    started = time.perf_counter()
    outcomes: list[tuple[bool, float, int, int | None]] = []
    try:
        for index in range(episodes):
            record = frames if video_path is not None and index < video_episodes else None
            outcomes.append(_run_episode(env, policy, seed + index, options, horizon, stop_on_success,
                                         record, video_size))
            logger.info("eval %s episode %d/%d: success=%s return=%.1f", task, index + 1, episodes,
                        outcomes[-1][0], outcomes[-1][1])
    finally:
        env.close()
    written = write_video(frames, Path(video_path), fps=env.metadata.get("render_fps", 10)) \
        if video_path is not None and frames else None
    successes = [o[0] for o in outcomes]
    return EvalResult(success_rate=float(np.mean(successes)), successes=successes,
                      returns=[o[1] for o in outcomes], lengths=[o[2] for o in outcomes],
                      first_success=[o[3] for o in outcomes], wall_s=time.perf_counter() - started,
                      video_path=str(written) if written else None)


def _run_episode(env: TaskEnv, policy: ActFn, seed: int, options: dict[str, Any], horizon: int,
                 stop_on_success: bool, frames: list[np.ndarray] | None,
                 video_size: int) -> tuple[bool, float, int, int | None]:
    observation, info = env.reset(seed=seed, options=options)
    total, first_success, steps = 0.0, None, 0
    if frames is not None:
        frames.append(_video_frame(env, video_size))
    for steps in range(1, horizon + 1):
        observation, reward, _, _, info = env.step(policy(observation))
        total += reward
        if info.get("success") and first_success is None:
            first_success = steps
        if frames is not None:
            frames.append(_video_frame(env, video_size))
        if stop_on_success and first_success is not None:
            break
    return first_success is not None, total, steps, first_success


def _video_frame(env: TaskEnv, size: int) -> np.ndarray:
    return np.ascontiguousarray(env.render_camera(env.cameras[0], size=size).transpose(1, 2, 0))


VIDEO_CRF_QUALITY = 5
"""imageio's ``quality`` for the H.264 writer (0–10; 5 is x264's CRF 25): a 300-step door
episode at 256 px is about 0.24 MB against 2.4 MB as a GIF, and looks the same."""

_announced: set[str] = set()
"""Video formats already logged (each is logged once per process)."""


def write_video(frames: list[np.ndarray], path: Path, *, fps: float = 10.0) -> Path:
    """Writes ``(H, W, 3)`` uint8 frames to ``path``. Blocks on encoding and disk I/O.

    An ``.mp4`` is H.264 through imageio-ffmpeg (its bundled ffmpeg binary). When that
    writer is not installed or fails, the video is written as a GIF instead, with the suffix
    changed; which format is used (and why a GIF) is logged once per process at INFO. Returns
    the path actually written. Raises OSError when even the GIF cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".mp4":
        try:
            _write_mp4(frames, path, fps)
        except Exception as e:  # noqa: BLE001 — any encoder failure falls back to the GIF writer
            path.unlink(missing_ok=True)  # a partial file would look like a video
            path = path.with_suffix(".gif")
            _announce("gif", "evaluation videos: GIF (the MP4 writer is unavailable or failed: %s: %s)",
                      type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        else:
            _announce("mp4", "evaluation videos: MP4 (H.264, imageio-ffmpeg)")
            logger.info("wrote %d frames to %s", len(frames), path)
            return path
    if path.suffix.lower() == ".gif":
        _write_gif(frames, path, fps)
        _announce("gif", "evaluation videos: GIF")
    else:  # another format imageio knows by its suffix
        import imageio.v2 as imageio

        imageio.mimsave(path, frames, fps=fps)
    logger.info("wrote %d frames to %s", len(frames), path)
    return path


def _write_mp4(frames: list[np.ndarray], path: Path, fps: float) -> None:
    """Encodes H.264 (yuv420p, plays everywhere) with imageio-ffmpeg's ffmpeg.

    Raises ImportError without imageio-ffmpeg, RuntimeError/OSError when ffmpeg fails.
    """
    import imageio.v2 as imageio  # imported here: only evaluation with video needs it
    import imageio_ffmpeg  # noqa: F401 — imageio's FFMPEG plugin needs it: fail early and clearly

    # macro_block_size=2: yuv420p needs even sides only, so 256 px (or 100 px) frames keep
    # their size rather than being rescaled to a multiple of 16
    writer = imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                pixelformat="yuv420p", quality=VIDEO_CRF_QUALITY, macro_block_size=2,
                                ffmpeg_log_level="error")
    try:
        for frame in frames:
            writer.append_data(np.asarray(frame, dtype=np.uint8))
    finally:
        writer.close()


def _write_gif(frames: list[np.ndarray], path: Path, fps: float) -> None:
    import imageio.v2 as imageio

    imageio.mimsave(path, frames, duration=1000.0 / fps, loop=0)


def _announce(key: str, message: str, *args: object) -> None:
    if key not in _announced:
        _announced.add(key)
        logger.info(message, *args)
