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
import importlib.util
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

Policy = Callable[[Any], np.ndarray]
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
    """Where the video was written, if one was asked for (suffix may be ``.gif``)."""

    def to_dict(self) -> dict[str, Any]:
        """Returns the result as JSON-ready builtins."""
        return dataclasses.asdict(self)


def evaluate(
    policy: Policy,
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
    episodes are recorded to ``video_path`` (mp4 when imageio-ffmpeg is installed, else a
    GIF next to it).

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


def _run_episode(env: TaskEnv, policy: Policy, seed: int, options: dict[str, Any], horizon: int,
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


def write_video(frames: list[np.ndarray], path: Path, *, fps: float = 10.0) -> Path:
    """Writes ``(H, W, 3)`` uint8 frames to ``path``. Blocks on encoding and disk I/O.

    An ``.mp4`` needs imageio-ffmpeg; without it the video is written as a GIF with the
    suffix changed (logged). Returns the path actually written.
    """
    import imageio.v2 as imageio  # imported here: only evaluation with video needs it

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
        logger.warning("imageio-ffmpeg is not installed: writing a GIF instead of %s", path)
        path = path.with_suffix(".gif")
    if path.suffix.lower() == ".gif":
        imageio.mimsave(path, frames, duration=1000.0 / fps, loop=0)
    else:
        imageio.mimsave(path, frames, fps=fps)
    logger.info("wrote %d frames to %s", len(frames), path)
    return path
