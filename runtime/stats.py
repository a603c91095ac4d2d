"""Bounded statistics for the control loop: a numpy ring of samples and the loop's report
(:class:`RuntimeStats`, which wraps the wire's :class:`protocol.messages.LoopStats`)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np

from protocol.messages import LoopStats

logger = logging.getLogger(__name__)


class Ring:
    """A fixed-capacity ring of float samples (newest overwrite oldest); O(1) ``add``.

    Not thread-safe: one writer (the event loop thread) and readers on the same thread.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self._data = np.zeros(capacity, dtype=np.float64)
        self._next = 0
        self._count = 0
        self._max = 0.0
        self.total = 0
        """Samples added since construction (or ``clear``), including overwritten ones."""

    def add(self, value: float) -> None:
        """Stores one sample; non-blocking."""
        self._data[self._next] = value
        self._next = (self._next + 1) % self._data.size
        self._count = min(self._count + 1, self._data.size)
        self.total += 1
        self._max = max(self._max, value) if self.total > 1 else value

    def values(self) -> np.ndarray:
        """Returns a copy of the stored samples (oldest first)."""
        if self._count < self._data.size:
            return self._data[: self._count].copy()
        return np.concatenate([self._data[self._next :], self._data[: self._next]])

    def percentile(self, q: float) -> float:
        """Returns the ``q``-th percentile of the stored samples, ``0.0`` when empty."""
        if self._count == 0:
            return 0.0
        return float(np.percentile(self._data[: self._count], q))

    @property
    def max_ever(self) -> float:
        """Largest sample since construction (not only the stored window); ``0.0`` when empty."""
        return self._max if self.total else 0.0

    def __len__(self) -> int:
        return self._count

    def clear(self) -> None:
        """Forgets every sample."""
        self._next = 0
        self._count = 0
        self._max = 0.0
        self.total = 0


@dataclass(frozen=True, kw_only=True)
class RuntimeStats:
    """What the loop reports: the heartbeat's :class:`protocol.messages.LoopStats` plus the
    runtime-only figures that travel in ``Status.detail`` and the logs."""

    loop: LoopStats
    """The figures heartbeats carry (``Heartbeat.stats``)."""
    ticks: int = 0
    """Ticks since start (recorded or not)."""
    skipped_ticks: int = 0
    """Ticks skipped because the loop fell a whole period behind."""
    inference_p99_ms: float = 0.0
    """99th percentile policy inference time (ms)."""
    held_ticks: int = 0
    """Ticks whose command was a hold."""
    shield: dict[str, int] = field(default_factory=dict)
    """Shield clip/hold counts by reason."""
    policy: dict[str, float] = field(default_factory=dict)
    """Policy slot counters: versions, swaps, rejections, last swap time."""
    late: dict[str, int] = field(default_factory=dict)
    """Late ticks by cause (:mod:`runtime.lateness`)."""

    def detail(self) -> dict[str, float | int | str | bool]:
        """Returns every figure as flat scalars (for ``Status.detail``): the LoopStats fields,
        the extras, and the shield/policy counters prefixed ``shield_``/``policy_``."""
        out: dict[str, float | int | str | bool] = dict(asdict(self.loop))
        out.update(ticks=self.ticks, skipped_ticks=self.skipped_ticks,
                   inference_p99_ms=self.inference_p99_ms, held_ticks=self.held_ticks)
        out.update({f"shield_{k}": v for k, v in self.shield.items()})
        out.update({f"policy_{k}": v for k, v in self.policy.items()})
        out.update({f"late_{k}": v for k, v in self.late.items()})
        return out
