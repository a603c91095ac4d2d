"""EARL's door-closing twin: a Sawyer pushes a safe door shut (metaworld ``sawyer_door_pull.xml``).

State observation (14, EARL's layout): hand xyz, gripper opening, handle xyz, then the
7-vector goal ``(hand xyz, gripper, handle xyz)`` of the closed door. Success: the handle
within 2 cm of its closed position. Pixel mode renders ``doorview`` (EARL's camera); proprio
is hand xyz + gripper.

Start distributions (``reset(options={"init": ...})``), as EARL's ``SawyerDoorV2``:
``"initial"`` — door open at ``-pi/3 + U(0, pi/20)``; ``"goal"`` — nearly closed at
``U(-pi/20, 0)``; the hand starts at (0, 0.4, 0.2) in both. ``options={"door_angle": a}``
overrides the drawn angle (used to replay recorded demonstrations).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import mujoco
import numpy as np

from simulation.tasks.base import PAPER_RESET_INTERVAL, TaskInfo
from simulation.tasks.sawyer import ACTION_SCALE, SawyerTaskEnv, compile_sawyer, load_sawyer_spec, parse_init

logger = logging.getLogger(__name__)

DOOR_POS = np.array([0.1, 0.95, 0.1])
"""World position of the door (safe) body in EARL's scene."""
DOOR_RANGE = (-1.4, 0.0)
"""EARL's door hinge range (radians; 0 = closed, negative = open towards the robot)."""
DOOR_DENSITY = 50.0
"""EARL's density of the door geoms (kg/m^3): a light door the hand can push."""
INIT_ANGLE = -math.pi / 3
"""Mean-ish open angle of the forward start distribution (plus ``U(0, pi/20)``)."""
ANGLE_NOISE = math.pi / 20
"""Width of the uniform angle noise in both start distributions."""
HAND_INIT = np.array([0.0, 0.4, 0.2])
"""Mocap target the hand is driven to on every reset."""
GOAL = np.array([0.29072163, 0.74286009, 0.10003595, 1.0, 0.29072163, 0.74286009, 0.10003595])
"""EARL's forward goal vector: handle at the closed (0 rad) door, gripper open."""
INITIAL_HANDLE = np.array([0.01007495, 0.47104556, 0.10003595])
"""Handle position at EARL's initial angle ``-pi/3`` (the backward task's target)."""
SUCCESS_THRESHOLD = 0.02
"""Handle-to-target distance that counts as success (forward and backward)."""


class DoorEnv(SawyerTaskEnv):
    """Door closing (forward) / opening (backward) on metaworld's Sawyer (see module docstring)."""

    info = TaskInfo(name="door", eval_horizon=300, reset_interval=PAPER_RESET_INTERVAL,
                    earl_reset_interval=200_000, move_scale=ACTION_SCALE,
                    success_threshold=SUCCESS_THRESHOLD, cameras=("doorview",),
                    state_dim=14, proprio_dim=4, action_dim=4, state_goals=(tuple(GOAL.tolist()),),
                    operator_rule=None)

    def _task_build(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        spec = load_sawyer_spec("sawyer_door_pull.xml")
        spec.body("door").pos = DOOR_POS.tolist()
        spec.joint("doorjoint").range = list(DOOR_RANGE)
        for geom in spec.body("door_link").geoms:
            geom.density = DOOR_DENSITY
        model, data = compile_sawyer(spec)
        self._door_qpos = int(model.joint("doorjoint").qposadr[0])
        self._door_qvel = int(model.joint("doorjoint").dofadr[0])
        self._handle_id = model.geom("handle").id
        self._hinge_id = model.body("door_link").id
        # The handle's polar angle around the hinge at 0 rad, to invert handle -> door angle.
        mujoco.mj_forward(model, data)
        offset = data.geom_xpos[self._handle_id, :2] - data.xpos[self._hinge_id, :2]
        self._handle_phase = math.atan2(offset[1], offset[0])
        return model, data

    # ------------------------------------------------------------------ scene access
    def handle_pos(self) -> np.ndarray:
        """Returns the handle geom's world position (EARL's object position), a copy."""
        return self.data.geom_xpos[self._handle_id].copy()

    def hinge_pos(self) -> np.ndarray:
        """Returns the door hinge's world position."""
        return self.data.xpos[self._hinge_id].copy()

    def door_angle(self) -> float:
        """Returns the hinge angle in radians (0 closed, negative open)."""
        return float(self.data.qpos[self._door_qpos])

    def angle_for_handle(self, handle_xy: np.ndarray) -> float:
        """Returns the door angle that puts the handle at ``handle_xy`` (world x, y)."""
        offset = np.asarray(handle_xy, dtype=np.float64)[:2] - self.hinge_pos()[:2]
        angle = math.atan2(offset[1], offset[0]) - self._handle_phase
        return float((angle + math.pi) % (2 * math.pi) - math.pi)

    def set_door_angle(self, angle: float) -> None:
        """Sets the hinge angle (clipped to the joint range) at rest and recomputes positions."""
        self.data.qpos[self._door_qpos] = float(np.clip(angle, *DOOR_RANGE))
        self.data.qvel[self._door_qvel] = 0.0
        mujoco.mj_forward(self.model, self.data)

    def set_from_earl_observation(self, vector: np.ndarray) -> None:
        """Hand and gripper from EARL's first four numbers; the door angle that puts the
        handle at the observed handle position."""
        vector = self._check_earl_vector(vector)
        self._pose_hand(vector[:3], float(vector[3]))
        self.set_door_angle(self.angle_for_handle(vector[4:6]))

    # ------------------------------------------------------------------ task hooks
    def _task_reset(self, rng: np.random.Generator, options: dict[str, Any]) -> None:
        init = parse_init(options)
        self._reset_hand(HAND_INIT)
        if "door_angle" in options:
            angle = float(options["door_angle"])
        elif init == "initial":
            angle = INIT_ANGLE + rng.uniform(0.0, ANGLE_NOISE)
        else:
            angle = rng.uniform(-ANGLE_NOISE, 0.0)
        self.set_door_angle(angle)

    def _task_state(self) -> np.ndarray:
        return np.concatenate([self.hand_pos(), [self.gripper_opening()], self.handle_pos(),
                               GOAL]).astype(np.float32)

    def _task_success(self) -> bool:
        return bool(np.linalg.norm(self.handle_pos() - GOAL[4:]) <= SUCCESS_THRESHOLD)

    def backward_success(self) -> bool:
        """Returns whether the handle is back within 2 cm of its ``-pi/3`` (initial) position."""
        return bool(np.linalg.norm(self.handle_pos() - INITIAL_HANDLE) <= SUCCESS_THRESHOLD)
