"""Intel RealSense colour camera over pyrealsense2 (``pip install pyrealsense2``).

One ``rs.pipeline`` per serial number. A background thread waits for frames (the only
blocking SDK call), converts the newest one to the policy's image (centre crop, area
resize, channel-first) and keeps it with its arrival time; the control loop takes it with
``read_latest(max_age)`` without waiting. When the device stops delivering frames (USB
drop, unplug) the thread closes the pipeline and reopens it with exponential backoff.
"""

from __future__ import annotations

import importlib
import logging
import math
import threading
import time
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from hardware.interfaces import (
    ArraySpec,
    Camera,
    CameraStatus,
    DeviceAlreadyConnectedError,
    DeviceNotConnectedError,
    Frame,
    HardwareError,
    StaleFrameError,
)

logger = logging.getLogger(__name__)

ApiCall = tuple[int, tuple[str, ...]]
"""How the adapter calls a library member: (number of positional arguments, keyword names)."""

PYREALSENSE2_API: dict[str, tuple[ApiCall, ...]] = {
    "pyrealsense2.pipeline": ((0, ()), (1, ())),
    "pyrealsense2.pipeline.start": ((1, ()),),
    "pyrealsense2.pipeline.stop": ((0, ()),),
    "pyrealsense2.pipeline.try_wait_for_frames": ((1, ()),),
    "pyrealsense2.config": ((0, ()),),
    "pyrealsense2.config.enable_device": ((1, ()),),
    "pyrealsense2.config.enable_stream": ((5, ()),),
    "pyrealsense2.composite_frame.get_color_frame": ((0, ()),),
    "pyrealsense2.video_frame.get_data": ((0, ()),),
    "pyrealsense2.stream.color": (),
    "pyrealsense2.format.rgb8": (),
}
"""Every pyrealsense2 member this module touches (the conformance test's single source)."""

PYREALSENSE2_HANDLES: dict[str, str] = {
    "rs": "pyrealsense2",
    "rs.stream": "pyrealsense2.stream",
    "rs.format": "pyrealsense2.format",
    "pipeline": "pyrealsense2.pipeline",
    "rs_config": "pyrealsense2.config",
    "frames": "pyrealsense2.composite_frame",
    "color": "pyrealsense2.video_frame",
}
"""Local names this module binds to pyrealsense2 objects (the AST check resolves through them)."""


@dataclass(frozen=True, kw_only=True)
class RealSenseConfig:
    """One RealSense colour stream and how its frames become policy images."""

    serial: str
    """Device serial number (``rs-enumerate-devices -s`` lists them)."""
    width: int = 640
    """Colour stream width (px); must be a mode the camera supports."""
    height: int = 480
    """Colour stream height (px)."""
    fps: int = 30
    """Colour stream frame rate."""
    image_size: int = 84
    """Side of the square policy image (px)."""
    crop_fraction: float = 1.0
    """Side of the centre crop as a fraction of the shorter image side (1.0 = largest square)."""
    frame_timeout_s: float = 0.2
    """How long one wait for a frame may block the capture thread."""
    drop_after_s: float = 1.0
    """No frame for this long means the device dropped: close and reopen the pipeline."""
    connect_timeout_s: float = 5.0
    """``connect()`` fails when no first frame arrives within this time."""
    reconnect_initial_s: float = 0.5
    """First wait before reopening a dropped device; doubles after each failed attempt."""
    reconnect_max_s: float = 8.0
    """Longest wait between reopen attempts."""

    def __post_init__(self) -> None:
        if not self.serial:
            raise ValueError("serial: must not be empty")
        for name in ("width", "height", "fps", "image_size"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name}: must be positive")
        if self.image_size > min(self.width, self.height):
            raise ValueError("image_size: larger than the stream; area resize only shrinks")
        if not 0 < self.crop_fraction <= 1:
            raise ValueError("crop_fraction: must be in (0, 1]")
        for name in ("frame_timeout_s", "drop_after_s", "connect_timeout_s",
                     "reconnect_initial_s", "reconnect_max_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: must be a positive finite number")
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s: must be >= reconnect_initial_s")


# --------------------------------------------------------------------------- image conversion
def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """Returns the ``(n_out, n_in)`` matrix averaging each output pixel's input footprint
    (area interpolation, rows sum to 1)."""
    scale = n_in / n_out
    edges = np.arange(n_out + 1) * scale
    lo, hi = edges[:-1, None], edges[1:, None]
    pixels = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, pixels + 1) - np.maximum(lo, pixels), 0.0, None)
    return (overlap / scale).astype(np.float32)


