"""The Franka's Cartesian motion, pure (no panda-py): its config (connection, limits, gains),
quaternion maths (scalar-last x, y, z, w) and the setpoint one action gives from the measured
pose (:func:`compute_setpoint`). :mod:`hardware.franka` drives the arm with them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from hardware.interfaces import Workspace

HOME_JOINTS = (0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4)
"""panda-py's ``constants.JOINT_POSITION_START``: gripper above the table, pointing down."""


# --------------------------------------------------------------------------- config
@dataclass(frozen=True, kw_only=True)
class FrankaConfig:
    """Connection, limits and gains of one Franka arm."""

    hostname: str
    """IP or host name of the robot's control box (FCI must be active in Desk)."""
    workspace: Workspace = field(
        default_factory=lambda: Workspace(low=(0.30, -0.25, 0.02), high=(0.70, 0.25, 0.45))
    )
    """Box (m, robot base frame) no setpoint ever leaves."""
    max_translation_step: float = 0.02
    """Metres per tick for a full-scale (±1) translation action."""
    max_rotation_step: float = 0.10
    """Radians of yaw per tick for a full-scale dyaw action."""
    translation_error_clip: float = 0.02
    """Setpoint is kept within this many metres of the measured position (force bound)."""
    rotation_error_clip: float = 0.15
    """Setpoint orientation is kept within this angle (rad) of the measured orientation."""
    yaw_limit: float = math.pi / 2
    """Largest yaw (rad) away from ``reference_orientation`` a setpoint may ask for."""
    reference_orientation: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)
    """Gripper-down orientation (x, y, z, w; panda-py's scalar-last order) at zero yaw;
    setpoints keep its roll and pitch."""
    translational_stiffness: float = 600.0
    """Cartesian impedance stiffness (N/m) on x, y, z."""
    rotational_stiffness: float = 30.0
    """Cartesian impedance stiffness (Nm/rad) on roll, pitch, yaw."""
    damping_ratio: float = 1.0
    """Cartesian damping ratio of the impedance controller."""
    nullspace_stiffness: float = 0.5
    """Gain pulling the elbow toward the posture the controller started in."""
    filter_coeff: float = 1.0
    """panda-py's first-order input filter coefficient (1.0 = no filtering)."""
    home_joints: tuple[float, ...] = HOME_JOINTS
    """Joint angles (rad) of the home pose."""
    home_speed_factor: float = 0.1
    """Fraction of the maximum joint speed used by ``home()``."""
    gripper_speed: float = 0.1
    """Finger speed (m/s) for opening and grasping."""
    gripper_force: float = 40.0
    """Grasp force (N)."""
    gripper_threshold: float = 0.5
    """Gripper action above this closes (grasps), below minus this opens; between holds."""
    control_rate_hz: float = 10.0
    """Rate the runtime calls ``send_action`` at (for logs and step-limit sanity checks)."""
    max_recoveries: int = 3
    """Reflex recoveries allowed within ``recovery_window_s`` before the robot is FAILED."""
    recovery_window_s: float = 60.0
    """Window (s) over which ``max_recoveries`` counts."""

    def __post_init__(self) -> None:
        if not self.hostname:
            raise ValueError("hostname: must not be empty")
        for name in ("max_translation_step", "max_rotation_step", "translation_error_clip",
                     "rotation_error_clip", "yaw_limit", "translational_stiffness",
                     "rotational_stiffness", "damping_ratio", "gripper_speed", "gripper_force",
                     "control_rate_hz", "recovery_window_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: must be a positive finite number, got {value}")
        if self.max_translation_step > 0.05:
            raise ValueError(f"max_translation_step: {self.max_translation_step} m/tick exceeds 0.05")
        if self.nullspace_stiffness < 0:
            raise ValueError("nullspace_stiffness: must be >= 0")
        if not 0 < self.filter_coeff <= 1:
            raise ValueError("filter_coeff: must be in (0, 1]")
        if len(self.home_joints) != 7:
            raise ValueError("home_joints: need 7 joint angles")
        if not 0 < self.home_speed_factor <= 0.5:
            raise ValueError("home_speed_factor: must be in (0, 0.5]")
        if not 0 <= self.gripper_threshold < 1:
            raise ValueError("gripper_threshold: must be in [0, 1)")
        if self.max_recoveries < 0:
            raise ValueError("max_recoveries: must be >= 0")
        norm = math.sqrt(sum(c * c for c in self.reference_orientation))
        if len(self.reference_orientation) != 4 or abs(norm - 1) > 1e-3:
            raise ValueError("reference_orientation: need a unit quaternion (x, y, z, w)")

    def impedance(self) -> np.ndarray:
        """Returns the 6×6 diagonal Cartesian impedance matrix."""
        return np.diag([self.translational_stiffness] * 3 + [self.rotational_stiffness] * 3)


