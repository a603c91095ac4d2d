"""Fake ``panda_py``: a simulated arm behind the real ``Panda`` API.

Arms are registered by hostname with ``_add_arm``; ``Panda(hostname)`` for an unknown
hostname raises ``RuntimeError`` as libfranka does for an unreachable robot.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from . import controllers, libfranka

__all__ = ["Panda", "controllers", "libfranka"]

HOME_POSITION = np.array([0.307, 0.0, 0.487])
"""End-effector position at ``constants.JOINT_POSITION_START``."""


class _Arm:
    """Physical state of one simulated arm (test hook)."""

    def __init__(self, hostname: str, *, auto_track: bool, gripper_delay: float) -> None:
        self.hostname = hostname
        self.lock = threading.RLock()
        self.position = HOME_POSITION.copy()
        self.orientation = np.array([1.0, 0.0, 0.0, 0.0])
        self.q = np.zeros(7)
        self.controller: controllers.CartesianImpedance | None = None
        self.error: str | None = None
        self.mode = libfranka.RobotMode.kIdle
        self.auto_track = auto_track
        self.gripper_delay = gripper_delay
        self.gripper_width = 0.08
        self.object_width: float | None = None
        self.recover_fails = False
        self.motion_stop = threading.Event()
        self.set_control_calls: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.home_calls: list[float] = []

    def track(self, fraction: float = 1.0) -> None:
        """Moves the end effector ``fraction`` of the way to the controller's setpoint."""
        with self.lock:
            ctrl = self.controller
            if ctrl is None or ctrl._position is None:
                return
            self.position = self.position + fraction * (ctrl._position - self.position)
            self.orientation = ctrl._orientation.copy()

    def reflex(self, reason: str = "cartesian_reflex") -> None:
        """Simulates a reflex: the control loop dies, the robot enters kReflex."""
        with self.lock:
            self.error = reason
            self.mode = libfranka.RobotMode.kReflex
            ctrl, self.controller = self.controller, None
        if ctrl is not None:
            ctrl._running.clear()


_ARMS: dict[str, _Arm] = {}


def _add_arm(hostname: str, *, auto_track: bool = True, gripper_delay: float = 0.0) -> _Arm:
    """Registers a simulated arm reachable at ``hostname`` and returns it (test hook)."""
    arm = _Arm(hostname, auto_track=auto_track, gripper_delay=gripper_delay)
    _ARMS[hostname] = arm
    return arm


def _lookup(hostname: str) -> _Arm:
    try:
        return _ARMS[hostname]
    except KeyError:
        raise RuntimeError(f"libfranka: Connection to FCI failed: {hostname} unreachable") from None


class Panda:
    """Same constructor and methods as ``panda_py.Panda`` (the subset resetfree uses)."""

    def __init__(self, hostname: str, name: str = "panda",
                 realtime_config: object = libfranka.RealtimeConfig.kIgnore) -> None:
        self._arm = _lookup(hostname)
        self._name = name
        self._robot = libfranka.Robot(self._arm)
        self._thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self._name

    def start_controller(self, controller: controllers.CartesianImpedance) -> None:
        arm = self._arm
        with arm.lock:
            if arm.error is not None:
                raise RuntimeError(f"libfranka: Move command rejected: robot in reflex ({arm.error})")
            if arm.controller is not None:
                self.stop_controller()
            controller._arm = arm
            controller._running.set()
            arm.controller = controller
            arm.mode = libfranka.RobotMode.kMove
        if arm.auto_track:
            self._thread = threading.Thread(target=self._loop, args=(controller,), daemon=True)
            self._thread.start()

    def _loop(self, controller: controllers.CartesianImpedance) -> None:
        while controller._running.is_set():
            self._arm.track(0.05)
            time.sleep(0.002)

    def stop_controller(self) -> None:
        arm = self._arm
        with arm.lock:
            ctrl, arm.controller = arm.controller, None
            if arm.error is None:
                arm.mode = libfranka.RobotMode.kIdle
        if ctrl is not None:
            ctrl._running.clear()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)

    def is_moving(self) -> bool:
        ctrl = self._arm.controller
        return ctrl is not None and ctrl._running.is_set()

    def raise_error(self) -> None:
        if self._arm.error is not None:
            raise RuntimeError(f"libfranka: Motion aborted by reflex! [\"{self._arm.error}\"]")

    def recover(self) -> None:
        time.sleep(0.02)
        arm = self._arm
        if arm.recover_fails:
            raise RuntimeError("libfranka: automatic error recovery failed")
        with arm.lock:
            arm.error = None
            arm.mode = libfranka.RobotMode.kIdle

    def get_state(self) -> libfranka.RobotState:
        arm = self._arm
        with arm.lock:
            return libfranka.RobotState(arm)

    def get_position(self) -> np.ndarray:
        with self._arm.lock:
            return self._arm.position.copy()

    def get_orientation(self, scalar_first: bool = False) -> np.ndarray:
        with self._arm.lock:
            q = self._arm.orientation.copy()
        return np.roll(q, 1) if scalar_first else q

    def get_robot(self) -> libfranka.Robot:
        return self._robot

    def move_to_joint_position(self, positions: np.ndarray, speed_factor: float = 0.2,
                               stiffness: np.ndarray | None = None, damping: np.ndarray | None = None,
                               dq_threshold: float = 0.001, success_threshold: float = 0.01) -> bool:
        arm = self._arm
        with arm.lock:
            if arm.controller is not None:
                raise RuntimeError("panda-py: a controller is running")
            if arm.error is not None:
                raise RuntimeError(f"libfranka: robot in reflex ({arm.error})")
            arm.motion_stop.clear()
            arm.home_calls.append(float(speed_factor))
        if arm.motion_stop.wait(0.02 / speed_factor):
            return False
        with arm.lock:
            arm.q = np.asarray(positions, dtype=float).copy()
            arm.position = HOME_POSITION.copy()
            arm.orientation = np.array([1.0, 0.0, 0.0, 0.0])
        return True
