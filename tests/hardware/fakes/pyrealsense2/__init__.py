"""Fake ``pyrealsense2``: simulated colour cameras behind the real pipeline API.

Devices are registered by serial with ``_add_device``; a registered device can be
unplugged and replugged (``_Device.unplug()`` / ``replug()``) to exercise reconnects.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable

import numpy as np

__all__ = ["composite_frame", "config", "context", "format", "frame", "pipeline", "stream", "video_frame"]


class stream(enum.Enum):  # noqa: N801 (pyrealsense2's spelling)
    any = 0
    depth = 1
    color = 2


class format(enum.Enum):  # noqa: N801,A001
    any = 0
    rgb8 = 5
    bgr8 = 6


class _Device:
    """A simulated camera (test hook)."""

    def __init__(self, serial: str, width: int, height: int, fps: int,
                 image_fn: Callable[[int], np.ndarray] | None) -> None:
        self.serial = serial
        self.width, self.height, self.fps = width, height, fps
        self.image_fn = image_fn or self._default_image
        self.plugged = threading.Event()
        self.plugged.set()
        self.starts = 0
        self.frame_number = 0

    def _default_image(self, n: int) -> np.ndarray:
        img = np.zeros((self.height, self.width, 3), dtype=np.uint8)
        img[..., 0] = n % 256
        img[..., 1] = np.arange(self.width, dtype=np.uint8)[None, :]
        return img

    def unplug(self) -> None:
        self.plugged.clear()

    def replug(self) -> None:
        self.plugged.set()


_DEVICES: dict[str, _Device] = {}


def _add_device(serial: str, width: int = 640, height: int = 480, fps: int = 30,
                image_fn: Callable[[int], np.ndarray] | None = None) -> _Device:
    """Registers a simulated camera and returns it (test hook)."""
    device = _Device(serial, width, height, fps, image_fn)
    _DEVICES[serial] = device
    return device


class context:  # noqa: N801
    def __init__(self) -> None:
        pass


class frame:  # noqa: N801
    def __init__(self, data: np.ndarray | None = None, number: int = 0) -> None:
        self._data = data
        self._number = number

    def __bool__(self) -> bool:
        return self._data is not None

    def get_data(self) -> np.ndarray:
        if self._data is None:
            raise RuntimeError("null pointer passed for argument \"frame\"")
        return self._data

    def get_frame_number(self) -> int:
        return self._number


class video_frame(frame):  # noqa: N801
    def get_width(self) -> int:
        return 0 if self._data is None else self._data.shape[1]

    def get_height(self) -> int:
        return 0 if self._data is None else self._data.shape[0]


class composite_frame(frame):  # noqa: N801
    def __init__(self, color: video_frame | None = None) -> None:
        super().__init__(None if color is None else color._data)
        self._color = color

    def get_color_frame(self, index: int = 0) -> video_frame:
        return self._color if self._color is not None else video_frame()


class config:  # noqa: N801
    def __init__(self) -> None:
        self._serial: str | None = None
        self._stream: tuple | None = None

    def enable_device(self, serial: str) -> None:
        self._serial = serial

    def enable_stream(self, stream_type: stream, width: int, height: int, format: format,  # noqa: A002
                      framerate: int) -> None:
        self._stream = (stream_type, width, height, format, framerate)


class pipeline:  # noqa: N801
    def __init__(self, ctx: context | None = None) -> None:
        self._device: _Device | None = None
        self._next_at = 0.0

    def start(self, config: config) -> object:
        if self._device is not None:
            raise RuntimeError("start() cannot be called before stop()")
        device = _DEVICES.get(config._serial or "")
        if device is None or not device.plugged.is_set():
            raise RuntimeError("No device connected")
        if config._stream is not None:
            st, w, h, fmt, fps = config._stream
            if (st, w, h, fmt, fps) != (stream.color, device.width, device.height, format.rgb8, device.fps):
                raise RuntimeError("Couldn't resolve requests")
        device.starts += 1
        self._device = device
        self._next_at = time.monotonic()
        return object()

    def stop(self) -> None:
        if self._device is None:
            raise RuntimeError("stop() cannot be called before start()")
        self._device = None

    def try_wait_for_frames(self, timeout_ms: int = 5000) -> tuple[bool, composite_frame]:
        device = self._device
        if device is None:
            raise RuntimeError("wait_for_frames cannot be called before start()")
        deadline = time.monotonic() + timeout_ms / 1000
        if not device.plugged.is_set():
            time.sleep(timeout_ms / 1000)
            return False, composite_frame()
        self._next_at = max(self._next_at + 1 / device.fps, time.monotonic() - 1 / device.fps)
        if self._next_at > deadline:
            time.sleep(max(0.0, deadline - time.monotonic()))
            return False, composite_frame()
        time.sleep(max(0.0, self._next_at - time.monotonic()))
        device.frame_number += 1
        image = device.image_fn(device.frame_number)
        return True, composite_frame(video_frame(image, device.frame_number))
