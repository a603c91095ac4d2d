"""Scripted door experts: FORWARD pushes the open door shut, BACKWARD hooks the handle and
pulls the door back open to EARL's initial angle (-pi/3).

Both work in the door's own frame (origin at the hinge, x along the panel, y out of the
handle face), so the same contact point follows the door as it swings. The fingertip centre
(tcp) is placed with a saturated proportional law; the push/pull depth is proportional to
the remaining angle so the door slows down near its target instead of overshooting. The
mocap target (not the lagging hand) is steered, so a blocked hand's lead stays bounded.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from simulation.experts import Expert
from simulation.tasks.base import SimulationError, TaskEnv
from simulation.tasks.door import INIT_ANGLE, DoorEnv

logger = logging.getLogger(__name__)

GAIN = 60.0
"""Action per metre of mocap error (an action of 1 moves the mocap 1 cm)."""
WORK_Z = 0.1
"""Fingertip height while pushing (the handle's height)."""
TRANSIT_Z = 0.25
"""Fingertip height for moving around the door (above its top edge at 0.223)."""
PUSH_X = 0.2
"""Door-frame x of the forward push point (on the panel, between hinge and handle)."""
HOOK_Z = 0.07
"""Fingertip height while pulling: below the handle bar (z 0.081-0.119) so it cannot ride over."""
HOOK = np.array([0.40, -0.06])
"""Door-frame xy of the backward hook point (between the panel and the handle's crossbar)."""
ANGLE_GAIN = 2.0
"""Metres of push/pull depth per radian of remaining angle."""
MAX_DEPTH = 0.2
"""Largest push/pull depth past the contact surface (m)."""


def _door(env: TaskEnv) -> DoorEnv:
    if not isinstance(env.unwrapped, DoorEnv):
        raise SimulationError(f"door expert needs a DoorEnv, got {type(env.unwrapped).__name__}")
    return env.unwrapped


def _rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


class _DoorExpert(Expert):
    """Shared geometry: door-frame conversions and the tcp steering law."""

    def _to_world(self, door: DoorEnv, local_xy: np.ndarray, z: float) -> np.ndarray:
        xy = door.hinge_pos()[:2] + _rotation(door.door_angle()) @ local_xy
        return np.array([xy[0], xy[1], z])

    def _to_local(self, door: DoorEnv, point: np.ndarray) -> np.ndarray:
        return _rotation(-door.door_angle()) @ (point[:2] - door.hinge_pos()[:2])

    def _steer(self, door: DoorEnv, target: np.ndarray, gripper: float) -> np.ndarray:
        # Steer the mocap (not the lagging tcp) so that a blocked hand cannot build up an
        # unbounded lead and rip itself off the handle.
        mocap_target = target + door.hand_pos() - door.tcp_pos()
        move = np.clip(GAIN * (mocap_target - door.data.mocap_pos[0]), -1.0, 1.0)
        return np.append(move, gripper)

    def _approach(self, door: DoorEnv, contact: np.ndarray, gripper: float,
                  z: float) -> np.ndarray | None:
        """Returns the action that brings the tcp down onto ``contact``, or None once engaged.

        Engaged = low and within a band around the contact point that is deep enough in y
        for the push/pull itself, so the expert does not fall back to approaching mid-motion.
        """
        tcp = door.tcp_pos()
        local = self._to_local(door, tcp)
        offset = np.abs(local - contact)
        if tcp[2] < z + 0.03 and offset[0] < 0.04 and offset[1] < 0.08:
            return None
        if np.hypot(*offset) > 0.03:
            # Travel above the door, and only descend once over the contact point.
            height = TRANSIT_Z if np.hypot(*offset) > 0.05 else float(tcp[2])
            return self._steer(door, self._to_world(door, contact, height), gripper)
        return self._steer(door, self._to_world(door, contact, z), gripper)


class FORWARD(_DoorExpert):
    """Closes the door: pushes the handle side of the panel until the door is shut."""

    def _act(self, env: TaskEnv) -> np.ndarray:
        door = _door(env)
        contact = np.array([PUSH_X, -0.06])
        approach = self._approach(door, contact, -1.0, WORK_Z)
        if approach is not None:
            return approach
        depth = min(MAX_DEPTH, ANGLE_GAIN * (0.0 - door.door_angle()) + 0.01)
        return self._steer(door, self._to_world(door, np.array([PUSH_X, depth]), WORK_Z), -1.0)

    def done(self, env: TaskEnv) -> bool:
        return bool(_door(env)._task_success())


class BACKWARD(_DoorExpert):
    """Opens the door: hooks the closed fingers behind the handle bar and pulls to -pi/3."""

    def _act(self, env: TaskEnv) -> np.ndarray:
        door = _door(env)
        approach = self._approach(door, HOOK, 1.0, HOOK_Z)
        if approach is not None:
            return approach
        remaining = door.door_angle() - INIT_ANGLE
        depth = float(np.clip(ANGLE_GAIN * remaining, -0.02, MAX_DEPTH))
        return self._steer(door, self._to_world(door, HOOK - np.array([0.0, depth]), HOOK_Z), 1.0)

    def done(self, env: TaskEnv) -> bool:
        return _door(env).backward_success()
