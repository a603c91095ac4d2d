"""The outbox's disk side: the spill-record codec and the two threads that touch the spill log.

:func:`encode_batch` / :func:`decode_batch` turn a :class:`~protocol.messages.TransitionBatch`
into one spill record and back. :class:`SpillIO` owns the *writer thread*, fed through a bounded
job queue (append a batch, release acked records, persist the next seq when idle), and the
*reader thread* that reads spilled batches back for replay.

Threads: neither touches the event loop's state. The writer reports every append and release
back to the event loop (``call_soon_threadsafe``), where :class:`runtime.outbox.Outbox` keeps
the bookkeeping of what is written, sendable and acked; reads are awaited by the sender
coroutine (and the quarantine), never by the tick.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, Protocol, TypeVar

from protocol.codec import decode, encode
from protocol.errors import ProtocolError
from protocol.messages import TransitionBatch
from runtime.errors import SpillError
from runtime.isolation import lower_thread_priority
from runtime.spill import SpillLog

logger = logging.getLogger(__name__)


def encode_batch(batch: TransitionBatch) -> bytes:
    """Returns ``batch`` as one self-contained msgpack frame (the spill log's record payload).

    Raises ProtocolError for an unencodable batch. CPU-bound (a memory copy).
    """
    return bytes(encode(batch, single_frame=True)[0])


def decode_batch(payload: bytes) -> TransitionBatch:
    """Returns the batch :func:`encode_batch` produced. Raises SpillError when it is not one."""
    try:
        msg = decode([payload])
    except ProtocolError as e:
        raise SpillError(f"spilled record does not decode: {e}") from e
    if not isinstance(msg, TransitionBatch):
        raise SpillError(f"spilled record is a {msg.TYPE}, not transitions")
    return msg


class PendingBatch(Protocol):
    """What the writer reads of a batch to append (the outbox's entry for it)."""

    first_seq: int
    count: int
    batch: TransitionBatch | None


EntryT = TypeVar("EntryT", bound=PendingBatch)


class SpillIO(Generic[EntryT]):
    """The writer and reader threads of one spill log; see the module docstring.

    ``on_written(entry, error)`` (error None on success) and ``on_released()`` are called on
    the event loop that called :meth:`start`.
    """

    def __init__(self, spill: SpillLog, *, writer_queue: int, persist_interval_s: float,
                 encode: Callable[[TransitionBatch], bytes], decode: Callable[[bytes], TransitionBatch],
                 on_written: Callable[[EntryT, SpillError | None], None],
                 on_released: Callable[[], None]) -> None:
        """``encode`` runs in the writer thread, ``decode`` in the reader thread. Starts nothing."""
        self.spill = spill
        self._encode, self._decode = encode, decode
        self._on_written, self._on_released = on_written, on_released
        self._persist_interval_s = persist_interval_s
        self._jobs: queue.Queue[tuple[str, object]] = queue.Queue(writer_queue)
        self._writer: threading.Thread | None = None
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-read",
                                          initializer=lower_thread_priority)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def backlog_full(self) -> bool:
        """Whether the writer's job queue is full (another job would be refused)."""
        return self._jobs.full()

    def start(self) -> None:
        """Starts the writer thread; call from the event loop (the callbacks run there)."""
        self._loop = asyncio.get_running_loop()
        self._writer = threading.Thread(target=self._write_loop, name="outbox-writer", daemon=True)
        self._writer.start()

    def close(self, timeout: float) -> None:
        """Lets the writer finish its queued jobs and stops both threads.

        Blocks up to ``timeout`` seconds for the writer thread (and for a read in progress).
        """
        if self._writer is not None:
            try:
                self._jobs.put(("stop", None), timeout=timeout)
            except queue.Full:
                logger.error("outbox: writer backlog still full after %.1f s", timeout)
            self._writer.join(timeout)
            if self._writer.is_alive():
                logger.error("outbox: writer thread did not finish within %.1f s", timeout)
        self._reader.shutdown(wait=True, cancel_futures=True)

    def append(self, entry: EntryT) -> bool:
        """Queues ``entry``'s batch for the spill log; False (logged) when the queue is full.
        Non-blocking; ``on_written`` follows once it is on disk (or failed)."""
        return self._submit(("append", entry))

    def release_through(self, seq: int) -> bool:
        """Queues the release of every record up to ``seq`` (acked); False (logged) when the
        queue is full. Non-blocking; ``on_released`` follows."""
        return self._submit(("release", seq))

    async def read(self, seq: int) -> TransitionBatch:
        """Returns the spilled batch starting at ``seq``, read in the reader thread.

        Raises SpillError when its record is gone or unreadable.
        """
        return await asyncio.get_running_loop().run_in_executor(self._reader, self._read, seq)

    # ------------------------------------------------------------------ threads
    def _read(self, seq: int) -> TransitionBatch:
        return self._decode(self.spill.read(seq))

    def _submit(self, job: tuple[str, object]) -> bool:
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            logger.error("outbox: disk writer backlog full (%d jobs); holding", self._jobs.maxsize)
            return False
        return True

    def _write_loop(self) -> None:
        lower_thread_priority()  # disk writes must never hold the loop's core
        last_persist = time.monotonic()
        while True:
            try:
                kind, item = self._jobs.get(timeout=self._persist_interval_s)
            except queue.Empty:
                kind, item = "idle", None
            if kind == "stop":
                return
            try:
                if kind == "append":
                    self._write(item)  # type: ignore[arg-type]
                elif kind == "release":
                    # persist the numbering before the segments that prove it disappear
                    self.spill.set_next_seq(self.spill.next_seq)
                    self.spill.release_through(item)  # type: ignore[arg-type]
                    self._call_loop(self._on_released)
                elif time.monotonic() - last_persist >= self._persist_interval_s:
                    self.spill.set_next_seq(self.spill.next_seq)
                    last_persist = time.monotonic()
            except SpillError as e:
                logger.error("outbox: disk job %s failed: %s", kind, e)

    def _write(self, entry: EntryT) -> None:
        batch = entry.batch
        if batch is None:  # cannot happen: a batch is only dropped after it is written
            logger.error("outbox: batch %d has no payload to write", entry.first_seq)
            return
        try:
            self.spill.append(entry.first_seq, self._encode(batch), entry.count)
        except SpillError as e:
            self._call_loop(self._on_written, entry, e)
            return
        self._call_loop(self._on_written, entry, None)

    def _call_loop(self, callback: Callable[..., None], *args: object) -> None:
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(callback, *args)
            except RuntimeError:  # the loop closed between the check and the call
                logger.debug("outbox: event loop closed; dropping a writer notification")
