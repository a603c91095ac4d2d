"""Shared Sawyer/mocap machinery for the EARL door and peg twins (metaworld's Sawyer assets).

The twins load metaworld's own MJCF files with the official ``mujoco`` bindings (no
metaworld environment class is used) and apply EARL's changes through ``mujoco.MjSpec``
before compiling: two extra cameras (``doorview``, ``clearview``) and, for the door, a
lighter door with a narrower joint range (see :mod:`simulation.tasks.door`).

The hand follows metaworld's ``SawyerXYZEnv``: a mocap body welded to the hand, moved by
``0.01 * action[:3]`` per step and clipped to EARL's hand box; the gripper action drives the
two finger position actuators with ``ctrl = [a, -a]``; every step runs ``FRAME_SKIP``
physics steps.

Two details follow EARL's environment (metaworld v2 on mujoco-py, i.e. MuJoCo 2.1); with them
the hand starts exactly where EARL's did and the peg twin replays EARL's forward demos to
a tenth of a millimetre (``tests/simulation/test_earl_fidelity.py``):

* the weld is EARL's: torque scale 1, and its rotational rows regularised with the hand's
  *translational* inverse weight, as MuJoCo 2.x did for every weld row (MuJoCo 3 uses the
  rotational one, about 50x softer here, which metaworld 3 offsets with a torque scale of 5;
  that moves the hand a few millimetres off EARL's path and slides a grasped peg by as much);
* no ``mj_forward`` after the step: positions are read as ``mj_step`` leaves them, i.e.
  from before the last physics step's integration (2.5 ms old), as EARL's observations,
  rewards and success checks were. A refreshed observation runs 2.5 ms ahead of EARL's.
"""

from __future__ import annotations

import abc
import importlib.util
import logging
from pathlib import Path
from typing import Any

import mujoco
import numpy as np

from simulation.tasks.base import SimulationError, TaskEnv

logger = logging.getLogger(__name__)

HAND_LOW = np.array([-0.5, 0.40, 0.05])
"""Lower corner of the box the mocap target is clipped to (EARL / metaworld ``hand_low``)."""
HAND_HIGH = np.array([0.5, 1.0, 0.5])
"""Upper corner of the box the mocap target is clipped to (``hand_high``)."""
ACTION_SCALE = 0.01
"""Mocap displacement per unit action and step (metres)."""
FRAME_SKIP = 5
"""Physics steps per environment step (timestep 2.5 ms, so 12.5 ms per step)."""
HAND_QUAT = np.array([1.0, 0.0, 1.0, 0.0])
"""Mocap orientation metaworld writes every step (gripper pointing down; MuJoCo normalises it)."""
RESET_HAND_STEPS = 50
"""Environment steps metaworld spends driving the hand to its start position on reset."""
GRIPPER_SETTLE_STEPS = 10
"""Steps per correction while re-posing the hand (also closes the fingers for a grasp)."""
POSE_CORRECTIONS = 20
"""Most mocap-target corrections when re-posing the hand from an observed position."""
POSE_TOLERANCE = 5e-4
"""Hand-to-observed-position distance (m) at which re-posing stops correcting."""
WELD_DATA = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])
"""Mocap weld parameters EARL had (anchor, zero relative pose, torque scale 1: MuJoCo 2.x's
weld, whose ``[0, 0, 0, 1, 0, 0, 0]`` metaworld v2 wrote, had no torque scale)."""
CAMERA_EULER = (3.6, 2.3, 4.0)
"""Orientation (radians, xyz Euler) of both EARL cameras."""
EARL_CAMERAS: dict[str, tuple[tuple[float, float, float], float]] = {
    "doorview": ((0.8, 0.3, 0.8), 45.0),
    "clearview": ((1.2, 0.3, 0.8), 60.0),
}
"""EARL's added cameras: name -> (position, vertical field of view in degrees)."""


