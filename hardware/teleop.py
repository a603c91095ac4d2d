"""Keyboard teleoperation: terminal keys (or any injected key source) → robot actions.

Key map (action ``(dx, dy, dz, dyaw, gripper)``):

====================  =============================================
key                   effect
====================  =============================================
``w`` / ``s``         +x / -x (away from / toward the robot base)
``a`` / ``d``         +y / -y
``r`` / ``f``         +z / -z (up / down)
``q`` / ``e``         +yaw / -yaw
``space``             toggle the gripper (starts open)
``enter``             SUCCESS: end the episode, mark it successful
``backspace``, ``x``  FAILURE: end the episode, mark it failed
``z``                 DISCARD: throw the current episode away
``esc``               QUIT: stop recording
====================  =============================================

A terminal has no key-release events, only key repeats, so a motion key counts as held for
``key_hold_s`` after its last press (bridging repeats) and every press is seen by the next
``read()`` even when it was released in between.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import select
import sys
import termios
import threading
import time
import tty
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from hardware.interfaces import DeviceAlreadyConnectedError, HardwareError, Teleop, TeleopButton, TeleopCommand

logger = logging.getLogger(__name__)

MOTION_KEYS: dict[str, tuple[int, float]] = {
    "w": (0, 1.0), "s": (0, -1.0),
    "a": (1, 1.0), "d": (1, -1.0),
    "r": (2, 1.0), "f": (2, -1.0),
    "q": (3, 1.0), "e": (3, -1.0),
}
"""Motion key → (action index, sign)."""

BUTTON_KEYS: dict[str, TeleopButton] = {
    "enter": TeleopButton.SUCCESS,
    "backspace": TeleopButton.FAILURE,
    "x": TeleopButton.FAILURE,
    "z": TeleopButton.DISCARD,
    "esc": TeleopButton.QUIT,
}
"""Signal key → operator button."""

GRIPPER_KEY = "space"
"""Toggles the gripper between open (-1) and closed (+1)."""


@dataclass(frozen=True, kw_only=True)
class KeyboardTeleopConfig:
    """How key presses become actions."""

    key_hold_s: float = 0.12
    """A motion key counts as held this long after its last press (terminal repeat bridging)."""
    speed: float = 1.0
    """Magnitude of a motion key's action component, in (0, 1]."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.key_hold_s) and self.key_hold_s >= 0):
            raise ValueError("key_hold_s: must be a finite number >= 0")
        if not 0 < self.speed <= 1:
            raise ValueError("speed: must be in (0, 1]")


def decode_keys(chunk: str) -> list[str]:
    """Returns the key names in one read from a terminal in cbreak mode.

    Escape sequences (arrow and function keys) are dropped; a lone ESC is ``"esc"``.
    """
    if chunk.startswith("\x1b"):
        return ["esc"] if chunk == "\x1b" else []
    names = {"\r": "enter", "\n": "enter", "\x7f": "backspace", "\x08": "backspace", " ": "space"}
    return [names.get(ch, ch.lower()) for ch in chunk]


class TerminalKeys:
    """Iterates over keys typed in the controlling terminal, in cbreak mode, until ``close()``.

    The terminal's settings are restored when the iteration ends. Polls with ``select``
    (50 ms), so closing takes effect within one poll.
    """

    def __init__(self, stream: object = None) -> None:
        self._stream = stream if stream is not None else sys.stdin
        self._closed = threading.Event()

    def close(self) -> None:
        """Ends the iteration (from any thread)."""
        self._closed.set()

    def __iter__(self) -> Iterator[str]:
        fd = self._stream.fileno()
        if not os.isatty(fd):
            raise HardwareError("keyboard teleop needs a terminal on stdin")
        saved = termios.tcgetattr(fd)
        try:
            tty.setcbreak(fd)
            while not self._closed.is_set():
                ready, _, _ = select.select([fd], [], [], 0.05)
                if ready:
                    yield from decode_keys(os.read(fd, 32).decode(errors="ignore"))
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class KeyboardTeleop(Teleop):
    """Keyboard teleoperation; ``keys`` replaces the terminal (any iterable of key names or a
    ``queue.Queue`` of them), so tests and scripted demos can drive it."""

    def __init__(self, config: KeyboardTeleopConfig | None = None, *,
                 keys: Iterable[str] | queue.Queue | None = None, action_dim: int = 5) -> None:
        if action_dim < 5:
            raise ValueError("action_dim: the key map needs (dx, dy, dz, dyaw, gripper)")
        self.config = config or KeyboardTeleopConfig()
        self._keys = keys
        self._action_dim = action_dim
        self._lock = threading.Lock()
        self._last_press: dict[str, float] = {}
        self._pressed: set[str] = set()
        self._buttons: set[TeleopButton] = set()
        self._gripper_closed = False
        self._stop = threading.Event()
        self._terminal: TerminalKeys | None = None
        self._thread: threading.Thread | None = None

    def connect(self) -> None:
        """Starts the key reader thread (raw terminal mode unless a key source was given).

        Raises:
            DeviceAlreadyConnectedError: when already connected.
        """
        if self._thread is not None:
            raise DeviceAlreadyConnectedError("keyboard teleop: already connected")
        source = self._keys
        if source is None:
            self._terminal = TerminalKeys()
            source = self._terminal
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(source,), name="keyboard-teleop", daemon=True)
        self._thread.start()
        logger.info("keyboard teleop: w/s a/d r/f q/e move, space gripper, enter success, "
                    "backspace/x failure, z discard, esc quit")

    def disconnect(self) -> None:
        """Stops the reader and restores the terminal. Idempotent; blocks up to ~0.1 s."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        if self._terminal is not None:
            self._terminal.close()
        thread.join(0.5)

    def _run(self, source: Iterable[str] | queue.Queue) -> None:
        if isinstance(source, queue.Queue):
            while not self._stop.is_set():
                try:
                    self.press(source.get(timeout=0.05))
                except queue.Empty:
                    continue
            return
        try:
            for key in source:
                if self._stop.is_set():
                    return
                self.press(key)
        except HardwareError as e:
            logger.error("keyboard teleop: %s", e)

    def press(self, key: str) -> None:
        """Handles one key press (the reader thread calls it; tests may too). Non-blocking."""
        now = time.monotonic()
        with self._lock:
            if key in MOTION_KEYS:
                self._last_press[key] = now
                self._pressed.add(key)
            elif key == GRIPPER_KEY:
                self._gripper_closed = not self._gripper_closed
            elif key in BUTTON_KEYS:
                self._buttons.add(BUTTON_KEYS[key])

    def reset(self) -> None:
        """Opens the latched gripper toggle, so each episode starts with the gripper open."""
        with self._lock:
            self._gripper_closed = False

    def read(self) -> TeleopCommand:
        """Returns the action from keys held or pressed since the last call, and the buttons
        pressed since then. Non-blocking."""
        now = time.monotonic()
        action = np.zeros(self._action_dim, dtype=np.float32)
        with self._lock:
            for key, (index, sign) in MOTION_KEYS.items():
                held = now - self._last_press.get(key, -math.inf) <= self.config.key_hold_s
                if held or key in self._pressed:
                    action[index] += sign * self.config.speed
            action[4] = 1.0 if self._gripper_closed else -1.0
            buttons = frozenset(self._buttons)
            self._pressed.clear()
            self._buttons.clear()
        return TeleopCommand(action=np.clip(action, -1.0, 1.0), buttons=buttons)
