"""Franka Emika Panda / FR3 adapter over panda-py (``pip install panda-python``).

How it drives the arm: ``connect()`` starts one panda-py ``CartesianImpedance`` controller,
whose 1 kHz torque loop runs in panda-py's C++ thread. Every tick ``send_action`` computes a
new Cartesian setpoint from the *current* pose and hands it to the controller with the
non-blocking ``set_control``; Python only supervises (checks ``is_moving`` every tick and
recovers from reflexes in a thread). panda-py's impedance controller has no force bound,
so the setpoint is clamped to the current pose plus or minus an error clip (as SERL's
controller clips the pose error): the spring force can never exceed stiffness × clip.

The gripper (``libfranka.Gripper``) is slow (a grasp blocks for up to a second), so its
commands run in a worker thread that keeps only the latest request
(:mod:`hardware.franka_gripper`). The setpoint maths is :mod:`hardware.franka_motion`; loading
panda-py and the declaration of every member used is :mod:`hardware.franka_sdk`.

Nothing here ever calls ``PandaContext.ok()`` or another GIL-holding sleep: this module is
driven from an asyncio loop.
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
import time
from types import ModuleType

import numpy as np

from hardware.franka_gripper import GripperWorker, gripper_target
from hardware.franka_motion import FrankaConfig, compute_setpoint
from hardware.franka_sdk import import_panda_py
from hardware.interfaces import (
    ArraySpec,
    DeviceAlreadyConnectedError,
    DeviceFailedError,
    DeviceNotConnectedError,
    HardwareError,
    Robot,
    RobotState,
    Workspace,
)

logger = logging.getLogger(__name__)


class FrankaRobot(Robot):
    """A Franka arm under Cartesian impedance control, driven by delta actions.

    Size: one arm's connection, per-tick control, reflex recovery and blocking motions
    (``home``/``resume``/``stop``) share one lock and one halted/failed state, which is what keeps
    ``send_action``, a recovery thread and ``home()`` from interleaving; the gripper thread,
    the setpoint maths and the panda-py seam are modules of their own.

    Action ``(dx, dy, dz, dyaw, gripper)`` in ``[-1, 1]``; proprio ``(x, y, z, width)``.
    ``library`` replaces the ``panda_py`` module (tests pass a fake with the same API).
    """

    name = "franka"

    def __init__(self, config: FrankaConfig, *, library: ModuleType | None = None) -> None:
        self.config = config
        self._library = library
        self._lib: ModuleType | None = None
        self._panda: object | None = None
        self._controller: object | None = None
        self._gripper: GripperWorker | None = None
        self._lock = threading.Lock()  # held by home()/recovery; send_action never waits on it
        self._halted = False
        self._failed = False
        self._recovering = False
        self._recoveries: collections.deque[float] = collections.deque()
        self._gripper_closed: bool | None = None
        self._last_state: RobotState | None = None
        self.clip_counts: dict[str, int] = {"workspace": 0, "error_clip": 0, "nonfinite": 0}
        """How often each of this adapter's own limits changed an action."""
        self.recovery_count = 0
        """Automatic recoveries performed since ``connect()``."""

    # -- description
    @property
    def action_spec(self) -> ArraySpec:
        """``(dx, dy, dz, dyaw, gripper)``, each in ``[-1, 1]``."""
        return ArraySpec(shape=(5,), dtype="float32", low=-1.0, high=1.0)

    @property
    def state_spec(self) -> dict[str, ArraySpec]:
        """``{"proprio": (x, y, z, gripper width)}``."""
        ws = self.config.workspace
        return {"proprio": ArraySpec(shape=(4,), dtype="float32",
                                     low=(*ws.low, 0.0), high=(*ws.high, 0.1))}

    @property
    def workspace(self) -> Workspace:
        """The configured end-effector box."""
        return self.config.workspace

    @property
    def is_connected(self) -> bool:
        """Whether ``connect()`` succeeded and ``disconnect()`` has not run since."""
        return self._panda is not None

    @property
    def is_failed(self) -> bool:
        """Whether recovery gave up; ``send_action`` then raises ``DeviceFailedError``."""
        return self._failed

    # -- lifecycle
    def connect(self) -> None:
        """Connects to the arm and gripper and starts the impedance controller at the current
        pose. Moves nothing. Blocks (network handshakes, ~1 s).

        Raises:
            DeviceAlreadyConnectedError: when already connected.
            HardwareError: when the robot or gripper cannot be reached.
        """
        if self._panda is not None:
            raise DeviceAlreadyConnectedError(f"franka {self.config.hostname}: already connected")
        lib = self._library if self._library is not None else import_panda_py()
        try:
            panda = lib.Panda(self.config.hostname)
            gripper = lib.libfranka.Gripper(self.config.hostname)
            gripper_state = gripper.read_once()
        except RuntimeError as e:
            raise HardwareError(f"franka {self.config.hostname}: cannot connect: {e}") from e
        self._lib = lib
        self._panda = panda
        self._gripper = GripperWorker(gripper, self.config, max_width=float(gripper_state.max_width) or 0.08,
                                      width=float(gripper_state.width))
        self._gripper.start()
        self._halted = False
        self._failed = False
        try:
            self._start_controller()
        except RuntimeError as e:
            self.disconnect()
            raise HardwareError(f"franka {self.config.hostname}: controller did not start: {e}") from e
        atexit.register(self._stop_at_exit)
        logger.info("franka %s: connected, impedance controller running", self.config.hostname)

    def disconnect(self) -> None:
        """Stops the controller (the arm holds still under the robot's own brakes/hold) and
        releases the connection. Idempotent; never raises."""
        if self._panda is None:
            return
        self.stop()
        if self._gripper is not None:
            self._gripper.close()
        atexit.unregister(self._stop_at_exit)
        self._panda = None
        self._controller = None
        self._gripper = None
        logger.info("franka %s: disconnected", self.config.hostname)

    def _stop_at_exit(self) -> None:
        logger.warning("franka %s: interpreter exiting; stopping the arm", self.config.hostname)
        self.disconnect()

    def _start_controller(self) -> None:
        """Starts a fresh impedance controller holding the current pose. Blocks briefly."""
        cfg = self.config
        lib = self._lib
        panda = self._panda
        controller = lib.controllers.CartesianImpedance(
            impedance=cfg.impedance(), damping_ratio=cfg.damping_ratio,
            nullspace_stiffness=cfg.nullspace_stiffness, filter_coeff=cfg.filter_coeff)
        panda.start_controller(controller)
        controller.set_control(panda.get_position(), panda.get_orientation())
        self._controller = controller

    # -- per tick
    def read_state(self) -> RobotState:
        """Returns the newest pose and gripper width. Non-blocking: while ``home()`` or a
        recovery owns the arm it returns the last reading (with its old timestamp).

        Raises:
            DeviceNotConnectedError: when not connected.
        """
        panda = self._require()
        if not self._lock.acquire(blocking=False):
            if self._last_state is None:
                raise DeviceNotConnectedError("franka: no state read yet")
            return self._last_state
        try:
            position = np.asarray(panda.get_position(), dtype=np.float64).reshape(3)
            xyzw = np.asarray(panda.get_orientation(), dtype=np.float64).reshape(4)
        finally:
            self._lock.release()
        width = self._gripper.width if self._gripper is not None else 0.0
        state = RobotState(
            timestamp=time.monotonic(),
            ee_position=position,
            gripper=width,
            arrays={"proprio": np.array([*position, width], dtype=np.float32)},
            ee_orientation=np.array([xyzw[3], xyzw[0], xyzw[1], xyzw[2]]),
        )
        self._last_state = state
        return state

    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Moves the impedance setpoint one step and queues a gripper command. Non-blocking:
        returns at once; the arm moves under the 1 kHz controller.

        Returns the applied action; all zeros when the arm is held (after ``stop()``, during
        ``home()`` or a recovery, or when the controller has stopped and a recovery starts).

        Raises:
            DeviceNotConnectedError: when not connected.
            DeviceFailedError: when automatic recovery gave up.
            ValueError: when ``action`` is not a 5-vector.
        """
        panda = self._require()
        if self._failed:
            raise DeviceFailedError(f"franka {self.config.hostname}: failed; recovery gave up")
        act = np.asarray(action, dtype=np.float64).reshape(-1)
        if act.shape != (5,):
            raise ValueError(f"action: expected 5 values, got shape {np.shape(action)}")
        if not np.all(np.isfinite(act)):
            self._count("nonfinite")
            return np.zeros(5, dtype=np.float32)
        act = np.clip(act, -1.0, 1.0)
        if self._halted or not self._lock.acquire(blocking=False):
            return np.zeros(5, dtype=np.float32)
        try:
            if not panda.is_moving():
                self._begin_recovery()
                return np.zeros(5, dtype=np.float32)
            position = np.asarray(panda.get_position(), dtype=np.float64).reshape(3)
            orientation = np.asarray(panda.get_orientation(), dtype=np.float64).reshape(4)
            setpoint = compute_setpoint(position, orientation, act, self.config)
            controller = self._controller
            controller.set_control(setpoint.position, setpoint.orientation)
        finally:
            self._lock.release()
        if setpoint.workspace_clipped:
            self._count("workspace")
        if setpoint.error_clipped:
            self._count("error_clip")
        gripper_cmd = self._command_gripper(float(act[4]))
        return np.append(setpoint.applied, gripper_cmd).astype(np.float32)

    def _command_gripper(self, value: float) -> float:
        """Queues open/close when ``value`` crosses the threshold; returns the applied value."""
        want_closed = gripper_target(value, self.config.gripper_threshold)
        if want_closed is not None and want_closed != self._gripper_closed and self._gripper:
            self._gripper_closed = want_closed
            self._gripper.request(want_closed)
        return value

    def _count(self, kind: str) -> None:
        self.clip_counts[kind] += 1
        logger.debug("franka: %s clip (%d so far)", kind, self.clip_counts[kind])

    # -- recovery
    def _begin_recovery(self) -> None:
        """Starts a recovery thread unless one is running or the budget is spent. Called
        with ``_lock`` held."""
        if self._recovering:
            return
        now = time.monotonic()
        while self._recoveries and now - self._recoveries[0] > self.config.recovery_window_s:
            self._recoveries.popleft()
        if len(self._recoveries) >= self.config.max_recoveries:
            self._failed = True
            logger.error("franka %s: %d recoveries within %.0f s; giving up (FAILED)",
                         self.config.hostname, len(self._recoveries), self.config.recovery_window_s)
            return
        self._recoveries.append(now)
        self._recovering = True
        threading.Thread(target=self._recover, name="franka-recover", daemon=True).start()

    def _error_reason(self) -> str:
        panda = self._panda
        try:
            panda.raise_error()
        except RuntimeError as e:
            return str(e)
        state = panda.get_state()
        return f"mode={state.robot_mode} last_motion_errors={state.last_motion_errors}"

    def _recover(self) -> None:
        """Clears the reflex (``Panda.recover``, blocks ~100 ms) and restarts the controller
        at the current pose. Runs in its own thread; the arm is held meanwhile."""
        with self._lock:
            try:
                if self._panda is None or self._halted:
                    return
                reason = self._error_reason()
                logger.warning("franka %s: controller stopped (%s); recovering (%d in window)",
                               self.config.hostname, reason, len(self._recoveries))
                self._panda.recover()
                self._start_controller()
                self.recovery_count += 1
                logger.info("franka %s: recovered, controller restarted", self.config.hostname)
            except RuntimeError as e:
                logger.error("franka %s: recovery failed: %s", self.config.hostname, e)
            finally:
                self._recovering = False

    def recover(self) -> None:
        """Clears a reflex and restarts the controller now. Blocks (call from a thread).

        Raises:
            DeviceNotConnectedError: when not connected.
            HardwareError: when libfranka refuses to recover.
        """
        panda = self._require()
        with self._lock:
            try:
                panda.stop_controller()
                panda.recover()
                self._failed = False
                self._recoveries.clear()
                self._start_controller()
                self._halted = False
            except RuntimeError as e:
                raise HardwareError(f"franka {self.config.hostname}: recover failed: {e}") from e

    # -- occasional, blocking
    def home(self) -> None:
        """Stops the controller, moves the joints to ``home_joints`` at a low speed factor and
        restarts the controller there. The arm moves physically; blocks until it arrives
        (seconds). Call from a thread, never from the event loop.

        Raises:
            DeviceNotConnectedError: when not connected.
            HardwareError: when the motion fails (a reflex, an unreachable pose).
        """
        panda = self._require()
        with self._lock:
            try:
                panda.stop_controller()
                self._halted = False  # a stop() from here on aborts the motion via libfranka
                reached = panda.move_to_joint_position(
                    np.asarray(self.config.home_joints), speed_factor=self.config.home_speed_factor)
                if self._halted:
                    logger.warning("franka %s: stopped during home()", self.config.hostname)
                    return
                self._start_controller()
            except RuntimeError as e:
                raise HardwareError(f"franka {self.config.hostname}: home failed: {e}") from e
        if not reached:
            logger.warning("franka %s: home() ended outside the success threshold", self.config.hostname)

    def resume(self) -> None:
        """Restarts the controller at the current pose after ``stop()``. Blocks briefly.

        Raises:
            DeviceNotConnectedError: when not connected.
            HardwareError: when the controller does not start.
        """
        self._require()
        with self._lock:
            try:
                self._start_controller()
            except RuntimeError as e:
                raise HardwareError(f"franka {self.config.hostname}: resume failed: {e}") from e
            self._halted = False

    def stop(self) -> None:
        """Stops all motion at once: the impedance controller and any ``home()`` motion end
        and the robot holds where it is. ``send_action`` then holds until ``resume()`` or
        ``home()``. Any thread, any time, repeatedly; never raises."""
        self._halted = True
        panda = self._panda
        if panda is None:
            return
        if self._gripper is not None:
            self._gripper.cancel_pending()
        try:
            panda.stop_controller()
        except RuntimeError as e:
            logger.error("franka %s: stop_controller failed: %s", self.config.hostname, e)
        try:
            robot = panda.get_robot()
            robot.stop()
        except RuntimeError as e:
            logger.error("franka %s: libfranka stop failed: %s", self.config.hostname, e)
        logger.info("franka %s: stopped", self.config.hostname)

    def _require(self) -> object:
        panda = self._panda
        if panda is None:
            raise DeviceNotConnectedError(f"franka {self.config.hostname}: not connected")
        return panda
