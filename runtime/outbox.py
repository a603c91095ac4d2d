"""The uplink outbox: a write-through queue of numbered batches, in memory and in the spill log.

The loop builds each :class:`~protocol.messages.TransitionBatch` numbered from
:attr:`Outbox.next_seq` (continuing the numbering persisted by the
:class:`~runtime.spill.SpillLog`). Every batch is written to the spill log by the writer
thread as soon as it is recorded (write-through). The spill record is the batch's wire message
(:func:`runtime.spill_io.encode_batch`, the protocol's single frame): a batch is encoded once,
in the writer thread, and the bytes written are the bytes sent. Memory is the fast path for
sending and keeps that record, in place of the batch, until it is acked, unless the uplink is
down or memory is over its bound; then the memory copy is dropped and the record is read back
from disk when sent — sent as read, after a cheap check (:func:`runtime.spill_io.check_record`),
not decoded and re-encoded. :meth:`Outbox.on_ack` releases acked batches (and their disk
segments); after a reconnect :meth:`Outbox.rewind` (with the learner's ``resume_seq``) replays
every unacked batch in seq order.

A batch becomes sendable only once it is on disk, and the spill log's ``next_seq`` only
counts records actually written. So a runtime killed with SIGKILL loses only what still
sat in the writer queue (milliseconds); those seqs were never sent, and the restarted
runtime numbers its new steps from them — the learner sees neither a gap nor a duplicate.
Steps the spill log itself loses (``drop_oldest`` policy, a corrupt record) are skipped
with an ERROR and counted in :attr:`Outbox.lost_steps`; the learner learns of them by the
gap rule in docs/protocol.md.

Threads: the public methods run on the event loop; they never touch the disk, encode or
decode. Disk writes (encoding included) go to one writer thread through a bounded queue;
disk reads for replay go to a reader thread (awaited by the sender coroutine, never by the
tick), as does every decode (the quarantine's copies; a batch over one frame's limit, sent
multipart). Both threads and the record codec are :mod:`runtime.spill_io`; this module keeps
the bookkeeping. When the writer queue is full or the spill log is full under its ``hold``
policy, :attr:`Outbox.accepting` turns False and the loop stops recording and holds the
robot; nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import deque
from dataclasses import dataclass

from protocol.codec import Limits
from protocol.messages import TransitionBatch
from protocol.wire_fields import Buffer
from runtime.errors import OutboxError, SpillError
from runtime.spill import SpillLog
from runtime.spill_io import SpillIO

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class OutboxConfig:
    """Bounds of the outbox."""

    max_memory_bytes: int = 256 * 2**20
    """Array bytes kept in memory; past it, written batches are read back from disk to send."""
    max_memory_batches: int = 4096
    """Batches kept in memory; past it, as above."""
    writer_queue: int = 256
    """Disk jobs that may wait for the writer thread; when full the outbox stops accepting."""
    persist_interval_s: float = 0.5
    """How often the idle writer persists the spill log's next seq to ``state.json``."""
    max_frame_bytes: int = Limits().max_frame_bytes
    """Largest batch sent as its one-frame record (the learner's frame limit, also its socket's
    ``ZMQ_MAXMSGSIZE``); a bigger one is sent multipart, encoded in the reader thread."""

    def __post_init__(self) -> None:
        for name in ("max_memory_bytes", "max_memory_batches", "writer_queue", "max_frame_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        if not self.persist_interval_s > 0:
            raise ValueError(f"persist_interval_s: must be positive, got {self.persist_interval_s}")


@dataclass
class _Entry:
    first_seq: int
    count: int
    size: int
    """Array bytes of the batch (what the memory bound counts, as a batch or as its record)."""
    batch: TransitionBatch | None
    """The batch until it is written (the writer encodes it), then None."""
    record: bytes | None = None
    """Once written and while kept in memory: the spill record, i.e. the wire message."""
    written: bool = False
    writing: bool = False
    lost: bool = False
    """Its spilled record could not be read back; never offered again."""

    @property
    def end(self) -> int:
        return self.first_seq + self.count

    @property
    def held(self) -> bool:
        return self.batch is not None or self.record is not None


@dataclass(frozen=True)
class OutgoingBatch:
    """One batch to send."""

    first_seq: int
    """First seq of the batch."""
    count: int
    """Steps in the batch."""
    frames: list[Buffer]
    """The encoded ``transitions`` message to send as it is: one frame, the batch's spill record
    (multipart only past :attr:`OutboxConfig.max_frame_bytes`)."""
    generation: int
    """:attr:`Outbox.generation` when it was taken; a later rewind makes it stale."""


class Outbox:
    """See the module docstring. Create, :meth:`start` on the event loop, :meth:`close` at the end.

    Size: one seq-ordered record of every unacked batch (in memory, being written, written,
    lost) that the producer, the sender, acks, rewinds and the writer's callbacks all update on
    the event loop; its invariants (sendable only once written and in seq order, a memory copy
    dropped only once on disk) hold in one place. The disk threads and codec are
    :mod:`runtime.spill_io`.
    """

    def __init__(self, spill: SpillLog, config: OutboxConfig | None = None) -> None:
        self.config = config or OutboxConfig()
        self.spill = spill
        self._disk: SpillIO[_Entry] = SpillIO(
            spill, writer_queue=self.config.writer_queue, persist_interval_s=self.config.persist_interval_s,
            on_written=self._on_written, on_released=self._on_released)
        self._entries: deque[_Entry] = deque(
            _Entry(seq, count, 0, None, written=True) for seq, count in spill.records())
        self._unsent: deque[_Entry] = deque(self._entries)
        self._unwritten: deque[_Entry] = deque()  # seq order; the front blocks sending after it
        self._next_seq = spill.next_seq
        self._acked = self._entries[0].first_seq if self._entries else self._next_seq
        self._memory_bytes = 0
        self._memory_batches = 0
        self._connected = False
        self._spill_full = False
        self._closed = False
        self._wake = asyncio.Event()
        self._ack_progress = asyncio.Event()  # set by every ack that moves acked_seq
        self.generation = 0
        """Incremented by every :meth:`rewind`."""
        self.lost_steps = 0
        """Steps whose spilled record could not be read back (dropped by policy or corrupt)."""
        self.written_batches = 0
        """Batches the writer thread has put on disk since start."""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Starts the writer thread; call from the event loop."""
        self._disk.start()

    def close(self, timeout: float = 10.0) -> None:
        """Finishes queued disk writes, persists the next *written* seq and closes the spill log.

        Blocks up to ``timeout`` seconds for the writer thread. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        self._disk.close(timeout)
        unwritten = sum(e.count for e in self._unwritten if not e.written)
        if unwritten:
            logger.error("outbox: %d steps were never written to disk (spill full); their seqs "
                         "will be reused", unwritten)
        self.spill.close()

    # ------------------------------------------------------------------ state
    @property
    def session_id(self) -> str:
        """Session id, persisted by the spill log."""
        return self.spill.session_id

    @property
    def next_seq(self) -> int:
        """The seq the next step will get."""
        return self._next_seq

    @property
    def acked_seq(self) -> int:
        """Every seq below this is acked."""
        return self._acked

    @property
    def accepting(self) -> bool:
        """Whether :meth:`put_steps` will take another batch (False: the loop must hold)."""
        return not (self._closed or self._spill_full or self._disk.backlog_full)

    @property
    def depth(self) -> int:
        """Unacked steps (memory and spill), as ``LoopStats.queue_depth`` reports them."""
        return self._next_seq - self.oldest_seq

    @property
    def batches(self) -> int:
        """Unacked batches (memory and spill)."""
        return len(self._entries)

    @property
    def unwritten_steps(self) -> int:
        """Steps recorded but not yet on disk (what a SIGKILL now would lose)."""
        return sum(e.count for e in self._unwritten)

    @property
    def memory_bytes(self) -> int:
        """Array bytes held in memory."""
        return self._memory_bytes

    @property
    def spilled_bytes(self) -> int:
        """Bytes in the spill log's segment files."""
        return self.spill.bytes_used

    @property
    def oldest_seq(self) -> int:
        """First seq still available for resending (== ``next_seq`` when nothing is pending);
        batches lost at the head (unreadable spill records) are not available."""
        for entry in self._entries:
            if not entry.lost:
                return entry.first_seq
        return self._next_seq

    @property
    def head_lost(self) -> bool:
        """Whether the oldest unacked batch is lost: the learner waits for seqs that will
        never come until a new hello declares them (``oldest_seq``)."""
        return bool(self._entries) and self._entries[0].lost

    def set_connected(self, connected: bool) -> None:
        """Tells the outbox whether the uplink is up. Going down drops the memory copies of
        written batches (they are on disk), so a long outage costs disk, not RAM."""
        if connected == self._connected:
            return
        self._connected = connected
        if not connected:
            for entry in self._entries:
                if entry.written and entry.held:
                    self._drop_batch(entry)

    # ------------------------------------------------------------------ producer side
    def put_steps(self, batch: TransitionBatch) -> int:
        """Queues ``batch`` (it must start at :attr:`next_seq` in this session) and hands it to
        the writer thread; returns its first seq. Non-blocking; the arrays must not change.

        Raises OutboxError when not :attr:`accepting`, or for another session or seq.
        """
        if not self.accepting:
            raise OutboxError("outbox is not accepting (writer backlog or spill log full)")
        if batch.session_id != self.session_id:
            raise OutboxError(f"batch of session {batch.session_id!r}, outbox is {self.session_id!r}")
        if batch.first_seq != self._next_seq:
            raise OutboxError(f"batch seq {batch.first_seq}+{batch.size} does not continue at {self._next_seq}")
        entry = _Entry(batch.first_seq, batch.size, batch.nbytes, batch)
        self._next_seq = entry.end
        self._entries.append(entry)
        self._unwritten.append(entry)
        self._memory_bytes += entry.size
        self._memory_batches += 1
        self._submit_write(entry)  # room was checked by ``accepting``; only this thread adds jobs
        return entry.first_seq

    # ------------------------------------------------------------------ sender side
    async def next_batch(self) -> OutgoingBatch:
        """Waits for the next written batch to send (in seq order) and returns it.

        Batches whose memory copy was dropped are read (and checked) in the reader thread; a
        batch in memory is handed over as its record, with no work on the loop. Waits without a
        deadline: the caller sets one (``asyncio.timeout``). Batches whose spilled record is
        lost are skipped with an ERROR (counted in :attr:`lost_steps`).
        """
        while True:
            while not self._unsent:
                self._wake.clear()
                await self._wake.wait()
            entry = self._unsent.popleft()
            if entry.end <= self._acked:
                continue
            generation, record = self.generation, entry.record
            if record is not None and len(record) <= self.config.max_frame_bytes:
                frames: list[Buffer] = [record]
            else:
                try:
                    frames = await self._disk.frames(entry.first_seq, entry.count, record,
                                                     self.config.max_frame_bytes)
                except SpillError as e:
                    if entry.end <= self._acked:
                        continue  # acked and released while reading
                    self.lost_steps += entry.count
                    entry.lost = True
                    logger.error("outbox: steps %d..%d lost: %s", entry.first_seq, entry.end - 1, e)
                    continue
            return OutgoingBatch(entry.first_seq, entry.count, frames, generation)

    async def steps_in(self, first_seq: int, end_seq: int) -> list[TransitionBatch]:
        """Returns the unacked steps with seqs in ``[first_seq, end_seq)`` as batches (trimmed
        to the range), read and decoded in the reader thread (unless still unwritten); steps no
        longer held (acked, lost, never written) are left out. For the quarantine of a refused batch."""
        out: list[TransitionBatch] = []
        for entry in [e for e in self._entries if e.first_seq < end_seq and e.end > first_seq and not e.lost]:
            batch = entry.batch
            if batch is None:
                if not entry.written:
                    continue
                try:
                    batch = await self._disk.read(entry.first_seq, entry.record)
                except SpillError as e:
                    logger.error("outbox: steps %d..%d unreadable for the quarantine: %s", entry.first_seq,
                                 entry.end - 1, e)
                    continue
            if batch.first_seq < first_seq:
                batch = batch.tail(first_seq)
            if batch.end_seq > end_seq:
                k = end_seq - batch.first_seq
                batch = dataclasses.replace(
                    batch, observations={n: a[:k] for n, a in batch.observations.items()}, actions=batch.actions[:k],
                    agents=batch.agents[:k], timestamps=batch.timestamps[:k], is_first=batch.is_first[:k],
                    is_last=batch.is_last[:k])
            out.append(batch)
        return out

    def on_ack(self, next_seq: int) -> None:
        """Releases every batch wholly below ``next_seq`` (cumulative ack). Non-blocking."""
        if next_seq <= self._acked:
            return
        self._acked = min(next_seq, self._next_seq)
        self._ack_progress.set()
        released = False
        while self._entries and self._entries[0].end <= self._acked:
            entry = self._entries.popleft()
            released |= entry.written or entry.writing
            if entry.held:
                self._drop_batch(entry)
        if released:
            self._disk.release_through(self._acked - 1)

    async def wait_all_acked(self) -> None:
        """Returns once every written step is acked (``acked_seq == next_seq``); callers set the
        deadline (``asyncio.timeout``). Woken by each ack, never polls."""
        while self._acked < self._next_seq:
            self._ack_progress.clear()
            await self._ack_progress.wait()

    def rewind(self, resume_seq: int) -> None:
        """After a (re)connect: everything below ``resume_seq`` is acked, everything from it
        that is written is sent again in order (the rest follows as it is written). Non-blocking."""
        if resume_seq < self._acked:
            logger.error("outbox: learner resumes at %d but %d was already acked and released; "
                         "resending from %d", resume_seq, self._acked, self.oldest_seq)
        self.on_ack(resume_seq)
        self.generation += 1
        self._unsent = deque(e for e in self._entries if e.end > resume_seq and e.written and not e.lost)
        self._wake.set()

    # ------------------------------------------------------------------ writer jobs
    def _submit_write(self, entry: _Entry) -> bool:
        entry.writing = True
        if self._disk.append(entry):
            return True
        entry.writing = False
        return False

    # ------------------------------------------------------------------ loop callbacks
    def _on_written(self, entry: _Entry, record: bytes | None, error: SpillError | None) -> None:
        entry.writing = False
        if error is not None:
            if not self._spill_full:
                logger.error("outbox: %s; the batch stays in memory (unsent) and recording stops", error)
            self._spill_full = True
            return
        entry.written = True
        self.written_batches += 1
        while self._unwritten and self._unwritten[0].written:  # sendable in seq order only
            ready = self._unwritten.popleft()
            if ready.end > self._acked:
                self._unsent.append(ready)
        over = (self._memory_bytes > self.config.max_memory_bytes
                or self._memory_batches > self.config.max_memory_batches)
        if entry.batch is not None:  # still held (not acked meanwhile): keep the record, not both
            if over or not self._connected:
                self._drop_batch(entry)
            else:
                entry.batch, entry.record = None, record
        self._wake.set()

    def _on_released(self) -> None:
        if self._spill_full and self.spill.bytes_used < self.spill.config.max_bytes * 0.9:
            logger.info("outbox: spill log has room again; writing the held batches, recording resumes")
            self._spill_full = False
            for entry in self._unwritten:
                if not entry.written and not entry.writing and not self._submit_write(entry):
                    break

    def _drop_batch(self, entry: _Entry) -> None:
        entry.batch = entry.record = None
        self._memory_bytes -= entry.size
        self._memory_batches -= 1
