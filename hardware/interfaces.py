"""The contracts every robot, camera and teleoperation device implements.

The runtime drives a Franka (``hardware.franka``) and a MuJoCo twin
(``simulation.sim_robot``) through exactly these classes, so it cannot tell them apart.

Conventions shared by every implementation:

* No I/O in ``__init__``: construction only stores configuration. ``connect()`` opens
  the device (and may block for seconds); ``disconnect()`` releases it. Both are also
  reachable through the context-manager protocol.
* Methods the control loop calls every tick (``read_state``, ``send_action``,
  ``Camera.read_latest``) never block on the device: blocking SDK calls live in a
  background thread that keeps only the newest value.
* Images are RGB ``uint8`` arrays in channel-first layout ``(3, H, W)`` at the policy's
  image size; the adapter crops and resizes.
* Times are ``time.monotonic()`` seconds.
* Arrays are described by :class:`protocol.spaces.ArraySpec` (re-exported here), the one spec
  type the wire uses too: ``hardware`` imports that module and nothing else of the project.
"""

from __future__ import annotations

import abc
import enum
import logging
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np

from protocol.spaces import ArraySpec

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- errors
class HardwareError(Exception):
    """Base class of every error raised by ``hardware`` (and the simulated robot)."""


class DeviceNotConnectedError(HardwareError, ConnectionError):
    """A method that needs the device was called before ``connect()`` or after ``disconnect()``."""


class DeviceAlreadyConnectedError(HardwareError):
    """``connect()`` was called on a device that is already connected."""


class StaleFrameError(HardwareError):
    """The newest camera frame (or robot state) is older than the caller's ``max_age``."""


class DeviceFailedError(HardwareError):
    """The device reported an unrecoverable error (driver fault, unplugged, reflex not recovered)."""


# --------------------------------------------------------------------------- specs
@dataclass(frozen=True, kw_only=True)
class Workspace:
    """Axis-aligned box the end effector must stay in (metres, robot base frame)."""

    low: tuple[float, float, float]
    """Minimum x, y, z."""
    high: tuple[float, float, float]
    """Maximum x, y, z."""

    def __post_init__(self) -> None:
        if len(self.low) != 3 or len(self.high) != 3:
            raise ValueError("low/high: need three coordinates each")
        if any(lo >= hi for lo, hi in zip(self.low, self.high)):
            raise ValueError(f"low/high: low {self.low} must be below high {self.high} on every axis")


# --------------------------------------------------------------------------- robot
@dataclass(frozen=True)
class RobotState:
    """One reading of the robot, as the control loop consumes it."""

    timestamp: float
    """``time.monotonic()`` when the reading was taken."""
    ee_position: np.ndarray
    """End-effector position ``(3,)`` in metres (the task frame for simulated tasks)."""
    gripper: float
    """Gripper opening: width in metres on a real gripper; the task's own scale in simulation."""
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    """The observation arrays this robot contributes, keyed as in ``Robot.state_spec``
    (e.g. ``{"proprio": ...}`` or, for state-based simulated tasks, ``{"state": ...}``)."""
    ee_orientation: np.ndarray | None = None
    """End-effector orientation as a unit quaternion ``(w, x, y, z)``, when known."""


class Robot(abc.ABC):
    """A robot arm driven by Cartesian delta actions.

    The action is a vector described by ``action_spec``; for the Franka and the
    cube-grasp twin it is ``(dx, dy, dz, dyaw, gripper)`` in ``[-1, 1]``, scaled by the
    adapter's per-step limits. Every adapter enforces its own per-step limit in addition
    to the runtime's shield (safety is layered).
    """

    name: str = "robot"

    # -- description, usable before connect()
    @property
    @abc.abstractmethod
    def action_spec(self) -> ArraySpec:
        """The action vector this robot accepts (bounds included)."""

    @property
    @abc.abstractmethod
    def state_spec(self) -> dict[str, ArraySpec]:
        """The observation arrays ``read_state().arrays`` returns, by name."""

    @property
    @abc.abstractmethod
    def workspace(self) -> Workspace:
        """The end-effector box the runtime's shield enforces."""

    # -- lifecycle
    @abc.abstractmethod
    def connect(self) -> None:
        """Opens the connection and starts the controller. Blocks until ready.

        Raises:
            DeviceAlreadyConnectedError: when already connected.
            HardwareError: when the device cannot be reached.
        """

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Stops motion and releases the device. Idempotent; never raises on a closed robot."""

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool:
        """Whether ``connect()`` succeeded and ``disconnect()`` has not run since."""

    # -- per tick (never block)
    @abc.abstractmethod
    def read_state(self) -> RobotState:
        """Returns the newest state. Non-blocking.

        Raises:
            DeviceNotConnectedError: when not connected.
        """

    @abc.abstractmethod
    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Applies one action and returns the action actually applied (after the
        adapter's own clipping). Non-blocking: a slow part (gripper) runs in a worker.

        Raises:
            DeviceNotConnectedError: when not connected.
        """

    # -- occasional, may block (call from a thread, never from the event loop)
    @abc.abstractmethod
    def home(self) -> None:
        """Moves to the home pose with a slow, safe motion. Blocks until there."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stops all motion at once (holds the current pose). Safe to call from any
        thread, at any time, repeatedly; never raises."""

    def __enter__(self) -> "Robot":
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        finally:
            self.disconnect()


