"""``resetfree-bench sim``: simulator throughput per task.

For every task that is installed it measures steps/s in state mode and in pixel mode (every
camera rendered, extras such as tabletop's goal image included), and frames/s of a single
84x84 render of the first camera. Target on the 2-core CPU: >= 100 frames/s per camera.
Logs progress; prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

import numpy as np

from simulation.cli import doc_help
from simulation.tasks import TASKS, make

logger = logging.getLogger(__name__)

FRAME_TARGET_FPS = 100.0
"""Design target for rendered 84x84 frames per second per camera."""


def _steps_per_s(task: str, obs: str, steps: int, image_size: int, seed: int) -> float:
    env = make(task, obs=obs, image_size=image_size)
    try:
        rng = np.random.default_rng(seed)
        env.reset(seed=seed)
        actions = rng.uniform(-1, 1, (steps, env.info.action_dim)).astype(np.float32)
        env.step(actions[0])  # warm-up: builds the renderer in pixel mode
        started = time.perf_counter()
        for action in actions:
            env.step(action)
        return steps / (time.perf_counter() - started)
    finally:
        env.close()


def _frames_per_s(task: str, frames: int, image_size: int, seed: int) -> float:
    env = make(task, obs="state", image_size=image_size)
    try:
        env.reset(seed=seed)
        camera = env.cameras[0]
        env.render_camera(camera)  # warm-up
        started = time.perf_counter()
        for _ in range(frames):
            env.render_camera(camera)
        return frames / (time.perf_counter() - started)
    finally:
        env.close()


def bench_task(task: str, *, steps: int, frames: int, image_size: int, seed: int = 0) -> dict[str, Any]:
    """Measures one task. Blocks for the duration of the runs.

    Returns ``{"state_steps_per_s", "pixel_steps_per_s", "cameras", "frames_per_s"}``, or
    ``{"error": ...}`` when the task cannot be built (not landed yet).
    """
    try:
        env = make(task)
    except (ImportError, AttributeError) as e:
        logger.warning("%s: not available (%s)", task, e)
        return {"error": f"not available: {e}"}
    cameras = list(env.cameras) + list(env._task_extra_image_names())
    env.close()
    state = _steps_per_s(task, "state", steps, image_size, seed)
    logger.info("%s: state mode %.0f steps/s", task, state)
    pixels = _steps_per_s(task, "pixels", max(steps // 5, 10), image_size, seed)
    logger.info("%s: pixel mode %.0f steps/s (%s)", task, pixels, ", ".join(cameras))
    fps = _frames_per_s(task, frames, image_size, seed)
    logger.info("%s: one %dx%d camera %.0f frames/s (target >= %.0f)", task, image_size, image_size, fps,
                FRAME_TARGET_FPS)
    return {"state_steps_per_s": round(state, 1), "pixel_steps_per_s": round(pixels, 1), "cameras": cameras,
            "frames_per_s": round(fps, 1), "frames_target_met": fps >= FRAME_TARGET_FPS}


def main(argv: list[str]) -> int:
    """Runs the benchmark; prints the JSON result as the last line. Returns 0."""
    parser = argparse.ArgumentParser(prog="resetfree-bench sim", description=doc_help(__doc__)[0])
    parser.add_argument("--quick", action="store_true", help="short run (a few seconds per task)")
    parser.add_argument("--tasks", nargs="+", default=sorted(TASKS), help="tasks to measure (default: all)")
    parser.add_argument("--steps", type=int, default=None, help="state-mode steps per task (pixels: a fifth)")
    parser.add_argument("--frames", type=int, default=None, help="renders for the frames/s figure")
    parser.add_argument("--image-size", type=int, default=84)
    args = parser.parse_args(argv)
    steps = args.steps or (200 if args.quick else 2000)
    frames = args.frames or (100 if args.quick else 1000)
    results: dict[str, Any] = {}
    for task in args.tasks:
        logger.info("benchmarking %s (%d steps, %d frames)", task, steps, frames)
        results[task] = bench_task(task, steps=steps, frames=frames, image_size=args.image_size)
    measured = [r["frames_per_s"] for r in results.values() if "frames_per_s" in r]
    summary = {"benchmark": "sim", "image_size": args.image_size, "quick": args.quick, "tasks": results,
               "min_frames_per_s": min(measured) if measured else None,
               "frames_target_per_s": FRAME_TARGET_FPS}
    print(json.dumps(summary))
    return 0
