"""The uplink outbox: a bounded in-memory queue of encoded batches backed by the spill log.

Every batch gets a contiguous seq range (``first_seq .. first_seq+count-1``) from the
outbox, which continues the numbering persisted by the :class:`~runtime.spill.SpillLog`.
A batch stays in memory while the uplink is connected and memory is under its bound;
otherwise (uplink gone, or memory over its bound) it is written to the spill log and its
payload dropped from memory. On disconnect, memory entries are spilled too, so a long
outage costs disk, not RAM. After a reconnect, :meth:`Outbox.rewind` (with the learner's
``resume_seq``) replays every unacked batch in seq order — memory and spill alike;
:meth:`Outbox.on_ack` releases acked batches (and their spill segments).

Threads: the public methods run on the event loop and never touch the disk. Disk writes
go to one writer thread through a bounded queue; disk reads for replay go to a reader
thread (awaited by the sender coroutine, never by the tick). When the writer queue is
full or the spill log is full under its ``hold`` policy, :attr:`Outbox.accepting` turns
False and the loop stops recording and holds the robot; nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from runtime.errors import OutboxError, SpillError, SpillFullError
from runtime.spill import SpillLog

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepBatch:
    """Columnar steps, as the loop records them (RLDS convention, see docs/architecture.md)."""

    observations: dict[str, np.ndarray]
    """Observation arrays by name, each ``(B, ...)``."""
    actions: np.ndarray
    """``(B, A)`` float32 actions applied."""
    agents: np.ndarray
    """``(B,)`` uint8: 0 forward, 1 backward."""
    timestamps: np.ndarray
    """``(B,)`` float64 ``time.monotonic()`` of each observation."""
    is_first: np.ndarray
    """``(B,)`` bool: the observation starts a segment."""
    is_last: np.ndarray
    """``(B,)`` bool: the observation ends a segment (its action is padding)."""

    def __len__(self) -> int:
        return int(self.actions.shape[0])


#: ``encode(session_id, first_seq, batch) -> payload``: e.g. protocol's TransitionBatch in
#: its single-frame msgpack form. Runs on the event loop, so it must be a pure, fast function.
BatchEncoder = Callable[[str, int, StepBatch], bytes]


@dataclass(frozen=True, kw_only=True)
class OutboxConfig:
    """Bounds of the outbox."""

    max_memory_bytes: int = 256 * 2**20
    """Payload bytes kept in memory before new batches go to the spill log."""
    max_memory_batches: int = 4096
    """Batches kept in memory before new batches go to the spill log."""
    writer_queue: int = 256
    """Disk jobs that may wait for the writer thread; when full the outbox stops accepting."""
    persist_interval_s: float = 0.5
    """How often the writer persists the next seq to ``state.json`` (when it changed)."""

    def __post_init__(self) -> None:
        for name in ("max_memory_bytes", "max_memory_batches", "writer_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        if not self.persist_interval_s > 0:
            raise ValueError(f"persist_interval_s: must be positive, got {self.persist_interval_s}")


@dataclass
class _Entry:
    first_seq: int
    count: int
    size: int
    payload: bytes | None
    spilled: bool = False
    writing: bool = False

    @property
    def end(self) -> int:
        return self.first_seq + self.count


@dataclass(frozen=True)
class OutgoingBatch:
    """One batch to send."""

    first_seq: int
    """First seq of the batch."""
    count: int
    """Steps in the batch."""
    payload: bytes
    """The encoded batch."""


class Outbox:
    """See the module docstring. Create, :meth:`start` on the event loop, :meth:`close` at the end."""

    def __init__(self, spill: SpillLog, encode: BatchEncoder, config: OutboxConfig | None = None) -> None:
        self.config = config or OutboxConfig()
        self.spill = spill
        self._encode = encode
        self._entries: deque[_Entry] = deque(
            _Entry(seq, count, 0, None, spilled=True) for seq, count in spill.records())
        self._unsent: deque[_Entry] = deque(self._entries)
        self._next_seq = spill.next_seq
        self._acked = self._entries[0].first_seq if self._entries else self._next_seq
        self._memory_bytes = 0
        self._memory_batches = 0
        self._connected = False
        self._spill_full = False
        self._closed = False
        self._jobs: queue.Queue[tuple[str, object]] = queue.Queue(self.config.writer_queue)
        self._writer: threading.Thread | None = None
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-read")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self.lost_steps = 0
        """Steps whose spilled payload could not be read back (dropped by policy or corrupt)."""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Starts the writer thread; call from the event loop."""
        self._loop = asyncio.get_running_loop()
        self._writer = threading.Thread(target=self._write_loop, name="outbox-writer", daemon=True)
        self._writer.start()

    def close(self, timeout: float = 10.0) -> None:
        """Finishes queued disk writes, persists the next seq and closes the spill log.

        Blocks up to ``timeout`` seconds for the writer thread. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            try:
                self._jobs.put(("stop", None), timeout=timeout)
            except queue.Full:
                logger.error("outbox: writer backlog still full after %.1f s", timeout)
            self._writer.join(timeout)
            if self._writer.is_alive():
                logger.error("outbox: writer thread did not finish within %.1f s", timeout)
        self._reader.shutdown(wait=True, cancel_futures=True)
        self.spill.set_next_seq(self._next_seq)
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
        """Whether :meth:`put` will take another batch (False: the loop must hold)."""
        return not (self._closed or self._spill_full or self._jobs.full())

    @property
    def depth(self) -> int:
        """Unacked steps (memory and spill), as ``LoopStats.queue_depth`` reports them."""
        return self._next_seq - self.oldest_seq

    @property
    def batches(self) -> int:
        """Unacked batches (memory and spill)."""
        return len(self._entries)

    @property
    def memory_bytes(self) -> int:
        """Payload bytes held in memory."""
        return self._memory_bytes

    @property
    def spilled_bytes(self) -> int:
        """Bytes in the spill log's segment files."""
        return self.spill.bytes_used

    @property
    def oldest_seq(self) -> int:
        """First seq still available for resending (== ``next_seq`` when nothing is pending)."""
        return self._entries[0].first_seq if self._entries else self._next_seq

    def set_connected(self, connected: bool) -> None:
        """Tells the outbox whether the uplink is up. Going down spills memory entries."""
        if connected == self._connected:
            return
        self._connected = connected
        if not connected:
            for entry in self._entries:
                if entry.payload is not None and not entry.spilled and not entry.writing:
                    if not self._submit_spill(entry):
                        break

    # ------------------------------------------------------------------ producer side
    def put_steps(self, batch: StepBatch) -> int:
        """Numbers ``batch``, encodes it and queues it; returns its first seq. Non-blocking.

        Raises OutboxError when not :attr:`accepting` (nothing is numbered then).
        """
        if not self.accepting:
            raise OutboxError("outbox is not accepting (writer backlog or spill log full)")
        first_seq = self._next_seq
        payload = self._encode(self.session_id, first_seq, batch)
        self.put(first_seq, len(batch), payload)
        return first_seq

    def put(self, first_seq: int, count: int, payload: bytes) -> None:
        """Queues an encoded batch of ``count`` steps starting at ``first_seq`` (must equal
        :attr:`next_seq`). Non-blocking. Raises OutboxError when not accepting or out of order."""
        if not self.accepting:
            raise OutboxError("outbox is not accepting (writer backlog or spill log full)")
        if first_seq != self._next_seq or count < 1:
            raise OutboxError(f"batch seq {first_seq}+{count} does not continue at {self._next_seq}")
        entry = _Entry(first_seq, count, len(payload), payload)
        self._next_seq = entry.end
        self._entries.append(entry)
        self._unsent.append(entry)
        self._memory_bytes += entry.size
        self._memory_batches += 1
        over = (self._memory_bytes > self.config.max_memory_bytes
                or self._memory_batches > self.config.max_memory_batches)
        if not self._connected or over:
            self._submit_spill(entry)
        self._wake.set()

    # ------------------------------------------------------------------ sender side
    async def next_batch(self) -> OutgoingBatch:
        """Waits for the next batch to send (in seq order) and returns it.

        Spilled payloads are read in the reader thread. Waits without a deadline: the
        caller sets one (``asyncio.timeout``). Batches whose spilled payload is lost are
        skipped with an ERROR (counted in :attr:`lost_steps`).
        """
        while True:
            while not self._unsent:
                self._wake.clear()
                await self._wake.wait()
            entry = self._unsent.popleft()
            if entry.end <= self._acked:
                continue
            payload = entry.payload
            if payload is None:
                try:
                    loop = asyncio.get_running_loop()
                    payload = await loop.run_in_executor(self._reader, self.spill.read, entry.first_seq)
                except SpillError as e:
                    if entry.end <= self._acked:
                        continue  # acked and released while reading
                    self.lost_steps += entry.count
                    logger.error("outbox: steps %d..%d lost: %s", entry.first_seq, entry.end - 1, e)
                    continue
            return OutgoingBatch(entry.first_seq, entry.count, payload)

    def on_ack(self, next_seq: int) -> None:
        """Releases every batch wholly below ``next_seq`` (cumulative ack). Non-blocking."""
        if next_seq <= self._acked:
            return
        self._acked = min(next_seq, self._next_seq)
        released_spill = False
        while self._entries and self._entries[0].end <= self._acked:
            entry = self._entries.popleft()
            released_spill |= entry.spilled or entry.writing
            if entry.payload is not None:
                self._drop_payload(entry)
        if released_spill:
            self._submit(("release", self._acked - 1))

    def rewind(self, resume_seq: int) -> None:
        """After a (re)connect: everything below ``resume_seq`` is acked, everything from it
        is sent again in order. Non-blocking."""
        if resume_seq < self._acked:
            logger.error("outbox: learner resumes at %d but %d was already acked and released; "
                         "resending from %d", resume_seq, self._acked, self.oldest_seq)
        self.on_ack(resume_seq)
        self._unsent = deque(e for e in self._entries if e.end > resume_seq)
        self._wake.set()

    # ------------------------------------------------------------------ writer thread
    def _submit_spill(self, entry: _Entry) -> bool:
        entry.writing = True
        if self._submit(("append", entry)):
            return True
        entry.writing = False
        return False

    def _submit(self, job: tuple[str, object]) -> bool:
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            logger.error("outbox: disk writer backlog full (%d jobs); holding", self.config.writer_queue)
            return False
        return True

    def _write_loop(self) -> None:
        last_persist = time.monotonic()
        while True:
            try:
                kind, item = self._jobs.get(timeout=self.config.persist_interval_s)
            except queue.Empty:
                kind, item = "idle", None
            if kind == "stop":
                return
            try:
                if kind == "append":
                    self._write(item)  # type: ignore[arg-type]
                elif kind == "release":
                    self.spill.release_through(item)  # type: ignore[arg-type]
                    self._call_loop(self._on_released)
                if time.monotonic() - last_persist >= self.config.persist_interval_s:
                    self.spill.set_next_seq(self._next_seq)
                    last_persist = time.monotonic()
            except SpillError as e:
                logger.error("outbox: disk job %s failed: %s", kind, e)

    def _write(self, entry: _Entry) -> None:
        try:
            self.spill.append(entry.first_seq, entry.payload, entry.count)  # type: ignore[arg-type]
        except SpillFullError as e:
            self._call_loop(self._on_written, entry, e)
            return
        self._call_loop(self._on_written, entry, None)

    def _call_loop(self, callback: Callable[..., None], *args: object) -> None:
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(callback, *args)
            except RuntimeError:  # the loop closed between the check and the call
                logger.debug("outbox: event loop closed; dropping a writer notification")

    # ------------------------------------------------------------------ loop callbacks
    def _on_written(self, entry: _Entry, error: SpillFullError | None) -> None:
        entry.writing = False
        if error is not None:
            if not self._spill_full:
                logger.error("outbox: %s; the batch stays in memory and recording stops", error)
            self._spill_full = True
            return
        entry.spilled = True
        if entry.payload is not None:
            self._drop_payload(entry)

    def _on_released(self) -> None:
        if self._spill_full and self.spill.bytes_used < self.spill.config.max_bytes * 0.9:
            logger.info("outbox: spill log has room again; recording resumes")
            self._spill_full = False

    def _drop_payload(self, entry: _Entry) -> None:
        entry.payload = None
        self._memory_bytes -= entry.size
        self._memory_batches -= 1