class SimulatedRobot(Robot):
    """A robot whose world the runtime may reset, draw a goal in, and ask for the task's
    success: a simulator (``simulation.sim_robot.SimRobot``). A real robot is never one: only a
    person resets its scene. Code that needs these (the control loop's reset schedule, teleop
    recording's placing of the object) checks for this type instead of probing methods."""

    @abc.abstractmethod
    def reset_environment(self, options: dict[str, Any] | None = None) -> None:
        """Resets the task (default: its initial-state distribution). Blocks until done.

        Raises:
            HardwareError: when the simulation failed or is not connected.
        """

    @abc.abstractmethod
    def draw_goal(self) -> None:
        """Draws the task's goal anew without moving the scene (a one-goal task keeps its
        goal). Blocks until the observation with the new goal is current."""

    @property
    @abc.abstractmethod
    def last_success(self) -> bool:
        """Whether the task was solved at the newest step."""

    @property
    @abc.abstractmethod
    def scene_lost(self) -> bool:
        """Whether, at the newest step, the scene is where reset-free practice cannot go on
        without a person (the task's operator rule; always False for a task without one)."""


# --------------------------------------------------------------------------- camera
class CameraStatus(enum.Enum):
    """Lifecycle of a camera."""

    CLOSED = "closed"
    STREAMING = "streaming"
    FAILED = "failed"


@dataclass(frozen=True)
class Frame:
    """One camera image with the time it was captured."""

    image: np.ndarray
    """RGB ``uint8`` array ``(3, H, W)``."""
    timestamp: float
    """``time.monotonic()`` at capture (or at arrival, when the device gives no clock)."""
    index: int
    """Frame counter since ``connect()``; increases by one per new frame."""


class Camera(abc.ABC):
    """A camera whose newest frame can be taken without waiting."""

    name: str = "camera"

    @property
    @abc.abstractmethod
    def serial(self) -> str:
        """Device serial number (a fixed id for simulated cameras)."""

    @property
    @abc.abstractmethod
    def image_spec(self) -> ArraySpec:
        """Shape and dtype of ``Frame.image`` (``(3, H, W)``, ``uint8``)."""

    @property
    @abc.abstractmethod
    def status(self) -> CameraStatus:
        """Current lifecycle state."""

    @abc.abstractmethod
    def connect(self) -> None:
        """Starts streaming. Blocks until the first frame arrived or raises ``HardwareError``."""

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Stops streaming and releases the device. Idempotent."""

    @abc.abstractmethod
    def read(self, timeout: float = 1.0) -> Frame:
        """Blocks until a frame newer than the last one returned arrives.

        Raises:
            TimeoutError: when none arrives within ``timeout`` seconds.
            DeviceNotConnectedError: when not streaming.
        """

    @abc.abstractmethod
    def read_latest(self, max_age: float) -> Frame:
        """Returns the newest frame without waiting.

        Raises:
            StaleFrameError: when the newest frame is older than ``max_age`` seconds.
            DeviceNotConnectedError: when not streaming.
        """

    def __enter__(self) -> "Camera":
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.disconnect()


# --------------------------------------------------------------------------- teleop
class TeleopButton(enum.Enum):
    """Operator signals a teleoperation device can raise."""

    SUCCESS = "success"
    """End the episode and mark it successful."""
    FAILURE = "failure"
    """End the episode and mark it failed."""
    DISCARD = "discard"
    """Throw the current episode away."""
    QUIT = "quit"
    """Stop recording."""


@dataclass(frozen=True)
class TeleopCommand:
    """One reading of a teleoperation device."""

    action: np.ndarray
    """Action in the robot's action space, ``[-1, 1]`` per element."""
    buttons: frozenset[TeleopButton]
    """Signals raised since the previous ``read()``."""


class Teleop(abc.ABC):
    """A human input device producing robot actions."""

    @abc.abstractmethod
    def connect(self) -> None:
        """Opens the device. Blocks until ready."""

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Releases the device. Idempotent."""

    @abc.abstractmethod
    def read(self) -> TeleopCommand:
        """Returns the current command and the buttons pressed since the last call. Non-blocking."""

    def reset(self) -> None:
        """Returns latched state (a toggled gripper) to neutral — gripper open — at the start
        of an episode. Devices without latched state need not override it."""

    def __enter__(self) -> "Teleop":
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.disconnect()
