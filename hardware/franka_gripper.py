"""The Franka's gripper, kept off the control loop.

libfranka's gripper commands are slow (a grasp blocks for up to a second), so
:class:`GripperWorker` runs them in a thread of its own that keeps only the latest request;
:func:`gripper_target` reads the request an action's gripper value asks for.
:class:`hardware.franka.FrankaRobot` starts one worker per connection and queues requests from
``send_action`` without ever waiting for one. The panda-py members used here are declared in
:data:`hardware.franka_sdk.PANDA_PY_API`.
"""

from __future__ import annotations

import logging
import threading

from hardware.franka_motion import FrankaConfig

logger = logging.getLogger(__name__)


def gripper_target(value: float, threshold: float) -> bool | None:
    """Returns what a gripper action ``value`` asks for: True (close, grasp) above ``threshold``,
    False (open) below ``-threshold``, None (keep) between."""
    if value > threshold:
        return True
    if value < -threshold:
        return False
    return None


class GripperWorker:
    """Runs gripper commands in a thread, keeping only the latest request.

    ``request`` never blocks; ``width`` is the opening measured after the last command.
    """

    def __init__(self, gripper: object, config: FrankaConfig, *, max_width: float, width: float) -> None:
        self._gripper = gripper
        self._config = config
        self._max_width = max_width
        self._cond = threading.Condition()
        self._pending: bool | None = None
        self._closing = False
        self._width = width
        self.commands_done = 0
        """Gripper commands executed (superseded requests are not counted)."""
        self.failures = 0
        """Gripper commands that raised."""
        self._thread = threading.Thread(target=self._run, name="franka-gripper", daemon=True)

    @property
    def width(self) -> float:
        """Returns the finger opening (m) measured after the last command. Non-blocking."""
        return self._width

    def start(self) -> None:
        """Starts the worker thread."""
        self._thread.start()

    def request(self, close: bool) -> None:
        """Asks for the gripper to close (grasp) or open; replaces any request not yet started.

        Non-blocking.
        """
        with self._cond:
            self._pending = close
            self._cond.notify()

    def cancel_pending(self) -> None:
        """Drops a request that has not started (a running command finishes). Non-blocking."""
        with self._cond:
            self._pending = None

    def close(self, timeout: float = 2.0) -> None:
        """Stops the worker; waits up to ``timeout`` s for a running command to finish."""
        with self._cond:
            self._closing = True
            self._pending = None
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closing:
                    self._cond.wait()  # submit() and close() notify
                if self._closing:
                    return
                close, self._pending = self._pending, None
            self._execute(bool(close))

    def _execute(self, close: bool) -> None:
        gripper = self._gripper
        cfg = self._config
        try:
            if close:
                # width 0 with a wide outer epsilon: "grasp whatever is between the fingers".
                gripper.grasp(0.0, cfg.gripper_speed, cfg.gripper_force,
                              epsilon_inner=0.005, epsilon_outer=self._max_width)
            else:
                gripper.move(self._max_width, cfg.gripper_speed)
            gripper_state = gripper.read_once()
            self._width = float(gripper_state.width)
            self.commands_done += 1
        except RuntimeError as e:
            self.failures += 1
            logger.warning("franka gripper: %s command failed: %s", "grasp" if close else "open", e)
