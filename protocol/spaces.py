"""Array specs: the one type that describes an array, for the devices and for the wire.

A device says what it produces or consumes (``hardware.interfaces``: an image, proprio, the
action with its bounds), the runtime declares its spaces in ``hello``, the learner checks
batches and demos against them. All of them use :class:`ArraySpec`. The wire carries only
``dtype`` and ``shape`` (:meth:`ArraySpec.unbounded` is what crosses); bounds stay with the
device that declared them. This module imports nothing of the project but its errors, so
``hardware`` may use it (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from protocol.errors import ProtocolError

#: Array dtypes allowed on the wire (numpy names; all little-endian, bool is one byte 0/1).
ALLOWED_DTYPES: frozenset[str] = frozenset(
    {"uint8", "int8", "int16", "int32", "int64", "uint16", "uint32",
     "float16", "float32", "float64", "bool"}
)

Bound = float | tuple[float, ...] | None


@dataclass(frozen=True, kw_only=True)
class ArraySpec:
    """The dtype and shape of one array (per step, without the batch dimension), and its
    bounds where the declaring device knows them. Raises ProtocolError (a ValueError) for a
    dtype outside :data:`ALLOWED_DTYPES` or a negative dimension."""

    shape: tuple[int, ...]
    """Non-negative dimensions, e.g. ``(3, 84, 84)`` for an image or ``(4,)`` for proprio."""
    dtype: str
    """numpy dtype name, one of :data:`ALLOWED_DTYPES`: ``"uint8"`` for images, ``"float32"`` for vectors."""
    low: Bound = None
    """Lower bound (scalar or per element); ``None`` when unbounded or not known."""
    high: Bound = None
    """Upper bound (scalar or per element); ``None`` when unbounded or not known."""

    def __post_init__(self) -> None:
        if self.dtype not in ALLOWED_DTYPES:
            raise ProtocolError(f"ArraySpec.dtype: {self.dtype!r} not allowed (one of {sorted(ALLOWED_DTYPES)})")
        if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in self.shape):
            raise ProtocolError(f"ArraySpec.shape: every dimension must be a non-negative int, got {self.shape}")

    def low_array(self) -> np.ndarray:
        """Returns the lower bound broadcast to ``shape`` (``-inf`` where unbounded)."""
        value = -np.inf if self.low is None else self.low
        return np.broadcast_to(np.asarray(value, dtype=np.float64), self.shape).copy()

    def high_array(self) -> np.ndarray:
        """Returns the upper bound broadcast to ``shape`` (``+inf`` where unbounded)."""
        value = np.inf if self.high is None else self.high
        return np.broadcast_to(np.asarray(value, dtype=np.float64), self.shape).copy()

    def unbounded(self) -> ArraySpec:
        """Returns this spec without bounds: what ``hello`` declares and the wire carries."""
        return replace(self, shape=tuple(int(d) for d in self.shape), low=None, high=None)


Space = dict[str, ArraySpec]
"""Observation name → per-step spec."""

ObsSpec = Mapping[str, tuple[tuple[int, ...], str]]
"""A space in the compact form the learner's networks, replay and policy files take:
observation name → ``(shape, dtype)``; images are ``uint8 (C, H, W)``, vectors ``float32 (D,)``."""


def obs_spec_of(space: Mapping[str, ArraySpec]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Returns the :data:`ObsSpec` form of ``space``."""
    return {name: (tuple(int(d) for d in spec.shape), spec.dtype) for name, spec in space.items()}
