"""Keyboard and SpaceMouse teleoperation with injected key sources and a fake pyspacemouse."""

from __future__ import annotations

import queue
import time

import numpy as np
import pytest

from hardware.interfaces import HardwareError, TeleopButton
from hardware.spacemouse import SpaceMouseConfig, SpaceMouseTeleop, apply_deadband
from hardware.teleop import KeyboardTeleop, KeyboardTeleopConfig, decode_keys
from tests.hardware.fakes import pyspacemouse as fake_sm


def wait_until(predicate, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def test_decode_terminal_bytes() -> None:
    assert decode_keys("wS \r\x7f") == ["w", "s", "space", "enter", "backspace"]
    assert decode_keys("\x1b") == ["esc"]
    assert decode_keys("\x1b[A") == []  # arrow key: ignored, not QUIT


def test_keyboard_from_queue_maps_keys_and_buttons() -> None:
    keys: queue.Queue = queue.Queue()
    teleop = KeyboardTeleop(KeyboardTeleopConfig(key_hold_s=0.0), keys=keys)
    with teleop:
        cmd = teleop.read()
        assert np.all(cmd.action[:4] == 0) and cmd.action[4] == -1.0 and not cmd.buttons
        for key in ["w", "a", "f", "q", "space", "enter", "z"]:
            keys.put(key)
        assert wait_until(lambda: keys.empty())
        time.sleep(0.05)
        cmd = teleop.read()
        assert cmd.action.tolist() == [1.0, 1.0, -1.0, 1.0, 1.0]
        assert cmd.buttons == {TeleopButton.SUCCESS, TeleopButton.DISCARD}
        cmd = teleop.read()  # presses are consumed; the gripper state persists
        assert cmd.action.tolist() == [0.0, 0.0, 0.0, 0.0, 1.0] and not cmd.buttons
        keys.put("w")
        keys.put("s")  # opposite keys cancel
        keys.put("esc")
        assert wait_until(lambda: keys.empty())
        time.sleep(0.05)
        cmd = teleop.read()
        assert cmd.action[0] == 0.0 and cmd.buttons == {TeleopButton.QUIT}


def test_keyboard_hold_bridges_key_repeat() -> None:
    teleop = KeyboardTeleop(KeyboardTeleopConfig(key_hold_s=0.3), keys=iter(["r"]))
    with teleop:
        assert wait_until(lambda: teleop.read().action[2] == 1.0)
        assert teleop.read().action[2] == 1.0  # still held within key_hold_s
        time.sleep(0.35)
        assert teleop.read().action[2] == 0.0


def test_keyboard_config_rejects() -> None:
    with pytest.raises(ValueError, match="speed"):
        KeyboardTeleopConfig(speed=0.0)


def test_deadband() -> None:
    assert apply_deadband(0.05, 0.1) == 0.0
    assert apply_deadband(-1.0, 0.1) == -1.0
    assert apply_deadband(0.55, 0.1) == pytest.approx(0.5)


def test_spacemouse_axes_deadband_and_button_edges() -> None:
    device = fake_sm.SpaceMouseDevice()
    fake_sm._DEVICES.append(device)
    teleop = SpaceMouseTeleop(SpaceMouseConfig(deadband=0.1, signs=(1.0, -1.0, 1.0, 1.0), poll_hz=500),
                              library=fake_sm)
    with teleop:
        device._set(x=0.55, y=0.55, z=0.05, yaw=-1.0)
        assert wait_until(lambda: teleop.read().action[0] != 0)
        cmd = teleop.read()
        assert cmd.action[:4] == pytest.approx([0.5, -0.5, 0.0, -1.0]) and cmd.action[4] == -1.0
        device._set(buttons=[1, 0])
        assert wait_until(lambda: teleop.read().action[4] == 1.0)
        time.sleep(0.02)
        assert teleop.read().action[4] == 1.0  # held button toggles once, on the rising edge
        device._set(buttons=[0, 1])
        assert wait_until(lambda: TeleopButton.SUCCESS in teleop.read().buttons)
    assert device.closed


def test_spacemouse_missing_device() -> None:
    fake_sm._DEVICES.clear()
    with pytest.raises(HardwareError, match="cannot open"):
        SpaceMouseTeleop(library=fake_sm).connect()


def test_keyboard_reset_opens_latched_gripper() -> None:
    keys: queue.Queue = queue.Queue()
    teleop = KeyboardTeleop(KeyboardTeleopConfig(key_hold_s=0.0), keys=keys)
    with teleop:
        keys.put("space")
        assert wait_until(lambda: teleop.read().action[4] == 1.0)
        teleop.reset()
        assert teleop.read().action[4] == -1.0
