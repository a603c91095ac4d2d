"""The robot rig that ``resetfree-demos record`` and ``resetfree-eval`` drive, and the pacing
of their loops.

A :class:`Rig` is a robot plus its cameras, built from a ``--robot`` spec: ``franka``
(``hardware.franka.FrankaRobot`` + one ``hardware.realsense.RealSenseCamera`` per
``--camera NAME=SERIAL``) or ``sim:TASK`` (``simulation.sim_robot.SimRobot`` in pixel mode,
whose images are served by its :class:`SimCamera`\\ s). Every command either tool sends goes
through the runtime's :class:`runtime.shield.Shield`, configured exactly as the runtime
configures it (:func:`runtime.robots.shield_config` from the robot's action space, workspace
and declared per-step scale: the task's ``TaskInfo.move_scale`` or the Franka's
``max_translation_step``; :meth:`Rig.shield_config`). Both loops run on absolute deadlines
(:class:`Ticker`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np

from hardware.interfaces import Camera, Robot, RobotState, SimulatedRobot
from runtime.robot_kinds import ROBOTS
from runtime.robots import RobotFacts, RobotSetup, RobotSpecError, lockstep_shield_config
from runtime.robots import shield_config as runtime_shield_config
from runtime.shield import ShieldConfig
from simulation.tasks.base import SimulationError

logger = logging.getLogger(__name__)

Printer = Callable[[str], None]
"""Where operator-facing progress lines go (``print`` in the CLIs)."""


class RecordError(SimulationError):
    """A rig or recording could not be set up (bad robot spec, missing cameras, no teleop)."""


@dataclass(frozen=True, kw_only=True)
class RigConfig:
    """Which robot and cameras a recording or evaluation drives."""

    robot: str
    """``franka`` or ``sim:TASK`` (e.g. ``sim:cube``)."""
    hz: float = 10.0
    """Control rate of the loop (Hz)."""
    image_size: int = 84
    """Side of the square policy images."""
    franka_host: str = "172.16.0.2"
    """Franka control box address (``--robot franka``)."""
    cameras: tuple[tuple[str, str], ...] = ()
    """``(name, serial)`` of each RealSense (``--robot franka``)."""
    seed: int | None = None
    """Seed of the simulated robot's first reset (later resets continue its generator)."""
    pacing: str = "realtime"
    """Simulated robot pacing: ``realtime`` (own clock) or ``lockstep`` (steps on send)."""
    obs: str = "pixels"
    """What a simulated robot observes: ``pixels`` (cameras + proprio, as the real robot) or
    ``state`` (the task's state vector, for evaluating a policy trained on states)."""

    def __post_init__(self) -> None:
        if self.robot != "franka" and not (self.robot.startswith("sim:") and len(self.robot) > 4):
            raise ValueError(f"robot: expected 'franka' or 'sim:TASK', got {self.robot!r}")
        if self.obs not in ("pixels", "state"):
            raise ValueError(f"obs: must be 'pixels' or 'state', got {self.obs!r}")
        if self.obs == "state" and not self.is_sim:
            raise ValueError("obs: only a simulated robot has a state vector; the real robot gives cameras "
                             "and proprio (a policy trained on states runs on --robot sim:TASK)")
        if not (math.isfinite(self.hz) and 0 < self.hz <= 1000):
            raise ValueError(f"hz: must be in (0, 1000], got {self.hz}")
        if self.image_size <= 0:
            raise ValueError(f"image_size: must be positive, got {self.image_size}")
        if self.pacing not in ("realtime", "lockstep"):
            raise ValueError(f"pacing: must be 'realtime' or 'lockstep', got {self.pacing!r}")
        names = [name for name, _ in self.cameras]
        if len(set(names)) != len(names) or any(not n or not s for n, s in self.cameras):
            raise ValueError(f"cameras: need distinct non-empty NAME=SERIAL pairs, got {self.cameras}")

    @property
    def is_sim(self) -> bool:
        """Whether the robot is a simulated twin."""
        return self.robot.startswith("sim:")

    @property
    def task(self) -> str | None:
        """The simulated task name, ``None`` for the real robot."""
        return self.robot[4:] if self.is_sim else None


def parse_camera(text: str) -> tuple[str, str]:
    """Returns ``(name, serial)`` from ``NAME=SERIAL``; raises ValueError otherwise."""
    name, sep, serial = text.partition("=")
    if not sep or not name.strip() or not serial.strip():
        raise ValueError(f"--camera: expected NAME=SERIAL, got {text!r}")
    return name.strip(), serial.strip()


@dataclass
class Observation:
    """One reading of the rig: the policy's arrays, the robot state and each frame's age."""

    arrays: dict[str, np.ndarray]
    """Images by camera name plus the robot's arrays (``proprio``)."""
    state: RobotState
    """The robot state the arrays came from."""
    frame_ages: dict[str, float] = field(default_factory=dict)
    """Seconds since each camera frame was captured (for the shield's watchdog)."""