def metaworld_asset_path(xml_name: str) -> Path:
    """Returns the path of a metaworld Sawyer MJCF file (without importing metaworld).

    Raises:
        SimulationError: when metaworld is not installed or the file is missing.
    """
    spec = importlib.util.find_spec("metaworld")
    if spec is None or not spec.submodule_search_locations:
        raise SimulationError("metaworld is not installed; the Sawyer twins need its assets")
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / "sawyer_xyz" / xml_name
    if not path.is_file():
        raise SimulationError(f"metaworld asset {path} is missing")
    return path


def load_sawyer_spec(xml_name: str) -> mujoco.MjSpec:
    """Returns the editable spec of a metaworld Sawyer scene with EARL's two cameras added.

    Raises:
        SimulationError: when the asset is missing or does not parse.
    """
    path = metaworld_asset_path(xml_name)
    try:
        spec = mujoco.MjSpec.from_file(str(path))
    except ValueError as e:
        raise SimulationError(f"cannot parse {path}: {e}") from e
    for name, (pos, fovy) in EARL_CAMERAS.items():
        camera = spec.worldbody.add_camera(name=name, pos=list(pos), fovy=fovy)
        camera.alt.type = mujoco.mjtOrientation.mjORIENTATION_EULER
        camera.alt.euler = list(CAMERA_EULER)
    return spec


def compile_sawyer(spec: mujoco.MjSpec) -> tuple[mujoco.MjModel, mujoco.MjData]:
    """Compiles a Sawyer spec and sets the mocap weld as EARL had it; returns model and data.

    The weld gets :data:`WELD_DATA`, and each welded body's rotational inverse weight
    (``body_invweight0[:, 1]``, which MuJoCo 3 regularises a weld's rotational rows with)
    is set to its translational one, which MuJoCo 2.x used for all six rows. The welded
    bodies (the mocap and the hand) have no colliding geom, so nothing else reads it.

    Raises:
        SimulationError: when the spec does not compile, or a welded body has a colliding geom.
    """
    try:
        model = spec.compile()
    except ValueError as e:
        raise SimulationError(f"cannot compile the Sawyer scene: {e}") from e
    for i in range(model.neq):
        if model.eq_type[i] == mujoco.mjtEq.mjEQ_WELD:
            model.eq_data[i] = WELD_DATA
            for body in (int(model.eq_obj1id[i]), int(model.eq_obj2id[i])):
                geoms = np.flatnonzero(model.geom_bodyid == body)
                if np.any((model.geom_contype[geoms] != 0) | (model.geom_conaffinity[geoms] != 0)):
                    raise SimulationError(f"welded body {model.body(body).name!r} has a colliding "
                                          "geom; its inverse weight cannot be changed for the weld alone")
                model.body_invweight0[body, 1] = model.body_invweight0[body, 0]
    return model, mujoco.MjData(model)


