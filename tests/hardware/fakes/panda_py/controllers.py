"""Fake ``panda_py.controllers``."""

from __future__ import annotations

import threading

import numpy as np

__all__ = ["CartesianImpedance"]


class CartesianImpedance:
    """Same constructor and ``set_control`` as panda-py's controller; records setpoints."""

    def __init__(self, impedance: np.ndarray | None = None, damping_ratio: float = 1.0,
                 nullspace_stiffness: float = 0.5, filter_coeff: float = 1.0) -> None:
        self.impedance = np.diag([600.0] * 3 + [30.0] * 3) if impedance is None else np.asarray(impedance)
        if self.impedance.shape != (6, 6):
            raise TypeError("impedance: expected a 6x6 matrix")
        self._position: np.ndarray | None = None
        self._orientation: np.ndarray | None = None
        self._running = threading.Event()
        self._arm = None

    def set_control(self, position: np.ndarray, orientation: np.ndarray,
                    q_nullspace: np.ndarray | None = None) -> None:
        position = np.asarray(position, dtype=float).reshape(3).copy()
        orientation = np.asarray(orientation, dtype=float).reshape(4).copy()
        arm = self._arm
        if arm is not None:
            with arm.lock:
                arm.set_control_calls.append((arm.position.copy(), position, orientation))
                self._position, self._orientation = position, orientation
        else:
            self._position, self._orientation = position, orientation

    def get_time(self) -> float:
        return 0.0
