"""Every task reports both goals on every step: ``info["success"]`` (the forward task solved)
and ``info["backward_success"]`` (the scene back in its initial configuration), the two
predicates the practice loop counts an agent's turn by."""

from __future__ import annotations

import numpy as np
import pytest

from simulation.tasks import make

TASKS = ("tabletop", "door", "peg", "cube")


@pytest.mark.parametrize("task", TASKS)
def test_initial_and_goal_starts_report_the_right_goal(task: str) -> None:
    env = make(task, obs="state")
    try:
        _, info = env.reset(seed=3, options={"init": "initial"})
        assert (info["success"], info["backward_success"]) == (False, True)
        for init in ("goal", "initial"):
            _, info = env.reset(seed=3, options={"init": init})
            assert info["backward_success"] == (init == "initial")
            _, _, _, _, info = env.step(np.zeros(env.action_space.shape, np.float32))
            assert info["backward_success"] == env.backward_success()
    finally:
        env.close()
