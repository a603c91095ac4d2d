"""What the control loop records: steps into RLDS segments and uplink batches
(:class:`BatchBuilder`), handed to a non-blocking sink (:class:`StepSink`, the outbox).

Recording follows RLDS (docs/architecture.md): the builder keeps the newest step back one
tick so that, when a segment ends (pause, hold without observation, e-stop, go-home,
environment reset, shutdown), that step can be marked ``is_last``; the next recorded step
is ``is_first``.
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np

from protocol.messages import TransitionBatch


class StepSink(Protocol):
    """Where recorded batches go (the :class:`~runtime.outbox.Outbox`), which numbers them."""

    @property
    def session_id(self) -> str:
        """Session the batches belong to."""

    @property
    def next_seq(self) -> int:
        """Seq the next batch must start at."""

    @property
    def accepting(self) -> bool:
        """Whether ``put_steps`` will take a batch now."""

    @property
    def depth(self) -> int:
        """Steps waiting to be acked."""

    @property
    def spilled_bytes(self) -> int:
        """Bytes on disk."""

    def put_steps(self, batch: TransitionBatch) -> int:
        """Queues a batch starting at ``next_seq`` without blocking; returns its first seq;
        raises OutboxError."""


class BatchBuilder:
    """Collects steps column-wise, holding the newest back so a segment end can mark it last."""

    def __init__(self) -> None:
        self._done: list[tuple[dict[str, np.ndarray], np.ndarray, int, float, bool, bool]] = []
        self._pending: tuple[dict[str, np.ndarray], np.ndarray, int, float, bool] | None = None
        self._new_segment = True
        self._oldest: float | None = None

    def add(self, observation: dict[str, np.ndarray], action: np.ndarray, agent: int, timestamp: float) -> None:
        """Records one step; the previous one becomes complete (not last)."""
        if self._pending is not None:
            self._done.append((*self._pending, False))
        obs = {name: np.array(value, copy=True) for name, value in observation.items()}
        self._pending = (obs, action.astype(np.float32), agent, timestamp, self._new_segment)
        self._new_segment = False
        if self._oldest is None:
            self._oldest = time.monotonic()

    def end_segment(self) -> None:
        """Marks the held-back step as last; the next step starts a segment. Idempotent."""
        if self._pending is not None:
            self._done.append((*self._pending, True))
            self._pending = None
        self._new_segment = True

    @property
    def buffered(self) -> int:
        """Steps recorded but not yet taken (complete plus the held-back one)."""
        return len(self._done) + (self._pending is not None)

    def ready(self, steps: int, interval_s: float) -> bool:
        """Whether ``steps`` complete steps wait or the oldest is ``interval_s`` old."""
        if not self._done:
            return False
        return len(self._done) >= steps or (
            self._oldest is not None and time.monotonic() - self._oldest >= interval_s)

    def take(self, session_id: str, first_seq: int) -> TransitionBatch | None:
        """Returns the complete steps as one batch of ``session_id`` numbered from ``first_seq``
        (None when there are none) and forgets them."""
        if not self._done:
            return None
        rows, self._done = self._done, []
        self._oldest = None if self._pending is None else time.monotonic()
        names = rows[0][0].keys()
        return TransitionBatch(
            session_id=session_id, first_seq=first_seq,
            observations={name: np.stack([r[0][name] for r in rows]) for name in names},
            actions=np.stack([r[1] for r in rows]),
            agents=np.asarray([r[2] for r in rows], dtype=np.uint8),
            timestamps=np.asarray([r[3] for r in rows], dtype=np.float64),
            is_first=np.asarray([r[4] for r in rows], dtype=bool),
            is_last=np.asarray([r[5] for r in rows], dtype=bool),
        )
