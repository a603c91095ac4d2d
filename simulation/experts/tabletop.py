"""Scripted tabletop experts: carry the mug to a target, release it, park the gripper.

Both directions run the same feedback script, chosen from the current state every step
(so a dropped mug, e.g. after action noise flips the grasp bit, is simply picked up again):

1. not holding the mug and the mug is away from the target: fly to the mug, grasp once
   within reach;
2. holding it: fly so that the mug lands on the target (the gripper keeps its offset);
3. the mug is on the target: release and return the gripper to the origin.

Forward's target is the episode's goal, backward's is EARL's initial mug position (2.5, 0).
"""

from __future__ import annotations

import logging

import numpy as np

from simulation.experts import Expert
from simulation.tasks.base import SimulationError, TaskEnv
from simulation.tasks.tabletop import GRASP_RADIUS, INITIAL_STATE, MOVE_SCALE, TabletopEnv

logger = logging.getLogger(__name__)

PLACE_TOLERANCE = 0.03
"""The mug counts as placed when it is this close to the target."""
GRASP_DISTANCE = 0.5 * GRASP_RADIUS
"""The script grasps once the gripper is this close to the mug (half the attach radius,
so that small action noise cannot take it out of reach)."""


def _tabletop(env: TaskEnv) -> TabletopEnv:
    base = env.unwrapped
    if not isinstance(base, TabletopEnv):
        raise SimulationError(f"tabletop expert needs a TabletopEnv, got {type(base).__name__}")
    return base


def _toward(position: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Returns the move action that reaches ``target`` as fast as the step size allows."""
    return np.clip((target - position) / MOVE_SCALE, -1.0, 1.0)


def carry_action(env: TabletopEnv, mug_target: np.ndarray) -> np.ndarray:
    """Returns the script's action for bringing the mug to ``mug_target`` (3 values in [-1, 1])."""
    to_target = np.linalg.norm(env.mug - mug_target)
    if env.attached:
        if to_target > PLACE_TOLERANCE:
            return np.array([*_toward(env.gripper, env.gripper + mug_target - env.mug), 1.0])
        return np.array([*_toward(env.gripper, np.zeros(2)), -1.0])
    if to_target > PLACE_TOLERANCE:
        near = np.linalg.norm(env.gripper - env.mug) < GRASP_DISTANCE
        return np.array([*_toward(env.gripper, env.mug), 1.0 if near else -1.0])
    return np.array([*_toward(env.gripper, np.zeros(2)), -1.0])


class Forward(Expert):
    """Takes the mug to the episode's goal and parks the gripper at the origin."""

    def _act(self, env: TaskEnv) -> np.ndarray:
        tabletop = _tabletop(env)
        return carry_action(tabletop, tabletop.goal[2:4])

    def done(self, env: TaskEnv) -> bool:
        """Returns whether the forward task is solved."""
        return _tabletop(env).forward_success()


class Backward(Expert):
    """Returns the mug to its initial position (2.5, 0) and parks the gripper at the origin."""

    def _act(self, env: TaskEnv) -> np.ndarray:
        return carry_action(_tabletop(env), INITIAL_STATE[2:])

    def done(self, env: TaskEnv) -> bool:
        """Returns whether the backward task is solved."""
        return _tabletop(env).backward_success()


FORWARD = Forward
BACKWARD = Backward
