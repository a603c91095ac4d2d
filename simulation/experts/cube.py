"""Scripted cube-grasp experts: grasp and lift (forward); set down near the centre (backward).

Both are feedback scripts that pick their phase from the current state every step, so a
slipped or dropped cube is simply approached again:

* forward: open, turn the fingers square to the cube, fly over it, descend, close; once
  both pads hold it, lift;
* backward: while holding the cube, carry it over the centre, lower it onto the table and
  open; with the cube resting in the centre box, rise clear; a cube lying anywhere else is
  first picked up as forward does.
"""

from __future__ import annotations

import logging

import numpy as np

from simulation.experts import Expert
from simulation.tasks.base import SimulationError, TaskEnv
from simulation.tasks.cube import (CLEARANCE, ID_BOX, LIFT_HEIGHT, MOVE_SCALE, OPEN_WIDTH, REST_Z,
                                   YAW_SCALE, CubeGraspEnv)

logger = logging.getLogger(__name__)

HOVER_HEIGHT = REST_Z + 0.06
"""EE height for flying over the cube (fingertips 4 cm above its top)."""
GRASP_HEIGHT = REST_Z
"""EE height at which the pads close on a resting cube (its mid-height)."""
LIFT_TARGET = REST_Z + LIFT_HEIGHT + 0.025
"""EE height the forward expert lifts to (2.5 cm beyond the success line)."""
XY_TOLERANCE = 0.004
"""Horizontal alignment (m) required before descending."""
YAW_TOLERANCE = 0.06
"""Yaw alignment (rad) required before descending."""
PLACE_BOX = 0.5 * ID_BOX
"""The backward expert sets the cube down within this distance of the centre (per axis)."""


def _cube_env(env: TaskEnv) -> CubeGraspEnv:
    base = env.unwrapped
    if not isinstance(base, CubeGraspEnv):
        raise SimulationError(f"cube expert needs a CubeGraspEnv, got {type(base).__name__}")
    return base


def _action(env: CubeGraspEnv, target: np.ndarray, yaw: float, close: bool) -> np.ndarray:
    """Returns the action moving the EE target toward ``target``/``yaw`` at full speed."""
    move = np.clip((target - env.ee_target()) / MOVE_SCALE, -1.0, 1.0)
    turn = np.clip((yaw - env.ee_yaw()) / YAW_SCALE, -1.0, 1.0)
    return np.array([*move, turn, 1.0 if close else -1.0])


def square_yaw(env: CubeGraspEnv) -> float:
    """Returns the EE yaw nearest to the current one that puts the pads flat on two faces."""
    offset = (env.cube_yaw() - env.ee_yaw() + np.pi / 4) % (np.pi / 2) - np.pi / 4
    return env.ee_yaw() + offset


def pick_action(env: CubeGraspEnv) -> np.ndarray:
    """Returns the script's action for grasping the cube and lifting it."""
    cube, ee = env.cube_pos(), env.ee_target()
    if env.grasped():
        return _action(env, np.array([*ee[:2], LIFT_TARGET]), env.ee_yaw(), close=True)
    yaw = square_yaw(env)
    aligned = (np.linalg.norm(cube[:2] - ee[:2]) < XY_TOLERANCE
               and abs(yaw - env.ee_yaw()) < YAW_TOLERANCE)
    if not aligned:
        # Rise before moving sideways so the fingers never sweep into the cube.
        height = HOVER_HEIGHT if ee[2] >= HOVER_HEIGHT - 0.01 else ee[2] + MOVE_SCALE
        low = ee[2] < HOVER_HEIGHT - 0.01
        target = np.array([*(ee[:2] if low else cube[:2]), height])
        return _action(env, target, env.ee_yaw() if low else yaw, close=False)
    at_height = abs(ee[2] - cube[2]) < 0.003
    return _action(env, np.array([*cube[:2], cube[2]]), yaw, close=at_height)


def place_action(env: CubeGraspEnv) -> np.ndarray:
    """Returns the script's action for setting the held cube down near the centre and opening."""
    cube, ee = env.cube_pos(), env.ee_target()
    resting = cube[2] <= REST_Z + 0.003
    in_box = bool(np.all(np.abs(cube[:2]) <= ID_BOX))
    if resting and in_box:
        # Let go first, then rise clear of the cube.
        if env.gripper_width() < OPEN_WIDTH or any(env.finger_contacts()):
            return _action(env, ee, env.ee_yaw(), close=False)
        return _action(env, np.array([*ee[:2], REST_Z + CLEARANCE + 0.02]), env.ee_yaw(), close=False)
    if not env.grasped():
        return pick_action(env)
    hold_offset = ee - cube
    if np.max(np.abs(cube[:2])) > PLACE_BOX:
        carry_height = max(ee[2], HOVER_HEIGHT)
        target = np.array([-hold_offset[0], -hold_offset[1], carry_height])
        return _action(env, target, env.ee_yaw(), close=True)
    # Over the centre: lower until the cube touches the table (the hand then stops there).
    return _action(env, np.array([*ee[:2], REST_Z + hold_offset[2] - 0.002]), env.ee_yaw(), close=True)


class Forward(Expert):
    """Grasps the cube and lifts it 7.5 cm."""

    def _act(self, env: TaskEnv) -> np.ndarray:
        return pick_action(_cube_env(env))

    def done(self, env: TaskEnv) -> bool:
        """Returns whether the cube is lifted in a closed grasp (the task's success)."""
        return _cube_env(env).forward_success()


class Backward(Expert):
    """Sets the cube down near the centre, opens and rises clear."""

    def _act(self, env: TaskEnv) -> np.ndarray:
        return place_action(_cube_env(env))

    def done(self, env: TaskEnv) -> bool:
        """Returns whether the backward task's goal is reached."""
        return _cube_env(env).backward_success()


FORWARD = Forward
BACKWARD = Backward