class SawyerTaskEnv(TaskEnv, abc.ABC):
    """A :class:`TaskEnv` on a mocap-driven Sawyer: hand control, proprio, backward success.

    Subclasses still implement the scene-specific ``_task_*`` hooks, plus
    :meth:`backward_success` (the "undone" predicate the backward expert and evaluation use).
    ``info["backward_success"]`` is reported beside ``info["success"]`` on every step.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._mocap_id = int(self.model.body("mocap").mocapid[0])
        self._hand_id = self.model.body("hand").id
        self._right_claw = self.model.body("rightclaw").id
        self._left_claw = self.model.body("leftclaw").id
        self._right_tip = self.model.site("rightEndEffector").id
        self._left_tip = self.model.site("leftEndEffector").id

    # ------------------------------------------------------------------ hand
    def hand_pos(self) -> np.ndarray:
        """Returns the hand body's world position (EARL's ``hand xyz``), a copy."""
        return self.data.xpos[self._hand_id].copy()

    def tcp_pos(self) -> np.ndarray:
        """Returns the point between the two fingertips (where a grasp happens)."""
        return (self.data.site_xpos[self._right_tip] + self.data.site_xpos[self._left_tip]) / 2.0

    def gripper_opening(self) -> float:
        """Returns the finger separation normalised to ``[0, 1]`` (1 = fully open), as EARL."""
        gap = np.linalg.norm(self.data.xpos[self._right_claw] - self.data.xpos[self._left_claw])
        return float(np.clip(gap / 0.1, 0.0, 1.0))

    def _simulate(self, gripper: float) -> None:
        self.data.ctrl[:2] = (gripper, -gripper)
        # No mj_forward: positions stay those mj_step computed before its last integration,
        # as EARL (metaworld v2 on mujoco-py) observed them (see the module docstring).
        mujoco.mj_step(self.model, self.data, nstep=FRAME_SKIP)

    def _reset_hand(self, position: np.ndarray) -> None:
        """Resets the simulation and drives the hand to ``position`` with the gripper open."""
        mujoco.mj_resetData(self.model, self.data)
        for _ in range(RESET_HAND_STEPS):
            self.data.mocap_pos[self._mocap_id] = position
            self.data.mocap_quat[self._mocap_id] = HAND_QUAT
            self._simulate(-1.0)

    def _pose_hand(self, position: np.ndarray, opening: float) -> None:
        """Resets the simulation with the hand at ``position`` and the gripper opening
        (EARL's normalised ``[0, 1]``) approached by closing or opening for a few steps."""
        target = np.asarray(position, dtype=np.float64)
        self._reset_hand(np.clip(target, HAND_LOW, HAND_HIGH))
        gripper = 1.0 if opening < 0.5 else -1.0
        # The welded hand settles a few mm off its mocap target: steer the target by the
        # remaining error until the hand itself is where EARL observed it.
        for _ in range(POSE_CORRECTIONS):
            mujoco.mj_forward(self.model, self.data)
            error = target - self.hand_pos()
            if np.linalg.norm(error) < POSE_TOLERANCE:
                break
            mocap = self.data.mocap_pos[self._mocap_id] + error
            self.data.mocap_pos[self._mocap_id] = np.clip(mocap, HAND_LOW, HAND_HIGH)
            for _ in range(GRIPPER_SETTLE_STEPS):
                self._simulate(gripper)
        mujoco.mj_forward(self.model, self.data)

    @abc.abstractmethod
    def set_from_earl_observation(self, vector: np.ndarray) -> None:
        """Puts the scene in the state EARL's observation ``vector`` describes (hand, gripper,
        object), so EARL's state demos can be re-rendered as pixel demos. Raises ValueError
        for a vector of the wrong length or with non-finite values."""

    def _check_earl_vector(self, vector: np.ndarray) -> np.ndarray:
        vector = np.asarray(vector, dtype=np.float64).reshape(-1)
        if vector.shape != (self.info.state_dim,) or not np.all(np.isfinite(vector)):
            raise ValueError(f"vector: expected {self.info.state_dim} finite numbers, got shape {vector.shape}")
        return vector

    def _task_step(self, action: np.ndarray) -> None:
        target = self.data.mocap_pos[self._mocap_id] + ACTION_SCALE * action[:3]
        self.data.mocap_pos[self._mocap_id] = np.clip(target, HAND_LOW, HAND_HIGH)
        self.data.mocap_quat[self._mocap_id] = HAND_QUAT
        self._simulate(float(action[3]))

    def _task_proprio(self) -> np.ndarray:
        return np.append(self.hand_pos(), self.gripper_opening()).astype(np.float32)

    # ------------------------------------------------------------------ success
def parse_init(options: dict[str, Any]) -> str:
    """Returns ``options["init"]`` (default ``"initial"``).

    Raises:
        ValueError: for anything but ``"initial"`` or ``"goal"``.
    """
    init = options.get("init", "initial")
    if init not in ("initial", "goal"):
        raise ValueError(f"options['init']: must be 'initial' or 'goal', got {init!r}")
    return str(init)