class CropResize:
    """Centre crop to a square and area-resize to ``size``; ``(H, W, 3)`` → ``(3, size, size)``."""

    def __init__(self, height: int, width: int, size: int, crop_fraction: float = 1.0) -> None:
        side = max(size, int(round(min(height, width) * crop_fraction)))
        self.top = (height - side) // 2
        self.left = (width - side) // 2
        self.side = side
        self.shape = (height, width, 3)
        self._rows = area_weights(side, size)
        self._cols_t = np.ascontiguousarray(area_weights(side, size).T)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Returns the ``uint8 (3, size, size)`` policy image.

        Raises:
            ValueError: when ``image`` does not have the configured ``(H, W, 3)`` shape.
        """
        if image.shape != self.shape:
            raise ValueError(f"image: expected shape {self.shape}, got {image.shape}")
        crop = image[self.top:self.top + self.side, self.left:self.left + self.side]
        chw = np.moveaxis(crop, 2, 0).astype(np.float32)          # (3, side, side)
        out = self._rows @ chw @ self._cols_t                      # (3, size, size)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def import_pyrealsense2() -> ModuleType:
    """Returns the ``pyrealsense2`` module.

    Raises:
        HardwareError: when it is not installed or its shared libraries (libusb) are missing.
    """
    try:
        return importlib.import_module("pyrealsense2")
    except ImportError as e:
        raise HardwareError(f"pyrealsense2 unavailable ({e}): pip install 'resetfree[robot]'") from e


# --------------------------------------------------------------------------- camera
class RealSenseCamera(Camera):
    """A RealSense colour stream whose newest frame is always at hand.

    ``library`` replaces the ``pyrealsense2`` module (tests pass a fake); ``context``, when
    given, is passed to ``rs.pipeline(context)`` (playback or software devices).
    """

    def __init__(self, config: RealSenseConfig, *, name: str = "camera",
                 library: ModuleType | None = None, context: object | None = None) -> None:
        self.config = config
        self.name = name
        self._library = library
        self._context = context
        self._rs: ModuleType | None = None
        self._convert = CropResize(config.height, config.width, config.image_size, config.crop_fraction)
        self._status = CameraStatus.CLOSED
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._last_read_index = -1
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self.reconnects = 0
        """Times the device dropped and was reopened since ``connect()``."""

    @property
    def serial(self) -> str:
        """The configured serial number."""
        return self.config.serial

    @property
    def image_spec(self) -> ArraySpec:
        """``uint8 (3, image_size, image_size)``."""
        s = self.config.image_size
        return ArraySpec(shape=(3, s, s), dtype="uint8", low=0, high=255)

    @property
    def status(self) -> CameraStatus:
        """CLOSED before ``connect``/after ``disconnect``, FAILED while reopening a dropped device."""
        return self._status

    # -- lifecycle
    def connect(self) -> None:
        """Opens the pipeline and starts the capture thread. Blocks until the first frame
        (at most ``connect_timeout_s``).

        Raises:
            DeviceAlreadyConnectedError: when already connected.
            HardwareError: when the device cannot be opened or sends no frame.
        """
        if self._thread is not None:
            raise DeviceAlreadyConnectedError(f"realsense {self.serial}: already connected")
        self._rs = self._library if self._library is not None else import_pyrealsense2()
        try:
            pipeline = self._open()
        except RuntimeError as e:
            raise HardwareError(f"realsense {self.serial}: cannot start: {e}") from e
        self._closing.clear()
        self._frame = None
        self._last_read_index = -1
        self._status = CameraStatus.STREAMING
        self._thread = threading.Thread(target=self._run, args=(pipeline,),
                                        name=f"realsense-{self.serial}", daemon=True)
        self._thread.start()
        with self._cond:
            arrived = self._cond.wait_for(lambda: self._frame is not None, self.config.connect_timeout_s)
        if not arrived:
            self.disconnect()
            raise HardwareError(f"realsense {self.serial}: no frame within {self.config.connect_timeout_s} s")
        logger.info("realsense %s: streaming %dx%d@%d", self.serial,
                    self.config.width, self.config.height, self.config.fps)

    def disconnect(self) -> None:
        """Stops the capture thread and the pipeline. Idempotent; blocks up to ~1 s."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._closing.set()
        thread.join(self.config.frame_timeout_s + 2.0)
        self._status = CameraStatus.CLOSED
        with self._cond:
            self._cond.notify_all()
        logger.info("realsense %s: closed", self.serial)

    def _open(self) -> object:
        """Creates and starts a pipeline for this serial. Blocks (USB negotiation)."""
        rs = self._rs
        cfg = self.config
        pipeline = rs.pipeline() if self._context is None else rs.pipeline(self._context)
        rs_config = rs.config()
        rs_config.enable_device(cfg.serial)
        rs_config.enable_stream(rs.stream.color, cfg.width, cfg.height, rs.format.rgb8, cfg.fps)
        pipeline.start(rs_config)
        return pipeline

    @staticmethod
    def _close(pipeline: object) -> None:
        try:
            pipeline.stop()
        except RuntimeError as e:
            logger.debug("realsense: pipeline.stop failed: %s", e)

    # -- capture thread
    def _run(self, pipeline: object | None) -> None:
        backoff = self.config.reconnect_initial_s
        last_frame_at = time.monotonic()
        try:
            while not self._closing.is_set():
                if pipeline is None:
                    pipeline = self._reopen(backoff)
                    if pipeline is None:
                        backoff = min(2 * backoff, self.config.reconnect_max_s)
                        continue
                    backoff = self.config.reconnect_initial_s
                    last_frame_at = time.monotonic()
                if self._capture(pipeline):
                    last_frame_at = time.monotonic()
                elif time.monotonic() - last_frame_at > self.config.drop_after_s:
                    logger.warning("realsense %s: no frame for %.1f s; reopening", self.serial,
                                   time.monotonic() - last_frame_at)
                    self._status = CameraStatus.FAILED
                    self._close(pipeline)
                    pipeline = None
        finally:
            if pipeline is not None:
                self._close(pipeline)

    def _reopen(self, backoff: float) -> object | None:
        """Waits ``backoff`` s, then tries to reopen; returns the pipeline or ``None``."""
        if self._closing.wait(backoff):
            return None
        try:
            pipeline = self._open()
        except RuntimeError as e:
            logger.info("realsense %s: reopen failed (%s); next try in %.1f s", self.serial, e,
                        min(2 * backoff, self.config.reconnect_max_s))
            return None
        self.reconnects += 1
        self._status = CameraStatus.STREAMING
        logger.warning("realsense %s: reconnected (%d so far)", self.serial, self.reconnects)
        return pipeline

    def _capture(self, pipeline: object) -> bool:
        """Waits up to ``frame_timeout_s`` for a frame and publishes it; returns whether one came."""
        try:
            ok, frames = pipeline.try_wait_for_frames(int(self.config.frame_timeout_s * 1000))
        except RuntimeError as e:
            logger.debug("realsense %s: wait failed: %s", self.serial, e)
            return False
        if not ok:
            return False
        arrived = time.monotonic()
        color = frames.get_color_frame()
        if not color:
            return False
        image = self._convert(np.asanyarray(color.get_data()))
        with self._cond:
            index = 0 if self._frame is None else self._frame.index + 1
            self._frame = Frame(image=image, timestamp=arrived, index=index)
            self._cond.notify_all()
        return True

    # -- reading
    def read(self, timeout: float = 1.0) -> Frame:
        """Blocks until a frame newer than the last one returned (by ``read`` or
        ``read_latest``) arrives.

        Raises:
            TimeoutError: when none arrives within ``timeout`` seconds.
            DeviceNotConnectedError: when closed.
        """
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self._status is CameraStatus.CLOSED
                or (self._frame is not None and self._frame.index > self._last_read_index),
                timeout)
            if self._status is CameraStatus.CLOSED:
                raise DeviceNotConnectedError(f"realsense {self.serial}: not connected")
            if not ok:
                raise TimeoutError(f"realsense {self.serial}: no new frame within {timeout} s")
            frame = self._frame
            self._last_read_index = frame.index
            return frame

    def read_latest(self, max_age: float) -> Frame:
        """Returns the newest frame without waiting.

        Raises:
            StaleFrameError: when it is older than ``max_age`` s (also while reconnecting).
            DeviceNotConnectedError: when closed.
        """
        if self._status is CameraStatus.CLOSED:
            raise DeviceNotConnectedError(f"realsense {self.serial}: not connected")
        frame = self._frame
        if frame is None:
            raise StaleFrameError(f"realsense {self.serial}: no frame yet")
        age = time.monotonic() - frame.timestamp
        if age > max_age:
            raise StaleFrameError(f"realsense {self.serial}: newest frame is {age * 1000:.0f} ms old")
        self._last_read_index = max(self._last_read_index, frame.index)
        return frame
