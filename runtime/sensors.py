"""One tick's view of the devices: every camera's newest frame and the robot's state, read
without waiting (:func:`read_sensors`), and the observation the policy sees, made of them
(:func:`observation_of`).

Runs on the event loop inside :meth:`runtime.loop.ControlLoop.tick`: the device threads keep
only their newest value, so nothing here blocks. A device with nothing fresh to give is logged
at DEBUG and left out (a camera's age is then ``inf``, the state None); the shield's watchdog
holds on that.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hardware.interfaces import Camera, Frame, HardwareError, Robot, RobotState, StaleFrameError

logger = logging.getLogger(__name__)


@dataclass
class TickReading:
    """What one tick read from the devices."""

    now: float
    """``time.monotonic()`` when the reading started."""
    frames: dict[str, Frame]
    """The newest frame of every camera that had one young enough."""
    ages: dict[str, float]
    """Age (s) of every camera's frame at ``now``; ``inf`` for a camera that gave none."""
    state: RobotState | None
    """The robot's state; None when it gave none."""


def read_sensors(robot: Robot, cameras: Sequence[Camera], max_frame_age_s: float) -> TickReading:
    """Returns every camera's newest frame no older than ``max_frame_age_s`` and the robot's
    state. Non-blocking; never raises for device trouble (logged at DEBUG, left out)."""
    now = time.monotonic()
    frames: dict[str, Frame] = {}
    ages: dict[str, float] = {}
    for camera in cameras:
        try:
            frame = camera.read_latest(max_frame_age_s)
        except (StaleFrameError, HardwareError) as e:
            logger.debug("loop: camera %s gave no frame: %s", camera.name, e)
            ages[camera.name] = math.inf
            continue
        frames[camera.name] = frame
        ages[camera.name] = now - frame.timestamp
    try:
        state: RobotState | None = robot.read_state()
    except HardwareError as e:
        logger.debug("loop: no robot state: %s", e)
        state = None
    return TickReading(now=now, frames=frames, ages=ages, state=state)


def observation_of(reading: TickReading, cameras: Sequence[Camera]) -> dict[str, np.ndarray] | None:
    """Returns the observation (one image per camera plus the state's arrays), or None unless
    every camera gave a frame and the robot its state."""
    if reading.state is None or len(reading.frames) != len(cameras):
        return None
    observation = {name: frame.image for name, frame in reading.frames.items()}
    observation.update(reading.state.arrays)
    return observation
