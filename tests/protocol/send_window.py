"""A sender's in-memory window of unacked batches: the reference sender of the protocol's
exactly-once tests. The runtime's own sender is ``runtime.outbox.Outbox`` (a spill log)."""

from __future__ import annotations

import collections
from collections.abc import Iterator

from protocol.errors import ProtocolError
from protocol.messages import TransitionBatch


class WindowFull(ProtocolError):
    """The send window holds its maximum count or bytes of unacked batches."""


class SendWindow:
    """Sender-side record of unacked batches for one session, bounded by count and bytes.

    Batches must be pushed in seq order without gaps, starting at ``next_seq``.
    Storage is an in-memory deque; a spilling outbox can keep its own log and use this
    class only for what is in memory.
    """

    def __init__(self, *, next_seq: int = 0, max_batches: int = 1024, max_bytes: int = 512 * 2**20) -> None:
        if next_seq < 0:
            raise ValueError(f"next_seq must be >= 0, got {next_seq}")
        if max_batches < 1:
            raise ValueError(f"max_batches must be >= 1, got {max_batches}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self._batches: collections.deque[TransitionBatch] = collections.deque()
        self._next_seq = next_seq
        self._acked = next_seq
        self._bytes = 0
        self.max_batches = max_batches
        self.max_bytes = max_bytes

    @property
    def next_seq(self) -> int:
        """Returns the seq the next pushed batch must start at."""
        return self._next_seq

    @property
    def acked(self) -> int:
        """Returns the highest cumulative ack seen (every seq below is released)."""
        return self._acked

    @property
    def nbytes(self) -> int:
        """Returns the bytes held."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._batches)

    def has_room(self, nbytes: int = 0) -> bool:
        """Returns whether one more batch of ``nbytes`` fits."""
        return len(self._batches) < self.max_batches and self._bytes + nbytes <= self.max_bytes

    def push(self, batch: TransitionBatch) -> None:
        """Stores ``batch`` until acked. Returns None.

        Raises WindowFull when over the bounds (the caller spills or waits) and
        ProtocolError when ``batch.first_seq`` is not ``next_seq``.
        """
        if batch.first_seq != self._next_seq:
            raise ProtocolError(f"transitions.first_seq: expected {self._next_seq}, got {batch.first_seq}")
        if not self.has_room(batch.nbytes):
            raise WindowFull(f"send window: {len(self._batches)} batches / {self._bytes} bytes held "
                             f"(max_batches={self.max_batches}, max_bytes={self.max_bytes})")
        self._batches.append(batch)
        self._bytes += batch.nbytes
        self._next_seq = batch.end_seq

    def on_ack(self, seq: int) -> int:
        """Releases every step below ``seq``; returns the number of batches released.

        A stale (lower) ack is ignored. Raises ProtocolError for an ack beyond ``next_seq``.
        """
        if seq > self._next_seq:
            raise ProtocolError(f"ack.seq: {seq} beyond the next seq to send {self._next_seq}")
        if seq <= self._acked:
            return 0
        self._acked = seq
        released = 0
        while self._batches and self._batches[0].end_seq <= seq:
            self._bytes -= self._batches.popleft().nbytes
            released += 1
        return released

    def resend_from(self, seq: int) -> Iterator[TransitionBatch]:
        """Yields the held steps with seq ≥ ``seq`` (first batch trimmed), in order.

        Acks everything below ``seq`` first (the peer says it has them). Raises ProtocolError
        if steps from ``seq`` were already released, or ``seq`` is beyond ``next_seq``.
        """
        if seq < self._acked:
            raise ProtocolError(f"welcome.resume_seq: {seq} is below {self._acked}, already acked and released")
        self.on_ack(seq)
        for batch in list(self._batches):
            yield batch if batch.first_seq >= seq else batch.tail(seq)
