"""Robot, camera and teleoperation devices.

``hardware.interfaces`` holds the contracts (``Robot``, ``Camera``, ``Teleop``) that the
runtime and the simulated robot share. The adapters import their SDK only in
``connect()``, so importing them needs no robot libraries:

* ``hardware.franka.FrankaRobot`` — Franka arm over panda-py (Cartesian impedance).
* ``hardware.realsense.RealSenseCamera`` — RealSense colour stream over pyrealsense2.
* ``hardware.teleop.KeyboardTeleop`` — terminal keys (or an injected key source).
* ``hardware.spacemouse.SpaceMouseTeleop`` — 3Dconnexion SpaceMouse over pyspacemouse.

This package is imported by the runtime's control loop, so it stays light: it re-exports
the contracts and nothing else.
"""

import logging

from hardware.interfaces import (
    ArraySpec,
    Camera,
    CameraStatus,
    DeviceAlreadyConnectedError,
    DeviceFailedError,
    DeviceNotConnectedError,
    Frame,
    HardwareError,
    Robot,
    RobotState,
    SimulatedRobot,
    StaleFrameError,
    Teleop,
    TeleopButton,
    TeleopCommand,
    Workspace,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ArraySpec", "Camera", "CameraStatus", "DeviceAlreadyConnectedError", "DeviceFailedError",
    "DeviceNotConnectedError", "Frame", "HardwareError", "Robot", "RobotState", "SimulatedRobot", "StaleFrameError",
    "Teleop", "TeleopButton", "TeleopCommand", "Workspace",
]
