"""Fake ``pyspacemouse``: ``open()`` returns a device whose state tests set with ``_set``."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

__all__ = ["SpaceMouseDevice", "SpaceMouseState", "open"]


@dataclass
class SpaceMouseState:
    t: float = -1.0
    x: float = 0.0
    y: float = 0.0
    z: float = 0.0
    roll: float = 0.0
    pitch: float = 0.0
    yaw: float = 0.0
    buttons: list[int] = field(default_factory=lambda: [0, 0])


class SpaceMouseDevice:
    def __init__(self) -> None:
        self._state = SpaceMouseState()
        self._lock = threading.Lock()
        self.closed = False
        self.reads = 0

    def read(self) -> SpaceMouseState:
        with self._lock:
            self.reads += 1
            s = self._state
            return SpaceMouseState(s.t, s.x, s.y, s.z, s.roll, s.pitch, s.yaw, list(s.buttons))

    def close(self) -> None:
        self.closed = True

    def _set(self, **values: object) -> None:
        """Sets axes/buttons as if the user moved the cap (test hook)."""
        with self._lock:
            for name, value in values.items():
                setattr(self._state, name, value)


_DEVICES: list[SpaceMouseDevice] = []
"""Devices that ``open`` hands out, in order (test hook); empty means none plugged in."""


def open(callback=None, dof_callback=None, dof_callbacks=None, button_callback=None,  # noqa: A001
         button_callbacks=None, nonblocking: bool = True, device: str | None = None,
         device_index: int = 0, device_spec=None, axis_convention=None) -> SpaceMouseDevice:
    if not _DEVICES:
        raise RuntimeError("No connected or supported devices found")
    return _DEVICES.pop(0)