class Rig:
    """A robot and its cameras, connected and disconnected together (context manager).

    Construction stores only; :meth:`connect` opens the devices (blocks for seconds).
    """

    def __init__(self, config: RigConfig, robot: Robot, cameras: Mapping[str, Camera],
                 position_scale: float) -> None:
        self.config = config
        self.robot = robot
        self.cameras = dict(cameras)
        self.position_scale = position_scale

    def connect(self) -> None:
        """Connects the robot, then starts every camera. Blocks until both are ready.

        Raises:
            HardwareError: when a device cannot be opened (the robot is disconnected again).
        """
        self.robot.connect()
        try:
            for camera in self.cameras.values():
                camera.connect()
        except BaseException:
            self.disconnect()
            raise

    def disconnect(self) -> None:
        """Stops the robot and releases every device. Idempotent; never raises on closed devices."""
        try:
            self.robot.stop()
        finally:
            for camera in self.cameras.values():
                camera.disconnect()
            self.robot.disconnect()

    def __enter__(self) -> "Rig":
        self.connect()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.disconnect()

    def observe(self) -> Observation:
        """Returns the newest state and frames without waiting (stale frames are reported
        through ``frame_ages``; the shield holds on them).

        Raises:
            HardwareError: when a device is not connected or failed.
        """
        now = time.monotonic()
        state = self.robot.read_state()
        arrays: dict[str, np.ndarray] = {}
        ages: dict[str, float] = {}
        for name, camera in self.cameras.items():
            frame = camera.read_latest(max_age=math.inf)
            arrays[name] = frame.image
            ages[name] = now - frame.timestamp
        arrays.update(state.arrays)
        return Observation(arrays=arrays, state=state, frame_ages=ages)

    def task_success(self) -> bool | None:
        """Whether the simulated task is solved now; ``None`` on the real robot."""
        return self.robot.last_success if isinstance(self.robot, SimulatedRobot) else None

    def reset_sim(self, options: dict[str, Any]) -> None:
        """Resets the simulated task with ``options`` (blocks). Raises RecordError on a real robot."""
        if not isinstance(self.robot, SimulatedRobot):
            raise RecordError("reset_sim: only a simulated robot can place the object itself")
        self.robot.reset_environment(options)

    def shield_config(self) -> ShieldConfig:
        """Returns the shield limits for this robot at the rig's rate, by the runtime's own
        rule (:func:`runtime.robots.shield_config`): the action space, the workspace, one
        full-scale action per tick (``position_scale``), the gripper channel (the last action
        element when there are more than three) and watchdog ages of three periods. A
        simulated robot in lock-step has no timing holds (:func:`runtime.robots.lockstep_shield_config`),
        so what a policy does there does not depend on how busy the machine is."""
        facts = RobotFacts(kind="sim" if self.config.is_sim else "franka", task=self.config.task or "franka",
                           position_scale=self.position_scale, reset_interval=None)
        limits = runtime_shield_config(self.robot, facts, self.config.hz)
        return lockstep_shield_config(limits) if self.config.is_sim and self.config.pacing == "lockstep" else limits


def build_rig(config: RigConfig) -> Rig:
    """Builds (does not connect) the robot and cameras ``config`` names, through the runtime's
    own registry (:data:`runtime.robot_kinds.ROBOTS`), so a robot kind is built in one place.

    Returns a :class:`Rig`. Raises RecordError for a Franka without cameras or an unknown
    simulated task.
    """
    setup = RobotSetup(hz=config.hz, image_size=config.image_size, obs=config.obs, seed=config.seed,
                       lockstep=config.pacing == "lockstep", franka_host=config.franka_host, cameras=config.cameras)
    try:
        robot, cameras = ROBOTS.build(config.robot, setup)
    except RobotSpecError as e:
        raise RecordError(str(e)) from e
    # the runtime's facts: a simulated task's declared TaskInfo.move_scale, the Franka's max_translation_step
    return Rig(config, robot, {camera.name: camera for camera in cameras},
               ROBOTS.facts(config.robot, robot).position_scale)


class Ticker:
    """Absolute-deadline pacing: :meth:`wait` sleeps until the next multiple of the period
    after :meth:`start`; a deadline already passed by a full period is counted as an overrun
    and the schedule restarts from now (no burst of catch-up ticks)."""

    def __init__(self, hz: float) -> None:
        self.period = 1.0 / hz
        self.overruns = 0
        self._deadline = time.monotonic()

    def start(self) -> None:
        """Sets the schedule's origin to now."""
        self._deadline = time.monotonic()

    def wait(self) -> None:
        """Blocks until the next deadline."""
        self._deadline += self.period
        now = time.monotonic()
        if now > self._deadline + self.period:
            self.overruns += 1
            self._deadline = now
            return
        if self._deadline > now:
            time.sleep(self._deadline - now)


__all__ = ["Observation", "Printer", "RecordError", "Rig", "RigConfig", "Ticker", "build_rig", "parse_camera"]
