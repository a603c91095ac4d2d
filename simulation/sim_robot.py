"""A simulated task behind the ``hardware.interfaces`` contracts, so the runtime drives a
MuJoCo twin exactly as it drives a Franka.

One worker thread (:class:`simulation.sim_worker.SimWorker`) owns the environment (MuJoCo's
offscreen GL context belongs to the thread that created it): it builds, resets, steps and
renders, and publishes an immutable snapshot (robot state + one frame per image) after every
step. Two pacings:

* ``realtime`` — the worker runs its own clock at ``hz`` on absolute deadlines. Each tick
  it applies the newest action sent since the last tick (older unsent ones are dropped and
  counted), renders, and publishes. A tick with no new action does not advance the physics
  (the twin holds still, as an arm with no new command does) but re-stamps the frames, so
  cameras keep streaming like real ones. ``send_action`` only hands the action over.
* ``lockstep`` — ``send_action`` hands the action over and waits until the worker has
  stepped and rendered it: a few milliseconds per call (about 1 ms state-only, plus ~1 ms
  per 84x84 camera on a software-EGL CPU). Frames are only produced by steps, so a loop
  that stops stepping sees its frames go stale.

The pixel observation's images (the task's cameras plus extras such as tabletop's
``goal``) are each served by a :class:`SimCamera`; ``read_state().arrays`` holds
``{"state": ...}`` in state mode and ``{"proprio": ...}`` in pixel mode.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from hardware.interfaces import (ArraySpec, Camera, CameraStatus, DeviceAlreadyConnectedError,
                                 DeviceFailedError, DeviceNotConnectedError, Frame, HardwareError, RobotState,
                                 SimulatedRobot, StaleFrameError, Workspace)
from simulation.sim_worker import Call, SimWorker, Snapshot
from simulation.tasks import task_class
from simulation.tasks.base import ObsMode, TaskEnv, TaskInfo

logger = logging.getLogger(__name__)

Pacing = Literal["realtime", "lockstep"]
DEFAULT_WORKSPACE = Workspace(low=(-10.0, -10.0, -10.0), high=(10.0, 10.0, 10.0))
"""Used for a task that declares no ``workspace`` (the runtime's shield then bounds nothing)."""


@dataclass(frozen=True, kw_only=True)
class SimRobotConfig:
    """How a :class:`SimRobot` runs its task."""

    task: str
    """Task name from ``simulation.tasks.TASKS``."""
    obs: ObsMode = "state"
    """``state`` (EARL's vector in ``arrays["state"]``) or ``pixels`` (cameras + proprio)."""
    seed: int | None = None
    """Seed of the first reset; later resets continue the environment's generator."""
    pacing: Pacing = "realtime"
    """``realtime``: a worker steps at ``hz``; ``lockstep``: ``send_action`` steps synchronously."""
    hz: float = 10.0
    """Control rate of the realtime worker."""
    image_size: int = 84
    """Side of the square camera images."""
    connect_timeout_s: float = 60.0
    """How long ``connect()`` waits for the environment to be built and the first frame."""
    call_timeout_s: float = 30.0
    """Deadline for a synchronous worker call (lockstep step, reset)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the task's constructor."""

    def __post_init__(self) -> None:
        task_class(self.task)  # raises ValueError naming the task
        if self.obs not in ("state", "pixels"):
            raise ValueError(f"obs: must be 'state' or 'pixels', got {self.obs!r}")
        if self.pacing not in ("realtime", "lockstep"):
            raise ValueError(f"pacing: must be 'realtime' or 'lockstep', got {self.pacing!r}")
        if not 0 < self.hz <= 1000:
            raise ValueError(f"hz: must be in (0, 1000], got {self.hz}")
        for name in ("connect_timeout_s", "call_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")


class SimRobot(SimulatedRobot):
    """A simulated task as a :class:`hardware.interfaces.Robot` (see the module docstring).

    Construction only stores the configuration; ``connect()`` starts the worker thread.
    """

    def __init__(self, task: str, *, obs: ObsMode = "state", seed: int | None = None,
                 pacing: Pacing = "realtime", hz: float = 10.0, image_size: int = 84,
                 **options: Any) -> None:
        self.config = SimRobotConfig(task=task, obs=obs, seed=seed, pacing=pacing, hz=hz,
                                     image_size=image_size, **options)
        self.name = f"sim-{task}"
        self._info: TaskInfo = task_class(task).info
        self._image_names = self._expected_image_names()
        self._worker = SimWorker(self.config, self.name, self._image_names)
        self._cameras: dict[str, SimCamera] = {n: SimCamera(self, n) for n in self._image_names}
        self.clipped_actions = 0
        """Actions with an element outside ``[-1, 1]`` or not finite (clipped / zeroed)."""

    # ------------------------------------------------------------------ description
    @property
    def action_spec(self) -> ArraySpec:
        return ArraySpec(shape=(self._info.action_dim,), dtype="float32", low=-1.0, high=1.0)

    @property
    def state_spec(self) -> dict[str, ArraySpec]:
        if self.config.obs == "state":
            return {"state": ArraySpec(shape=(self._info.state_dim,), dtype="float32")}
        return {"proprio": ArraySpec(shape=(self._info.proprio_dim,), dtype="float32")}

    @property
    def workspace(self) -> Workspace:
        return task_workspace(task_class(self.config.task))

    @property
    def cameras(self) -> dict[str, "SimCamera"]:
        """One :class:`SimCamera` per image of the pixel observation (empty in state mode)."""
        return dict(self._cameras)

    @property
    def last_success(self) -> bool:
        """Whether the task was solved at the newest published step (``False`` before connect)."""
        snapshot = self._worker.snapshot
        return bool(snapshot and snapshot.success)

    @property
    def scene_lost(self) -> bool:
        """Whether the task's operator rule held at the newest published step (``TaskEnv.scene_lost``;
        ``False`` before connect and for a task that declares no rule)."""
        snapshot = self._worker.snapshot
        return bool(snapshot and snapshot.lost)

    @property
    def steps(self) -> int:
        """Environment steps taken since ``connect()``."""
        return self._worker.steps

    @property
    def resets(self) -> int:
        """Environment resets requested since ``connect()`` (``home`` and ``reset_environment``)."""
        return self._worker.resets

    @property
    def dropped_actions(self) -> int:
        """Realtime actions replaced by a newer one before the worker applied them."""
        return self._worker.dropped_actions

    # ------------------------------------------------------------------ lifecycle
    def connect(self) -> None:
        """Starts the worker, which builds and resets the environment. Blocks until the first
        snapshot is published (up to ``connect_timeout_s``).

        Raises:
            DeviceAlreadyConnectedError: when already connected.
            DeviceFailedError: when the environment cannot be built or reset.
        """
        if self.is_connected:
            raise DeviceAlreadyConnectedError(f"{self.name} is already connected")
        self.clipped_actions = 0
        ready = self._worker.start()
        if not ready.wait(self.config.connect_timeout_s):
            self.disconnect()
            raise DeviceFailedError(f"{self.name}: environment not ready after {self.config.connect_timeout_s} s")
        if self._worker.failure is not None:
            failure = self._worker.failure
            self.disconnect()
            raise DeviceFailedError(f"{self.name}: could not start: {failure}") from failure

    def disconnect(self) -> None:
        """Stops the worker and closes the environment. Idempotent; never raises."""
        self._worker.halt()

    @property
    def is_connected(self) -> bool:
        return self._worker.alive

    # ------------------------------------------------------------------ per tick
    def read_state(self) -> RobotState:
        """Returns the newest published state. Non-blocking.

        Raises:
            DeviceNotConnectedError: when not connected.
            DeviceFailedError: when the simulation raised.
        """
        return self._require_snapshot().state

    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Hands ``action`` to the simulation and returns the action applied (clipped to
        ``[-1, 1]``, non-finite elements zeroed). Realtime: returns at once; lockstep:
        returns after the step and render (a few ms; see the module docstring).

        Raises:
            DeviceNotConnectedError: when not connected.
            DeviceFailedError: when the simulation raised.
            ValueError: for an action of the wrong shape.
        """
        self._require_snapshot()
        applied = self._sanitise(action)
        call = Call("action", applied)
        if self.config.pacing == "lockstep":
            self._worker.call(call)
        else:
            self._worker.offer(call)
        return applied

    # ------------------------------------------------------------------ occasional
    def reset_environment(self, options: dict[str, Any] | None = None) -> None:
        """Resets the task (default: EARL's initial-state distribution). Blocks until the
        reset observation is published; call it from a thread, not the event loop.

        Raises:
            DeviceNotConnectedError: when not connected.
            DeviceFailedError: when the simulation raised or did not answer in time.
        """
        self._require_snapshot()
        self._worker.call(Call("reset", dict(options or {"init": "initial"})))

    def draw_goal(self) -> None:
        """Draws the task's goal anew without moving the scene (``TaskEnv.draw_goal``: tabletop's
        four goals; a one-goal task keeps its goal). Blocks until the observation with the new
        goal is published; call it from a thread, not the event loop.

        Raises:
            DeviceNotConnectedError: when not connected.
            DeviceFailedError: when the simulation raised or did not answer in time.
        """
        self._require_snapshot()
        self._worker.call(Call("goal", None))

    def home(self) -> None:
        """Resets the task to its initial-state distribution (the twin's home). Blocks."""
        self.reset_environment({"init": "initial"})

    def stop(self) -> None:
        """Drops any action not yet applied, so the twin holds still. Never raises."""
        self._worker.drop_pending()

    # ------------------------------------------------------------------ camera support
    def _latest_frame(self, name: str) -> Frame:
        return self._require_snapshot().frames[name]

    def _wait_frame(self, name: str, after_index: int, timeout: float) -> Frame:
        deadline = time.monotonic() + timeout
        with self._worker.new_frame:
            while True:
                frame = self._require_snapshot().frames[name]
                if frame.index > after_index:
                    return frame
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{self.name}/{name}: no new frame within {timeout} s")
                self._worker.new_frame.wait(remaining)

    # ------------------------------------------------------------------ internals
    def _expected_image_names(self) -> tuple[str, ...]:
        if self.config.obs == "state":
            return ()
        cls = task_class(self.config.task)
        cameras = tuple(self.config.env_kwargs.get("cameras") or cls.info.cameras)
        # extra images (tabletop's goal) are fixed per task; read them off an unbuilt instance
        extra = cls._task_extra_image_names(cls.__new__(cls))
        return cameras + tuple(extra)

    def _require_snapshot(self) -> Snapshot:
        failure = self._worker.failure
        if failure is not None:
            raise DeviceFailedError(f"{self.name}: simulation failed: {failure}") from failure
        snapshot = self._worker.snapshot
        if not self.is_connected or snapshot is None:
            raise DeviceNotConnectedError(f"{self.name} is not connected")
        return snapshot

    def _sanitise(self, action: np.ndarray) -> np.ndarray:
        array = np.asarray(action, dtype=np.float32)
        if array.shape != (self._info.action_dim,):
            raise ValueError(f"action: expected shape ({self._info.action_dim},), got {array.shape}")
        applied = np.clip(np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0), -1.0, 1.0)
        if not np.array_equal(applied, array):
            self.clipped_actions += 1
            logger.debug("%s: clipped action %s to %s", self.name, array, applied)
        return applied


def task_workspace(cls: type[TaskEnv]) -> Workspace:
    """Returns the end-effector box a task declares: a ``workspace`` class attribute (a
    :class:`Workspace` or ``(low, high)``), else module constants ``WORKSPACE_LOW/HIGH`` or
    ``HAND_LOW/HIGH`` of the task's module or a base class's, else :data:`DEFAULT_WORKSPACE`."""
    declared = getattr(cls, "workspace", None)
    if isinstance(declared, Workspace):
        return declared
    if isinstance(declared, tuple) and len(declared) == 2:
        return Workspace(low=tuple(map(float, declared[0])), high=tuple(map(float, declared[1])))
    for klass in cls.__mro__:
        module = sys.modules.get(klass.__module__)
        for low_name, high_name in (("WORKSPACE_LOW", "WORKSPACE_HIGH"), ("HAND_LOW", "HAND_HIGH")):
            low, high = getattr(module, low_name, None), getattr(module, high_name, None)
            if low is not None and high is not None and np.size(low) == 3 and np.size(high) == 3:
                return Workspace(low=tuple(map(float, np.ravel(low))), high=tuple(map(float, np.ravel(high))))
    return DEFAULT_WORKSPACE


class SimCamera(Camera):
    """One image of a :class:`SimRobot`'s pixel observation as a camera (see the module
    docstring for when frames appear). Created by the robot: ``robot.cameras[name]``."""

    def __init__(self, robot: SimRobot, name: str) -> None:
        self._robot = robot
        self.name = name
        self._streaming = False
        self._last_index = -1

    @property
    def serial(self) -> str:
        return f"{self._robot.name}/{self.name}"

    @property
    def image_spec(self) -> ArraySpec:
        size = self._robot.config.image_size
        return ArraySpec(shape=(3, size, size), dtype="uint8", low=0, high=255)

    @property
    def status(self) -> CameraStatus:
        if self._robot._worker.failure is not None:
            return CameraStatus.FAILED
        return CameraStatus.STREAMING if self._streaming and self._robot.is_connected else CameraStatus.CLOSED

    def connect(self) -> None:
        """Starts streaming from the robot's renders. Non-blocking (the robot already has a frame).

        Raises:
            DeviceNotConnectedError: when the robot is not connected.
            DeviceAlreadyConnectedError: when already streaming.
        """
        self._robot._require_snapshot()
        if self._streaming:
            raise DeviceAlreadyConnectedError(f"camera {self.serial} is already streaming")
        self._streaming, self._last_index = True, -1

    def disconnect(self) -> None:
        self._streaming = False

    def read(self, timeout: float = 1.0) -> Frame:
        """Blocks until a frame newer than the last one returned arrives.

        Raises:
            TimeoutError: when none arrives within ``timeout``.
            DeviceNotConnectedError: when not streaming.
        """
        self._require_streaming()
        frame = self._robot._wait_frame(self.name, self._last_index, timeout)
        self._last_index = frame.index
        return frame

    def read_latest(self, max_age: float) -> Frame:
        """Returns the newest frame without waiting.

        Raises:
            StaleFrameError: when it is older than ``max_age`` seconds.
            DeviceNotConnectedError: when not streaming.
        """
        self._require_streaming()
        frame = self._robot._latest_frame(self.name)
        age = time.monotonic() - frame.timestamp
        if age > max_age:
            raise StaleFrameError(f"camera {self.serial}: newest frame is {age * 1e3:.1f} ms old "
                                  f"(max {max_age * 1e3:.1f} ms)")
        self._last_index = frame.index
        return frame

    def _require_streaming(self) -> None:
        if not self._streaming:
            raise DeviceNotConnectedError(f"camera {self.serial} is not streaming")
        self._robot._require_snapshot()


__all__ = ["HardwareError", "Pacing", "SimCamera", "SimRobot", "SimRobotConfig"]
