"""Bounded statistics for the control loop: a numpy ring of samples and the loop's snapshot."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np

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
class LoopStatsSnapshot:
    """What the loop reports in heartbeats; the first fields mirror ``protocol`` ``LoopStats``."""

    steps: int
    """Steps recorded since start."""
    loop_hz: float
    """Achieved tick rate over the recent window."""
    jitter_p50_ms: float
    """Median absolute period error (ms)."""
    jitter_p99_ms: float
    """99th percentile absolute period error (ms)."""
    jitter_max_ms: float
    """Largest absolute period error since start (ms)."""
    overruns: int
    """Ticks that started later than deadline + tolerance."""
    inference_p50_ms: float
    """Median policy inference time (ms)."""
    queue_depth: int
    """Steps waiting in the outbox (memory and spill)."""
    spilled_bytes: int
    """Bytes currently held in the spill log."""
    agent: str
    """Acting agent: ``"forward"`` or ``"backward"``."""
    paused: bool
    """Whether the loop holds the robot (paused, e-stopped, homing or blocked)."""
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

    def loop_stats_fields(self) -> dict[str, object]:
        """Returns exactly the fields of ``protocol.messages.LoopStats`` (``LoopStats(**this)``)."""
        names = (
            "steps", "loop_hz", "jitter_p50_ms", "jitter_p99_ms", "jitter_max_ms", "overruns",
            "inference_p50_ms", "queue_depth", "spilled_bytes", "agent", "paused",
        )
        data = asdict(self)
        return {name: data[name] for name in names}
