"""EARL's state demos re-render as pixel demos: each task can be put in the state an EARL
observation vector describes (``set_from_earl_observation``), and ``import-earl
--render-pixels`` uses it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from simulation.tools.demos_cli import import_earl
from simulation.tasks import make

EARL = Path(os.environ.get("RESETFREE_EARL_DEMOS") or Path(__file__).resolve().parents[3] / "shared" / "earl-demos")
needs_demos = pytest.mark.skipif(not EARL.is_dir(), reason=f"EARL demos not found at {EARL}")

# hand / object tolerances (m): the hand is driven to its pose through the mocap weld.
TOLERANCE = {"door": (0.005, 0.005), "peg": (0.005, 0.002), "tabletop": (1e-6, 1e-6)}


@needs_demos
@pytest.mark.parametrize("task", ["door", "peg", "tabletop"])
def test_scene_matches_the_earl_observation(task: str) -> None:
    observations = np.load(EARL / f"{task}_forward.npz")["observations"]
    env = make(task, obs="pixels", image_size=32)
    try:
        env.reset(seed=0)
        hand_tol, obj_tol = TOLERANCE[task]
        for row in (0, len(observations) // 2, len(observations) - 1):
            env.set_from_earl_observation(observations[row])
            state = env.observe()
            ours = env._task_state()
            if task == "tabletop":
                np.testing.assert_allclose(ours, observations[row], atol=hand_tol)
            else:
                assert np.linalg.norm(ours[:3] - observations[row][:3]) <= hand_tol
                assert np.linalg.norm(ours[4:7] - observations[row][4:7]) <= obj_tol
            assert all(image.dtype == np.uint8 for key, image in state.items() if key != "proprio")
    finally:
        env.close()


@needs_demos
def test_import_earl_renders_pixel_demos() -> None:
    demos = import_earl(EARL / "door_forward.npz", "door", "forward", render_pixels=True, image_size=24)
    assert demos.meta.obs_mode == "pixels" and demos.observations["doorview"].shape[1:] == (3, 24, 24)
    assert demos.num_episodes == 5 and demos.observations["doorview"].dtype == np.uint8


def test_a_bad_vector_is_refused() -> None:
    env = make("door", obs="state")
    try:
        env.reset(seed=0)
        with pytest.raises(ValueError, match="finite"):
            env.set_from_earl_observation(np.full(14, np.nan))
    finally:
        env.close()
