"""RealSenseCamera against the fake pipeline, and frames from the real pyrealsense2."""

from __future__ import annotations

import itertools
import queue
import threading
import time

import numpy as np
import pytest

from hardware.interfaces import CameraStatus, DeviceNotConnectedError, HardwareError, StaleFrameError
from hardware.realsense import CropResize, RealSenseCamera, RealSenseConfig, area_weights
from tests.hardware.fakes import pyrealsense2 as fake_rs

_SERIALS = itertools.count()


def make_camera(**overrides: object) -> tuple[RealSenseCamera, object]:
    serial = f"fake-{next(_SERIALS)}"
    device = fake_rs._add_device(serial, width=160, height=120, fps=60)
    kwargs = dict(serial=serial, width=160, height=120, fps=60, image_size=84,
                  frame_timeout_s=0.05, drop_after_s=0.2, reconnect_initial_s=0.05, reconnect_max_s=0.2)
    kwargs.update(overrides)
    return RealSenseCamera(RealSenseConfig(**kwargs), library=fake_rs), device


def wait_until(predicate, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# --------------------------------------------------------------------------- conversion
def test_area_weights_rows_sum_to_one_and_match_block_mean() -> None:
    w = area_weights(480, 84)
    assert w.shape == (84, 480)
    assert np.allclose(w.sum(axis=1), 1.0, atol=1e-5)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    out = CropResize(120, 160, 40)(img)  # 120x120 crop -> 40: exact 3x3 block means
    crop = img[:, 20:140].astype(np.float64)
    blocks = crop.reshape(40, 3, 40, 3, 3).mean(axis=(1, 3))
    assert out.shape == (3, 40, 40) and out.dtype == np.uint8
    assert np.abs(out.astype(np.float64) - np.moveaxis(blocks, 2, 0)).max() <= 0.5 + 1e-6


def test_crop_resize_keeps_constant_and_rejects_wrong_shape() -> None:
    convert = CropResize(480, 640, 84)
    img = np.full((480, 640, 3), 77, dtype=np.uint8)
    assert np.all(convert(img) == 77)
    with pytest.raises(ValueError, match="image"):
        convert(np.zeros((480, 640, 4), dtype=np.uint8))


def test_config_rejects() -> None:
    with pytest.raises(ValueError, match="serial"):
        RealSenseConfig(serial="")
    with pytest.raises(ValueError, match="image_size"):
        RealSenseConfig(serial="1", width=64, height=48, image_size=84)
    with pytest.raises(ValueError, match="reconnect_max_s"):
        RealSenseConfig(serial="1", reconnect_initial_s=2.0, reconnect_max_s=1.0)


# --------------------------------------------------------------------------- camera on the fake
def test_stream_read_and_read_latest() -> None:
    camera, _ = make_camera()
    assert camera.status is CameraStatus.CLOSED
    with pytest.raises(DeviceNotConnectedError):
        camera.read_latest(1.0)
    with camera:
        assert camera.status is CameraStatus.STREAMING
        first = camera.read(timeout=1.0)
        second = camera.read(timeout=1.0)
        assert second.index > first.index
        assert first.image.shape == (3, 84, 84) and first.image.dtype == np.uint8
        latest = camera.read_latest(max_age=0.5)
        assert latest.index >= second.index
        assert time.monotonic() - latest.timestamp < 0.5
    assert camera.status is CameraStatus.CLOSED
    with pytest.raises(DeviceNotConnectedError):
        camera.read(timeout=0.1)
    camera.disconnect()  # idempotent


def test_missing_device_fails_connect() -> None:
    camera = RealSenseCamera(RealSenseConfig(serial="absent", width=160, height=120), library=fake_rs)
    with pytest.raises(HardwareError, match="cannot start"):
        camera.connect()
    assert camera.status is CameraStatus.CLOSED


def test_stale_frame_then_reconnect_after_drop() -> None:
    camera, device = make_camera()
    with camera:
        camera.read_latest(max_age=0.5)
        device.unplug()
        time.sleep(0.1)
        with pytest.raises(StaleFrameError):
            camera.read_latest(max_age=0.05)
        assert wait_until(lambda: camera.status is CameraStatus.FAILED)
        with pytest.raises(StaleFrameError):
            camera.read_latest(max_age=0.1)
        starts = device.starts
        time.sleep(0.3)  # several failed reopen attempts with backoff
        device.replug()
        assert wait_until(lambda: camera.status is CameraStatus.STREAMING)
        assert camera.reconnects == 1 and device.starts == starts + 1

        def fresh() -> bool:
            try:
                camera.read_latest(max_age=0.1)
            except StaleFrameError:
                return False
            return True

        assert wait_until(fresh)
        assert camera.read(timeout=1.0).index > 1


def test_read_times_out_while_unplugged() -> None:
    camera, device = make_camera()
    with camera:
        camera.read(timeout=1.0)
        device.unplug()
        with pytest.raises(TimeoutError):
            for _ in range(5):  # a frame captured just before the unplug may still be unread
                camera.read(timeout=0.1)


# --------------------------------------------------------------------------- real pyrealsense2
def _real_rs():
    return pytest.importorskip("pyrealsense2", reason="pyrealsense2 (and libusb) not installed")


def _software_color_sensor(rs, serial: str, width: int, height: int, fps: int):
    device = rs.software_device()
    device.register_info(rs.camera_info.serial_number, serial)
    sensor = device.add_sensor("Color")
    intrinsics = rs.intrinsics()
    intrinsics.width, intrinsics.height = width, height
    intrinsics.ppx, intrinsics.ppy, intrinsics.fx, intrinsics.fy = width / 2, height / 2, width, width
    intrinsics.model = rs.distortion.none
    vs = rs.video_stream()
    vs.type, vs.index, vs.uid = rs.stream.color, 0, 0
    vs.width, vs.height, vs.fps, vs.bpp, vs.fmt = width, height, fps, 3, rs.format.rgb8
    vs.intrinsics = intrinsics
    profile = sensor.add_video_stream(vs)
    return device, sensor, profile


def _software_frame(rs, profile, image: np.ndarray, number: int):
    f = rs.software_video_frame()
    f.pixels = image
    f.bpp = 3
    f.stride = image.shape[1] * 3
    f.timestamp = number * 10.0
    f.domain = rs.timestamp_domain.system_time
    f.frame_number = number
    f.profile = profile.as_video_stream_profile()
    return f


def test_real_library_frames_convert() -> None:
    """Synthetic frames through the real librealsense (software_device sensor callback)."""
    rs = _real_rs()
    width, height = 160, 120
    device, sensor, profile = _software_color_sensor(rs, "SW-CONV", width, height, 30)
    arrived: queue.Queue = queue.Queue()
    sensor.open(profile)
    sensor.start(lambda fr: arrived.put(np.array(fr.as_video_frame().get_data(), copy=True)))
    try:
        image = np.zeros((height, width, 3), dtype=np.uint8)
        image[:, :, 2] = 200
        sensor.on_video_frame(_software_frame(rs, profile, image, 1))
        data = arrived.get(timeout=2.0)
    finally:
        sensor.stop()
        sensor.close()
    assert data.shape == (height, width, 3) and data.dtype == np.uint8
    out = CropResize(height, width, 84)(data)
    assert out.shape == (3, 84, 84) and np.all(out[2] == 200) and np.all(out[:2] == 0)


def test_real_library_pipeline_with_software_device() -> None:
    """The adapter end to end on the real library, where it lists software devices."""
    rs = _real_rs()
    width, height, fps = 160, 120, 30
    device, sensor, profile = _software_color_sensor(rs, "SW-PIPE", width, height, fps)
    device.create_matcher(rs.matchers.default)
    ctx = rs.context()
    device.add_to(ctx)
    if ctx.query_devices(int(rs.product_line.any) | int(rs.product_line.sw_only)).size() == 0:
        pytest.skip("this librealsense build does not list software devices in a context")
    camera = RealSenseCamera(RealSenseConfig(serial="SW-PIPE", width=width, height=height, fps=fps,
                                             connect_timeout_s=2.0), library=rs, context=ctx)
    stop = threading.Event()

    def feed() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            sensor.on_video_frame(_software_frame(rs, profile, np.full((height, width, 3), n % 256, np.uint8), n))
            time.sleep(1 / fps)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        with camera:
            frame = camera.read(timeout=2.0)
            assert frame.image.shape == (3, 84, 84)
    finally:
        stop.set()
        feeder.join(1.0)
