"""Fake ``panda_py.libfranka``: Gripper, GripperState, Robot, RobotState, RobotMode."""

from __future__ import annotations

import enum
import time

import numpy as np

__all__ = ["Gripper", "GripperState", "RealtimeConfig", "Robot", "RobotMode", "RobotState"]


class RealtimeConfig(enum.Enum):
    kEnforce = 0
    kIgnore = 1


class RobotMode(enum.Enum):
    kOther = 0
    kIdle = 1
    kMove = 2
    kGuiding = 3
    kReflex = 4
    kUserStopped = 5
    kAutomaticErrorRecovery = 6


class Errors:
    def __init__(self, active: str | None = None) -> None:
        self._active = active

    def __bool__(self) -> bool:
        return self._active is not None

    def __repr__(self) -> str:
        return f"[{self._active!r}]" if self._active else "[]"


class RobotState:
    """A copy of the arm's state (the fields resetfree reads, plus O_T_EE and q)."""

    robot_mode: RobotMode = RobotMode.kOther
    last_motion_errors: Errors = Errors()
    current_errors: Errors = Errors()

    def __init__(self, arm) -> None:
        self.robot_mode = arm.mode
        self.last_motion_errors = Errors(arm.error)
        self.current_errors = Errors(arm.error)
        self.q = list(arm.q)
        pose = np.eye(4)
        pose[:3, 3] = arm.position
        self.O_T_EE = list(pose.T.reshape(-1))


class Robot:
    """The libfranka robot behind a Panda; ``stop`` aborts a running motion."""

    def __init__(self, arm) -> None:
        self._arm = arm

    def stop(self) -> None:
        self._arm.motion_stop.set()


class GripperState:
    width: float = 0.0
    max_width: float = 0.0
    is_grasped: bool = False

    def __init__(self, width: float, max_width: float, is_grasped: bool) -> None:
        self.width = width
        self.max_width = max_width
        self.is_grasped = is_grasped
        self.temperature = 30
        self.time = 0


class Gripper:
    """Blocking like libfranka's: each command sleeps for the arm's ``gripper_delay``."""

    def __init__(self, franka_address: str) -> None:
        from . import _lookup

        self._arm = _lookup(franka_address)
        self._grasped = False
        self.calls: list[tuple[str, float]] = []

    def move(self, width: float, speed: float) -> bool:
        time.sleep(self._arm.gripper_delay)
        self._arm.gripper_width = float(width)
        self._grasped = False
        self.calls.append(("move", float(width)))
        return True

    def grasp(self, width: float, speed: float, force: float,
              epsilon_inner: float = 0.005, epsilon_outer: float = 0.005) -> bool:
        time.sleep(self._arm.gripper_delay)
        obj = self._arm.object_width
        self._arm.gripper_width = obj if obj is not None else 0.0
        self.calls.append(("grasp", float(width)))
        self._grasped = obj is not None and width - epsilon_inner <= obj <= width + epsilon_outer
        return self._grasped

    def read_once(self) -> GripperState:
        return GripperState(self._arm.gripper_width, 0.08, self._grasped)

    def stop(self) -> bool:
        return True
