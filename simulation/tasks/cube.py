"""Franka-like cube grasp: a hand with two actuated fingers lifts a 5 cm cube.

The paper's real-robot task, as a fast MuJoCo twin (``simulation/assets/cube_grasp.xml``):
the hand is a free, gravity-compensated body welded to a mocap target (like a Cartesian
impedance controller tracking its target), its two fingers are position-servoed slide
joints, the cube is a free body.

* action (5): EE ``Δxyz = 1 cm · a[:3]``, ``Δyaw = 0.05 rad · a[3]``, ``a[4] > 0`` closes the
  gripper (else opens). The target is clipped to the workspace box; one step is 0.1 s
  (10 Hz, the runtime's default rate), 50 physics substeps over which the target moves
  linearly, so the hand never jerks.
* pixels: ``wrist`` (on the hand, looking down between the fingers) and ``third_person``;
  ``proprio`` (4) = EE xyz + gripper width (m between the pads).
* state (12): EE xyz, EE yaw, gripper width, cube xyz, cube quaternion (w, x, y, z).
* success: the cube's centre at least 5 cm above its resting height while both fingers
  touch it and the gripper is commanded closed.

Starts: ``init="initial"`` puts the hand 15 cm above the centre, open, and the cube on
the table; ``split="id"`` (default) draws the cube within ±3 cm of the centre with
``|yaw| <= 30°``, ``split="ood"`` between 4.5 and 9 cm from the centre (per axis, at least
one axis out of the ID box) with ``30° < |yaw| <= 45°`` (the cube's symmetry makes 45° the
widest yaw). ``init="goal"`` starts holding the cube 6–9 cm up in a closed grasp (where the
backward expert starts). :meth:`CubeGraspEnv.backward_success`: the cube back on the table
inside the ID box, the gripper open and lifted clear.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import mujoco
import numpy as np

from simulation.tasks.base import TaskEnv, TaskInfo
from simulation.tasks.tabletop import load_model

logger = logging.getLogger(__name__)

MOVE_SCALE = 0.01
"""EE displacement per unit action (m)."""
YAW_SCALE = 0.05
"""EE rotation about z per unit action (rad)."""
SUBSTEPS = 50
"""Physics steps per environment step (0.002 s each: 10 Hz control)."""
WORKSPACE_LOW = np.array([-0.15, -0.15, 0.022])
"""Lowest EE target (m); z keeps the fingertips 2 mm above the table."""
WORKSPACE_HIGH = np.array([0.15, 0.15, 0.25])
"""Highest EE target (m)."""
YAW_LIMIT = np.pi / 2
"""EE yaw is clipped to ``[-YAW_LIMIT, YAW_LIMIT]``."""
HAND_START = np.array([0.0, 0.0, 0.15])
"""EE position at an ``init="initial"`` reset."""
FINGER_OPEN = 0.04
"""Finger servo target when open (each pad 4 cm from the centre)."""
FINGER_CLOSED = 0.0
"""Finger servo target when closed (the cube stops the pads first)."""
CUBE_HALF = 0.025
"""Half the cube's edge (m)."""
REST_Z = CUBE_HALF
"""The cube's centre height when it rests on the table."""
LIFT_HEIGHT = 0.05
"""Lift above ``REST_Z`` that counts as success."""
ID_BOX = 0.03
"""In-distribution cube positions: ``|x|, |y| <= ID_BOX``."""
OOD_BOX = (0.045, 0.09)
"""Out-of-distribution positions: inside ``OOD_BOX[1]`` per axis, outside ``OOD_BOX[0]`` on one."""
ID_YAW = np.pi / 6
"""In-distribution cube yaw: ``|yaw| <= ID_YAW``; out of distribution above it, up to 45°."""
CLEARANCE = 0.08
"""Backward success: the EE at least this high above the resting cube's centre (m)."""
OPEN_WIDTH = 0.06
"""Gripper width above which the gripper counts as open (backward success)."""
REACH_LOW = tuple(float(v) for v in WORKSPACE_LOW[:2])
"""Lowest x, y of a cube centre the forward agent can grasp from (the hand's workspace box:
the pinch point can be brought over any such cube, at any yaw)."""
REACH_HIGH = tuple(float(v) for v in WORKSPACE_HIGH[:2])
"""Highest x, y of a cube centre the forward agent can grasp from."""
REST_TOLERANCE = 0.005
"""A cube centre within this of ``REST_Z`` rests on the table (as :meth:`backward_success`), m."""


