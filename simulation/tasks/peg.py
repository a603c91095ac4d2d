"""EARL's peg-insertion twin: a Sawyer inserts a peg sideways into a box (metaworld
``sawyer_peg_insertion_side.xml``).

State observation (14, EARL's layout): hand xyz, gripper opening, peg-head xyz, then the
7-vector goal ``(hand xyz, gripper, peg-head xyz)`` with the head inside the box's hole.
Success: the peg head within 5 cm of (-0.27, 0.6, 0.13). Pixel mode renders ``clearview``;
proprio is hand xyz + gripper.

Start distributions (``reset(options={"init": ...})``), as EARL's ``SawyerPegV2``:
``"initial"`` — peg lying on the table at ``U((0, 0.5, 0.02), (0.2, 0.7, 0.02))`` (its head
0.1 m further in -x); ``"goal"`` — peg inserted, its centre at the goal head + 0.1 x plus
``U(-0.02, 0.02)`` per axis. The hand starts at (0, 0.6, 0.2); the box sits at (-0.3, 0.6, 0).
``options={"peg_pos": xyz}`` overrides the drawn peg centre (used to replay demonstrations).
"""

from __future__ import annotations

import logging
from typing import Any

import mujoco
import numpy as np

from simulation.tasks.base import PAPER_RESET_INTERVAL, TaskInfo
from simulation.tasks.sawyer import ACTION_SCALE, SawyerTaskEnv, compile_sawyer, load_sawyer_spec, parse_init

logger = logging.getLogger(__name__)

BOX_POS = np.array([-0.3, 0.6, 0.0])
"""World position of the box with the hole (EARL: goal head - (0.03, 0, 0.13))."""
HAND_INIT = np.array([0.0, 0.6, 0.2])
"""Mocap target the hand is driven to on every reset."""
PEG_LOW = np.array([0.0, 0.5, 0.02])
"""Lower corner of the forward start distribution of the peg centre."""
PEG_HIGH = np.array([0.2, 0.7, 0.02])
"""Upper corner of the forward start distribution of the peg centre."""
HEAD_OFFSET = np.array([-0.1, 0.0, 0.0])
"""Peg head relative to the peg centre (peg frame = world frame at rest)."""
GOAL = np.array([0.0, 0.6, 0.2, 1.0, -0.27, 0.6, 0.13])
"""EARL's forward goal vector: the head 7 cm inside the hole, the hand back home and open."""
GOAL_NOISE = 0.02
"""Half-width of the uniform noise on the inserted peg's centre in the goal distribution."""
SUCCESS_THRESHOLD = 0.05
"""Head-to-goal distance that counts as success (and head-to-start-region for backward)."""


def distance_to_box(point: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    """Returns the Euclidean distance from ``point`` to the axis-aligned box ``[low, high]``."""
    return float(np.linalg.norm(point - np.clip(point, low, high)))


class PegEnv(SawyerTaskEnv):
    """Peg insertion (forward) / removal (backward) on metaworld's Sawyer (see module docstring)."""

    info = TaskInfo(name="peg", eval_horizon=200, reset_interval=PAPER_RESET_INTERVAL,
                    earl_reset_interval=100_000, move_scale=ACTION_SCALE,
                    success_threshold=SUCCESS_THRESHOLD, cameras=("clearview",),
                    state_dim=14, proprio_dim=4, action_dim=4, state_goals=(tuple(GOAL.tolist()),),
                    operator_rule=None)

    def _task_build(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        spec = load_sawyer_spec("sawyer_peg_insertion_side.xml")
        spec.body("box").pos = BOX_POS.tolist()
        model, data = compile_sawyer(spec)
        joint = model.body("peg").jntadr[0]
        self._peg_qpos = int(model.jnt_qposadr[joint])
        self._peg_qvel = int(model.jnt_dofadr[joint])
        self._head_id = model.site("pegHead").id
        self._grasp_id = model.site("pegGrasp").id
        self._peg_id = model.body("peg").id
        return model, data

    # ------------------------------------------------------------------ scene access
    def peg_head(self) -> np.ndarray:
        """Returns the peg head site's world position (EARL's object position), a copy."""
        return self.data.site_xpos[self._head_id].copy()

    def peg_grasp(self) -> np.ndarray:
        """Returns the peg's grasp site (3 cm from the centre towards its end), a copy."""
        return self.data.site_xpos[self._grasp_id].copy()

    def peg_pos(self) -> np.ndarray:
        """Returns the peg centre's world position, a copy."""
        return self.data.xpos[self._peg_id].copy()

    def peg_axis(self) -> np.ndarray:
        """Returns the unit vector from the peg's head to its end (``+x`` at rest)."""
        return self.data.xmat[self._peg_id].reshape(3, 3)[:, 0].copy()

    def set_peg_pos(self, position: np.ndarray) -> None:
        """Places the peg centre at ``position``, axis-aligned and at rest; recomputes positions."""
        qpos = slice(self._peg_qpos, self._peg_qpos + 7)
        self.data.qpos[qpos] = np.concatenate([np.asarray(position, dtype=np.float64), [1, 0, 0, 0]])
        self.data.qvel[self._peg_qvel:self._peg_qvel + 6] = 0.0
        mujoco.mj_forward(self.model, self.data)

    def set_from_earl_observation(self, vector: np.ndarray) -> None:
        """Hand and gripper from EARL's first four numbers; the peg axis-aligned with its head
        at the observed head position (a peg tilted in the hand is drawn level)."""
        vector = self._check_earl_vector(vector)
        self._pose_hand(vector[:3], float(vector[3]))
        self.set_peg_pos(vector[4:7] - HEAD_OFFSET)

    # ------------------------------------------------------------------ task hooks
    def _task_reset(self, rng: np.random.Generator, options: dict[str, Any]) -> None:
        init = parse_init(options)
        self._reset_hand(HAND_INIT)
        if "peg_pos" in options:
            position = np.asarray(options["peg_pos"], dtype=np.float64).reshape(3)
        elif init == "initial":
            position = rng.uniform(PEG_LOW, PEG_HIGH)
        else:
            position = GOAL[4:] - HEAD_OFFSET + rng.uniform(-GOAL_NOISE, GOAL_NOISE, 3)
        self.set_peg_pos(position)

    def _task_state(self) -> np.ndarray:
        return np.concatenate([self.hand_pos(), [self.gripper_opening()], self.peg_head(),
                               GOAL]).astype(np.float32)

    def _task_success(self) -> bool:
        return bool(np.linalg.norm(self.peg_head() - GOAL[4:]) <= SUCCESS_THRESHOLD)

    def backward_success(self) -> bool:
        """Returns whether the peg head is within 5 cm of its start region (the peg out of the box).

        EARL's backward goals are sampled start configurations; its backward demos end with
        the head within 5 cm of one of them, hence within 5 cm of the region.
        """
        return distance_to_box(self.peg_head(), PEG_LOW + HEAD_OFFSET,
                               PEG_HIGH + HEAD_OFFSET) <= SUCCESS_THRESHOLD
