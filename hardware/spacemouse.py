"""3Dconnexion SpaceMouse teleoperation over pyspacemouse (``pip install pyspacemouse``).

A thread polls the device (non-blocking HID reads, 250 Hz) and keeps its newest state;
``read()`` maps it to ``(dx, dy, dz, dyaw, gripper)`` with a deadband and a scale. Button
``gripper_button`` toggles the gripper, ``success_button`` raises SUCCESS (rising edges).
"""

from __future__ import annotations

import importlib
import logging
import math
import threading
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from hardware.interfaces import (
    DeviceAlreadyConnectedError,
    HardwareError,
    Teleop,
    TeleopButton,
    TeleopCommand,
)

logger = logging.getLogger(__name__)

ApiCall = tuple[int, tuple[str, ...]]
"""How the adapter calls a library member: (number of positional arguments, keyword names)."""

PYSPACEMOUSE_API: dict[str, tuple[ApiCall, ...]] = {
    "pyspacemouse.open": ((0, ("nonblocking", "device")),),
    "pyspacemouse.SpaceMouseDevice.read": ((0, ()),),
    "pyspacemouse.SpaceMouseDevice.close": ((0, ()),),
    "pyspacemouse.SpaceMouseState.x": (),
    "pyspacemouse.SpaceMouseState.y": (),
    "pyspacemouse.SpaceMouseState.z": (),
    "pyspacemouse.SpaceMouseState.yaw": (),
    "pyspacemouse.SpaceMouseState.buttons": (),
}
"""Every pyspacemouse member this module touches (the conformance test's single source)."""

PYSPACEMOUSE_HANDLES: dict[str, str] = {
    "lib": "pyspacemouse",
    "device": "pyspacemouse.SpaceMouseDevice",
    "mouse_state": "pyspacemouse.SpaceMouseState",
}
"""Local names this module binds to pyspacemouse objects (the AST check resolves through them)."""

AXES = ("x", "y", "z", "yaw")


@dataclass(frozen=True, kw_only=True)
class SpaceMouseConfig:
    """Mapping from SpaceMouse axes and buttons to robot actions."""

    device: str | None = None
    """pyspacemouse device name (e.g. ``"SpaceMouse Compact"``); ``None`` opens the first found."""
    deadband: float = 0.08
    """Axis values below this magnitude read as zero; the rest is rescaled to reach 1."""
    translation_scale: float = 1.0
    """Multiplier on the translation axes before clipping to [-1, 1]."""
    rotation_scale: float = 1.0
    """Multiplier on the yaw axis before clipping to [-1, 1]."""
    signs: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    """Sign per (dx, dy, dz, dyaw), to match how the device sits relative to the robot."""
    gripper_button: int = 0
    """Button index toggling the gripper."""
    success_button: int = 1
    """Button index raising SUCCESS."""
    poll_hz: float = 250.0
    """Device polling rate of the reader thread."""

    def __post_init__(self) -> None:
        if not 0 <= self.deadband < 1:
            raise ValueError("deadband: must be in [0, 1)")
        for name in ("translation_scale", "rotation_scale", "poll_hz"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: must be a positive finite number")
        if len(self.signs) != 4 or any(s not in (-1.0, 1.0) for s in self.signs):
            raise ValueError("signs: need four values, each +1 or -1")
        if self.gripper_button < 0 or self.success_button < 0 or self.gripper_button == self.success_button:
            raise ValueError("gripper_button/success_button: distinct non-negative indices")


def apply_deadband(value: float, deadband: float) -> float:
    """Returns ``value`` with ``|value| < deadband`` zeroed and the rest rescaled to [-1, 1]."""
    magnitude = abs(value)
    if magnitude < deadband:
        return 0.0
    return math.copysign(min(1.0, (magnitude - deadband) / (1.0 - deadband)), value)


def import_pyspacemouse() -> ModuleType:
    """Returns the ``pyspacemouse`` module.

    Raises:
        HardwareError: when it (or its HID backend) is not installed.
    """
    try:
        return importlib.import_module("pyspacemouse")
    except (ImportError, OSError) as e:
        raise HardwareError(f"pyspacemouse unavailable ({e}): pip install 'resetfree[robot]'") from e


class SpaceMouseTeleop(Teleop):
    """SpaceMouse teleoperation; ``library`` replaces ``pyspacemouse`` (tests pass a fake)."""

    def __init__(self, config: SpaceMouseConfig | None = None, *, library: ModuleType | None = None,
                 action_dim: int = 5) -> None:
        if action_dim < 5:
            raise ValueError("action_dim: the mapping needs (dx, dy, dz, dyaw, gripper)")
        self.config = config or SpaceMouseConfig()
        self._library = library
        self._action_dim = action_dim
        self._lock = threading.Lock()
        self._axes = np.zeros(4)
        self._buttons_down: list[int] = []
        self._pending: set[TeleopButton] = set()
        self._gripper_closed = False
        self._device: object | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def connect(self) -> None:
        """Opens the device and starts the polling thread. Blocks briefly (HID open).

        Raises:
            DeviceAlreadyConnectedError: when already connected.
            HardwareError: when no SpaceMouse is found.
        """
        if self._thread is not None:
            raise DeviceAlreadyConnectedError("spacemouse: already connected")
        lib = self._library if self._library is not None else import_pyspacemouse()
        try:
            device = lib.open(nonblocking=True, device=self.config.device)
        except (RuntimeError, ValueError) as e:
            raise HardwareError(f"spacemouse: cannot open: {e}") from e
        self._device = device
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(device,), name="spacemouse", daemon=True)
        self._thread.start()
        logger.info("spacemouse: connected")

    def disconnect(self) -> None:
        """Stops polling and closes the device. Idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(1.0)
        device, self._device = self._device, None
        if device is not None:
            device.close()

    def _run(self, device: object) -> None:
        period = 1.0 / self.config.poll_hz
        while not self._stop.wait(period):
            try:
                mouse_state = device.read()
            except (OSError, RuntimeError) as e:
                logger.error("spacemouse: read failed (%s); stopping the reader", e)
                with self._lock:
                    self._axes[:] = 0.0
                return
            self._update([float(getattr(mouse_state, axis)) for axis in AXES], list(mouse_state.buttons))

    def _update(self, axes: list[float], buttons: list[int]) -> None:
        cfg = self.config
        with self._lock:
            previous = self._buttons_down
            pressed = [i for i, b in enumerate(buttons) if b and not (i < len(previous) and previous[i])]
            self._buttons_down = buttons
            self._axes[:] = axes
            if cfg.gripper_button in pressed:
                self._gripper_closed = not self._gripper_closed
            if cfg.success_button in pressed:
                self._pending.add(TeleopButton.SUCCESS)

    def reset(self) -> None:
        """Opens the latched gripper toggle, so each episode starts with the gripper open."""
        with self._lock:
            self._gripper_closed = False

    def read(self) -> TeleopCommand:
        """Returns the action from the newest device state and the buttons raised since the
        last call. Non-blocking."""
        cfg = self.config
        action = np.zeros(self._action_dim, dtype=np.float32)
        with self._lock:
            axes = self._axes.copy()
            buttons = frozenset(self._pending)
            self._pending.clear()
            closed = self._gripper_closed
        scales = (cfg.translation_scale,) * 3 + (cfg.rotation_scale,)
        for i in range(4):
            action[i] = cfg.signs[i] * scales[i] * apply_deadband(axes[i], cfg.deadband)
        action[4] = 1.0 if closed else -1.0
        return TeleopCommand(action=np.clip(action, -1.0, 1.0), buttons=buttons)