def in_reach(cube: Iterable[float]) -> bool:
    """Returns whether a cube centre rests on the table (on a face: not held, not tipped onto an
    edge, not fallen to the floor) inside the box the forward agent can grasp from: the cube
    task's operator rule (:meth:`CubeGraspEnv.scene_lost` is its negation)."""
    x, y, z = (float(v) for v in cube)
    return (abs(z - REST_Z) <= REST_TOLERANCE and REACH_LOW[0] <= x <= REACH_HIGH[0]
            and REACH_LOW[1] <= y <= REACH_HIGH[1])


def yaw_quat(yaw: float) -> np.ndarray:
    """Returns the quaternion (w, x, y, z) of a rotation by ``yaw`` about z."""
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


def quat_yaw(quat: np.ndarray) -> float:
    """Returns the rotation about z of a quaternion (w, x, y, z) (ZYX Euler yaw)."""
    w, x, y, z = quat
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


class CubeGraspEnv(TaskEnv):
    """Franka-like cube grasp (see the module docstring). Never terminates."""

    info = TaskInfo(name="cube", eval_horizon=100, reset_interval=None, earl_reset_interval=None,
                    move_scale=MOVE_SCALE,
                    success_threshold=LIFT_HEIGHT, cameras=("wrist", "third_person"),
                    state_dim=12, proprio_dim=4, action_dim=5, state_goals=(),
                    operator_rule=(f"the cube not resting on the table (its centre more than {REST_TOLERANCE:g} m "
                                   f"off {REST_Z:g} m) or its centre outside x, y in [{REACH_LOW[0]:g}, "
                                   f"{REACH_HIGH[0]:g}] m (the hand's workspace box)"))

    # ------------------------------------------------------------------ task hooks
    def _task_build(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        model = load_model("cube_grasp.xml")
        data = mujoco.MjData(model)
        def name(kind: mujoco.mjtObj, n: str) -> int:
            return mujoco.mj_name2id(model, kind, n)
        self._cube_qpos = model.jnt_qposadr[name(mujoco.mjtObj.mjOBJ_JOINT, "cube")]
        self._cube_qvel = model.jnt_dofadr[name(mujoco.mjtObj.mjOBJ_JOINT, "cube")]
        self._finger_qpos = [model.jnt_qposadr[name(mujoco.mjtObj.mjOBJ_JOINT, f)]
                             for f in ("finger_left", "finger_right")]
        self._hand_qpos = model.jnt_qposadr[name(mujoco.mjtObj.mjOBJ_JOINT, "hand")]
        self._hand_body = name(mujoco.mjtObj.mjOBJ_BODY, "hand")
        self._cube_geom = name(mujoco.mjtObj.mjOBJ_GEOM, "cube")
        self._pad_geoms = (name(mujoco.mjtObj.mjOBJ_GEOM, "finger_left"),
                           name(mujoco.mjtObj.mjOBJ_GEOM, "finger_right"))
        self._yaw = 0.0
        return model, data

    def _task_reset(self, rng: np.random.Generator, options: dict[str, Any]) -> None:
        init = options.get("init", "initial")
        split = options.get("split", "id")
        if init not in ("initial", "goal"):
            raise ValueError(f"options['init']: must be 'initial' or 'goal', got {init!r}")
        if split not in ("id", "ood"):
            raise ValueError(f"options['split']: must be 'id' or 'ood', got {split!r}")
        mujoco.mj_resetData(self.model, self.data)
        if init == "initial":
            xy, yaw = self._sample_cube_pose(rng, split)
            self._place(hand=HAND_START, hand_yaw=0.0, cube=np.array([*xy, REST_Z]), cube_yaw=yaw,
                        fingers=FINGER_OPEN)
        else:
            self._start_in_grasp(rng)

    def _task_step(self, action: np.ndarray) -> None:
        start, start_yaw = self.ee_target(), self._yaw
        target = np.clip(start + MOVE_SCALE * action[:3], WORKSPACE_LOW, WORKSPACE_HIGH)
        target_yaw = float(np.clip(start_yaw + YAW_SCALE * action[3], -YAW_LIMIT, YAW_LIMIT))
        self.data.ctrl[:] = FINGER_CLOSED if action[4] > 0 else FINGER_OPEN
        for k in range(1, SUBSTEPS + 1):
            # The hand tracks its target smoothly, as an impedance controller would.
            fraction = k / SUBSTEPS
            self.data.mocap_pos[0] = start + fraction * (target - start)
            self.data.mocap_quat[0] = yaw_quat(start_yaw + fraction * (target_yaw - start_yaw))
            mujoco.mj_step(self.model, self.data)
        self._yaw = target_yaw

    def _task_state(self) -> np.ndarray:
        return np.concatenate([self.ee_pos(), [self._yaw, self.gripper_width()], self.cube_pos(),
                               self.data.qpos[self._cube_qpos + 3:self._cube_qpos + 7]]).astype(np.float32)

    def _task_proprio(self) -> np.ndarray:
        return np.array([*self.ee_pos(), self.gripper_width()], dtype=np.float32)

    def _task_success(self) -> bool:
        return self.forward_success()

    # ------------------------------------------------------------------ public helpers
    def ee_pos(self) -> np.ndarray:
        """Returns the measured EE (pinch point) position, m."""
        return self.data.xpos[self._hand_body].copy()

    def ee_target(self) -> np.ndarray:
        """Returns the commanded EE position (the mocap target), m."""
        return self.data.mocap_pos[0].copy()

    def ee_yaw(self) -> float:
        """Returns the commanded EE yaw about z, rad."""
        return self._yaw

    def gripper_width(self) -> float:
        """Returns the distance between the finger pads, m."""
        return float(self.data.qpos[self._finger_qpos[0]] + self.data.qpos[self._finger_qpos[1]])

    def gripper_closing(self) -> bool:
        """Returns whether the gripper is commanded closed."""
        return bool(self.data.ctrl[0] < 0.5 * FINGER_OPEN)

    def cube_pos(self) -> np.ndarray:
        """Returns the cube's centre, m."""
        return self.data.qpos[self._cube_qpos:self._cube_qpos + 3].copy()

    def cube_yaw(self) -> float:
        """Returns the cube's yaw about z, rad."""
        return quat_yaw(self.data.qpos[self._cube_qpos + 3:self._cube_qpos + 7])

    def finger_contacts(self) -> tuple[bool, bool]:
        """Returns whether the (left, right) finger pad touches the cube."""
        touching = [False, False]
        for contact in self.data.contact[:self.data.ncon]:
            pair = {contact.geom1, contact.geom2}
            if self._cube_geom in pair:
                for i, pad in enumerate(self._pad_geoms):
                    touching[i] = touching[i] or pad in pair
        return touching[0], touching[1]

    def grasped(self) -> bool:
        """Returns whether the cube is held: gripper commanded closed, both pads touching it."""
        return self.gripper_closing() and all(self.finger_contacts())

    def forward_success(self) -> bool:
        """Returns whether the cube is lifted >= 5 cm in a closed grasp (the task's success)."""
        return bool(self.cube_pos()[2] >= REST_Z + LIFT_HEIGHT and self.grasped())

    def scene_lost(self) -> bool:
        """Returns whether the cube is out of the forward agent's reach (:func:`in_reach`)."""
        return not in_reach(self.cube_pos())

    def backward_success(self) -> bool:
        """Returns whether the cube is back on the table in the ID box with the gripper
        open and lifted clear (the backward task's goal)."""
        cube = self.cube_pos()
        return bool(cube[2] <= REST_Z + 0.005 and np.all(np.abs(cube[:2]) <= ID_BOX)
                    and self.gripper_width() >= OPEN_WIDTH and not any(self.finger_contacts())
                    and self.ee_pos()[2] >= REST_Z + CLEARANCE)

    def get_state(self) -> dict[str, np.ndarray]:
        """Returns the simulator state, with the finger commands (``ctrl``), the EE yaw and
        the solver's warm start (so a restored state continues bit for bit)."""
        state = super().get_state()
        state["ctrl"] = self.data.ctrl.copy()
        state["qacc_warmstart"] = self.data.qacc_warmstart.copy()
        state["yaw"] = np.array([self._yaw])
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Restores a state from :meth:`get_state` (``ctrl``, ``yaw``, ``qacc_warmstart`` optional)."""
        if "ctrl" in state:
            self.data.ctrl[:] = state["ctrl"]
        if "yaw" in state:
            self._yaw = float(np.asarray(state["yaw"]).reshape(-1)[0])
        else:
            self._yaw = quat_yaw(np.asarray(state["mocap_quat"])[0])
        super().set_state(state)
        if "qacc_warmstart" in state:  # after mj_forward, which does not restore it
            self.data.qacc_warmstart[:] = state["qacc_warmstart"]

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _sample_cube_pose(rng: np.random.Generator, split: str) -> tuple[np.ndarray, float]:
        if split == "id":
            return rng.uniform(-ID_BOX, ID_BOX, 2), float(rng.uniform(-ID_YAW, ID_YAW))
        while True:
            xy = rng.uniform(-OOD_BOX[1], OOD_BOX[1], 2)
            if np.max(np.abs(xy)) > OOD_BOX[0]:
                break
        yaw = float(rng.uniform(ID_YAW, np.pi / 4) * rng.choice([-1.0, 1.0]))
        return xy, yaw

    def _place(self, *, hand: np.ndarray, hand_yaw: float, cube: np.ndarray, cube_yaw: float,
               fingers: float) -> None:
        self.data.mocap_pos[0] = hand
        self.data.mocap_quat[0] = yaw_quat(hand_yaw)
        self.data.qpos[self._hand_qpos:self._hand_qpos + 3] = hand
        self.data.qpos[self._hand_qpos + 3:self._hand_qpos + 7] = yaw_quat(hand_yaw)
        self._yaw = hand_yaw
        self.data.qpos[self._cube_qpos:self._cube_qpos + 3] = cube
        self.data.qpos[self._cube_qpos + 3:self._cube_qpos + 7] = yaw_quat(cube_yaw)
        for address in self._finger_qpos:
            self.data.qpos[address] = fingers
        self.data.ctrl[:] = fingers
        mujoco.mj_forward(self.model, self.data)

    def _start_in_grasp(self, rng: np.random.Generator) -> None:
        """Holds the cube in a closed grasp 6-9 cm up, then lets the grip settle (0.2 s)."""
        xy = rng.uniform(-ID_BOX, ID_BOX, 2)
        yaw = float(rng.uniform(-ID_YAW, ID_YAW))
        height = REST_Z + rng.uniform(0.06, 0.09)
        position = np.array([*xy, height])
        # The pads start 0.5 mm inside the faces so the grip holds from the first substep.
        self._place(hand=position, hand_yaw=yaw, cube=position, cube_yaw=yaw, fingers=CUBE_HALF - 0.0005)
        self.data.ctrl[:] = FINGER_CLOSED
        for _ in range(100):
            mujoco.mj_step(self.model, self.data)
