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


@pytest.mark.parametrize("task", TASKS)
def test_draw_goal_moves_nothing_and_draws_among_the_tasks_goals(task: str) -> None:
    env = make(task, obs="state")
    try:
        obs, _ = env.reset(seed=1, options={"init": "goal"})
        goals = {tuple(np.float32(g)) for g in env.info.state_goals}
        width = len(next(iter(env.info.state_goals))) if goals else 0
        seen = set()
        for _ in range(40):
            new, info = env.draw_goal()
            assert new.shape == obs.shape
            np.testing.assert_array_equal(new[: len(new) - width], obs[: len(obs) - width])  # the scene stays
            assert (info["success"], info["backward_success"]) == (env.unwrapped._task_success(), env.backward_success())
            if width:
                seen.add(tuple(new[-width:]))
        assert seen == goals  # every goal drawn (tabletop's 4), or the one goal kept (door, peg)
        if len(goals) <= 1:
            np.testing.assert_array_equal(new, obs)
    finally:
        env.close()


def test_a_multi_goal_task_that_cannot_draw_a_goal_is_refused_when_defined() -> None:
    from simulation.tasks.base import TaskEnv
    from simulation.tasks.tabletop import TabletopEnv

    with pytest.raises(TypeError, match="must define _task_draw_goal"):
        type("NoDraw", (TaskEnv,), {"info": TabletopEnv.info})
