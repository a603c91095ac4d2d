"""Scripted peg experts: FORWARD picks the peg off the table and slides it into the box's
hole; BACKWARD pulls the inserted peg out and lays it down in the start region.

Each is a short sequence of phases (approach above, descend, close, carry, place) steered
by a saturated proportional law on the mocap target. Once the peg is held, the carry phases
steer the *peg head* (read from the simulator), so an off-centre grasp is corrected for.
"""

from __future__ import annotations

import abc
import logging

import numpy as np

from simulation.experts import Expert
from simulation.tasks.base import SimulationError, TaskEnv
from simulation.tasks.peg import GOAL, PegEnv

logger = logging.getLogger(__name__)

GAIN = 60.0
"""Action per metre of error (an action of 1 moves the mocap 1 cm)."""
HOVER = 0.08
"""Height above the grasp point from which the hand descends (m)."""
CLOSE_STEPS = 12
"""Steps the gripper is closed before lifting."""
PRE_INSERT = np.array([-0.14, 0.6, 0.13])
"""Peg-head waypoint in front of the hole, aligned with it."""
INSERTED = GOAL[4:] + np.array([-0.02, 0.0, 0.0])
"""Peg-head target for insertion (slightly past EARL's goal so the head settles inside)."""
PULLED = np.array([-0.02, 0.6, 0.13])
"""Peg-head waypoint after pulling the peg out of the box."""
LAID = np.array([0.0, 0.6, 0.035])
"""Peg-head target where the backward expert lowers the peg and lets go."""


def _peg(env: TaskEnv) -> PegEnv:
    if not isinstance(env.unwrapped, PegEnv):
        raise SimulationError(f"peg expert needs a PegEnv, got {type(env.unwrapped).__name__}")
    return env.unwrapped


class _PegExpert(Expert):
    """Shared phases: grasp the peg at a point along its axis, then carry it by its head."""

    grasp_offset: float = 0.03
    """Grasp point along the peg axis from its centre (m)."""

    def __init__(self, noise: float = 0.0, seed: int | None = None) -> None:
        super().__init__(noise=noise, seed=seed)
        self._closed_for = 0
        self._released_for = 0

    def reset(self, env: TaskEnv) -> None:
        self._closed_for = 0
        self._released_for = 0

    def _move_tcp(self, peg: PegEnv, target: np.ndarray, gripper: float) -> np.ndarray:
        # Steer the mocap so a blocked hand never builds up a large lead.
        mocap_target = target + peg.hand_pos() - peg.tcp_pos()
        move = np.clip(GAIN * (mocap_target - peg.data.mocap_pos[0]), -1.0, 1.0)
        return np.append(move, gripper)

    def _move_head(self, peg: PegEnv, target: np.ndarray) -> np.ndarray:
        return self._move_tcp(peg, peg.tcp_pos() + (target - peg.peg_head()), 1.0)

    def _act(self, env: TaskEnv) -> np.ndarray:
        peg = _peg(env)
        grasp = self._grasp(peg)
        return grasp if grasp is not None else self._carry(peg, peg.peg_head())

    @abc.abstractmethod
    def _carry(self, peg: PegEnv, head: np.ndarray) -> np.ndarray:
        """Returns the next action once the peg is held, its head at ``head``."""

    def _grasp(self, peg: PegEnv) -> np.ndarray | None:
        """Returns the next grasping action, or None once the peg is held."""
        if self._closed_for >= CLOSE_STEPS:
            return None
        point = peg.peg_pos() + self.grasp_offset * peg.peg_axis()
        tcp = peg.tcp_pos()
        if self._closed_for > 0 or np.linalg.norm(tcp - point) < 0.012:
            self._closed_for += 1
            return self._move_tcp(peg, point, 1.0)
        if np.linalg.norm(tcp[:2] - point[:2]) > 0.015:
            hover = point + np.array([0.0, 0.0, HOVER])
            hover[2] = max(hover[2], min(tcp[2], point[2] + 0.15))
            return self._move_tcp(peg, hover, -1.0)
        return self._move_tcp(peg, point, -1.0)


class FORWARD(_PegExpert):
    """Inserts the peg: grasp near its centre, lift, align with the hole, push in."""

    grasp_offset = 0.03

    def _carry(self, peg: PegEnv, head: np.ndarray) -> np.ndarray:
        # Line the head up with the hole in front of the box before sliding it in along -x.
        if head[0] > PRE_INSERT[0] + 0.01:
            return self._move_head(peg, PRE_INSERT)
        return self._move_head(peg, INSERTED)

    def done(self, env: TaskEnv) -> bool:
        return bool(_peg(env)._task_success())


class BACKWARD(_PegExpert):
    """Removes the peg: grasp its protruding end, pull it out along +x, lay it down, let go."""

    grasp_offset = 0.07

    def _carry(self, peg: PegEnv, head: np.ndarray) -> np.ndarray:
        if self._released_for > 0 or np.linalg.norm(head - LAID) < 0.015:
            self._released_for += 1
            up = peg.tcp_pos() + np.array([0.0, 0.0, 0.05 if self._released_for > 5 else 0.0])
            return self._move_tcp(peg, up, -1.0)
        if head[0] < PULLED[0] - 0.01:
            return self._move_head(peg, np.array([PULLED[0], head[1], PULLED[2]]))
        return self._move_head(peg, LAID)

    def done(self, env: TaskEnv) -> bool:
        return _peg(env).backward_success()