# --------------------------------------------------------------------------- quaternions (x, y, z, w)
def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Returns the Hamilton product ``a ⊗ b`` of scalar-last quaternions."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array([
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
        aw * bw - ax * bx - ay * by - az * bz,
    ])


def quat_conjugate(q: np.ndarray) -> np.ndarray:
    """Returns the inverse of a unit quaternion."""
    return np.array([-q[0], -q[1], -q[2], q[3]])


def quat_from_yaw(yaw: float) -> np.ndarray:
    """Returns the rotation by ``yaw`` radians about the base z axis."""
    return np.array([0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)])


def quat_yaw(q: np.ndarray) -> float:
    """Returns the rotation angle of ``q`` about the base z axis (its yaw)."""
    x, y, z, w = q
    return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def quat_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Returns the angle (rad, in [0, π]) of the rotation taking ``a`` to ``b``."""
    dot = min(1.0, abs(float(np.dot(a, b))))
    return 2 * math.acos(dot)


def quat_slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Returns the unit quaternion a fraction ``t`` of the way from ``a`` to ``b``."""
    dot = float(np.dot(a, b))
    if dot < 0:
        b, dot = -b, -dot
    if dot > 0.9995:
        out = a + t * (b - a)
        return out / np.linalg.norm(out)
    theta = math.acos(dot)
    out = (math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / math.sin(theta)
    return out / np.linalg.norm(out)


# --------------------------------------------------------------------------- setpoint
@dataclass(frozen=True)
class Setpoint:
    """The pose handed to the impedance controller for one tick."""

    position: np.ndarray
    """Target position (3,), metres."""
    orientation: np.ndarray
    """Target orientation (x, y, z, w)."""
    applied: np.ndarray
    """The motion part of the action actually applied, ``(4,)`` in ``[-1, 1]``."""
    workspace_clipped: bool
    """Whether the workspace box changed the target."""
    error_clipped: bool
    """Whether the error clip (translation or rotation) changed the target."""


def compute_setpoint(
    position: np.ndarray, orientation: np.ndarray, action: np.ndarray, config: FrankaConfig
) -> Setpoint:
    """Returns the next setpoint for a motion action ``(dx, dy, dz, dyaw)`` in ``[-1, 1]``.

    Pure. The target starts from the measured pose, moves by the scaled action, is clamped to
    the workspace and then to the measured position ± ``translation_error_clip`` (so a robot
    pushed outside the box is pulled back at most one clip per tick); roll and pitch follow
    ``reference_orientation``, yaw is the measured yaw plus the action, limited to
    ``yaw_limit``, and the rotation is slerped to at most ``rotation_error_clip`` away.
    """
    lo = np.asarray(config.workspace.low)
    hi = np.asarray(config.workspace.high)
    raw = position + action[:3] * config.max_translation_step
    in_box = np.clip(raw, lo, hi)
    clip = config.translation_error_clip
    target = np.clip(in_box, position - clip, position + clip)
    workspace_clipped = bool(np.any(in_box != raw))
    error_clipped = bool(np.any(target != in_box))

    reference = np.asarray(config.reference_orientation, dtype=np.float64)
    yaw = quat_yaw(quat_multiply(orientation, quat_conjugate(reference)))
    wanted_yaw = yaw + float(action[3]) * config.max_rotation_step
    limited_yaw = float(np.clip(wanted_yaw, -config.yaw_limit, config.yaw_limit))
    workspace_clipped |= limited_yaw != wanted_yaw
    desired = quat_multiply(quat_from_yaw(limited_yaw), reference)
    angle = quat_angle(orientation, desired)
    if angle > config.rotation_error_clip:
        desired = quat_slerp(orientation, desired, config.rotation_error_clip / angle)
        error_clipped = True
    applied_yaw = quat_yaw(quat_multiply(desired, quat_conjugate(reference))) - yaw
    applied_yaw = (applied_yaw + math.pi) % (2 * math.pi) - math.pi
    applied = np.concatenate([
        (target - position) / config.max_translation_step,
        [applied_yaw / config.max_rotation_step],
    ])
    return Setpoint(
        position=target,
        orientation=desired,
        applied=np.clip(applied, -1.0, 1.0),
        workspace_clipped=workspace_clipped,
        error_clipped=error_clipped,
    )
