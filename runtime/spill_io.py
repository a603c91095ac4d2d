"""The outbox's disk side: the spill-record codec and the two threads that touch the spill log.

:func:`encode_batch` / :func:`decode_batch` turn a :class:`~protocol.messages.TransitionBatch`
into one spill record and back. The record is the protocol's single-frame form of the batch
(docs/protocol.md, "Framing"), so it is also the wire message: a batch is encoded once, in the
writer thread, and the runtime sends the bytes it wrote. :func:`check_record` is the cheap
check a record read back passes before it is sent as read. :class:`SpillIO` owns the *writer
thread*, fed through a bounded job queue (append a batch, release acked records, persist the
next seq when idle), and the *reader thread* that reads spilled batches back for replay.

Threads: neither touches the event loop's state. The writer reports every append (with the
record it wrote) and release back to the event loop (``call_soon_threadsafe``), where
:class:`runtime.outbox.Outbox` keeps the bookkeeping of what is written, sendable and acked;
reads are awaited by the sender coroutine (and the quarantine), never by the tick.
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

import msgpack

from protocol.codec import Limits, decode, encode
from protocol.errors import ProtocolError
from protocol.messages import PROTOCOL_VERSION, TransitionBatch
from protocol.wire_fields import FIELDS, Buffer
from runtime.errors import SpillError
from runtime.isolation import lower_thread_priority
from runtime.spill import SpillLog

logger = logging.getLogger(__name__)

_LIMITS = Limits()


def encode_batch(batch: TransitionBatch) -> bytes:
    """Returns ``batch`` as one self-contained msgpack frame (the spill log's record payload and
    the single-frame wire message).

    Raises ProtocolError for an unencodable batch. CPU-bound (a memory copy).
    """
    return bytes(encode(batch, single_frame=True)[0])


def decode_batch(payload: bytes) -> TransitionBatch:
    """Returns the batch :func:`encode_batch` produced. Raises SpillError when it is not one.

    The frame limits grow to the record's size (a record is CRC'd and the runtime's own, and a
    batch too big for one wire frame is still a valid record); every other limit is the default.
    """
    size = len(payload)
    limits = Limits(max_frame_bytes=max(size, _LIMITS.max_frame_bytes),
                    max_message_bytes=max(size, _LIMITS.max_message_bytes))
    try:
        msg = decode([payload], limits=limits)
    except ProtocolError as e:
        raise SpillError(f"spilled record does not decode: {e}") from e
    if not isinstance(msg, TransitionBatch):
        raise SpillError(f"spilled record is a {msg.TYPE}, not transitions")
    return msg


def record_prefix(session_id: str, first_seq: int) -> bytes:
    """Returns the bytes :func:`encode_batch` starts the record of ``session_id``'s batch at
    ``first_seq`` with: the map's header, ``type``, ``version``, ``session_id`` and ``first_seq``
    in :func:`protocol.codec.encode`'s order (tests/runtime/test_outbox.py pins it)."""
    pack = msgpack.Packer(use_bin_type=True).pack
    header = msgpack.Packer().pack_map_header(2 + len(FIELDS[TransitionBatch]))
    return b"".join([header, pack("type"), pack(TransitionBatch.TYPE), pack("version"), pack(PROTOCOL_VERSION),
                     pack("session_id"), pack(session_id), pack("first_seq"), pack(first_seq)])


def check_record(payload: bytes, session_id: str, first_seq: int, count: int) -> None:
    """Raises SpillError unless ``payload`` is the record of ``session_id``'s ``count``-step batch
    at ``first_seq``, the cheap way: the seq log's CRC vouches for the bytes, and a record that
    starts as :func:`encode_batch` starts it (:func:`record_prefix`: message type, protocol
    version, session, seq) is that function's output. Anything else — another field order from
    an older writer, another session's or protocol version's record — is decoded in full and
    must hold exactly that batch."""
    if payload.startswith(record_prefix(session_id, first_seq)):
        return
    batch = decode_batch(payload)
    if (batch.session_id, batch.first_seq, batch.size) != (session_id, first_seq, count):
        raise SpillError(f"spilled record at seq {first_seq} holds session {batch.session_id!r} seqs "
                         f"{batch.first_seq}+{batch.size}, not this session's {count} steps")


class PendingBatch(Protocol):
    """What the writer reads of a batch to append (the outbox's entry for it)."""

    first_seq: int
    count: int
    batch: TransitionBatch | None


EntryT = TypeVar("EntryT", bound=PendingBatch)


class SpillIO(Generic[EntryT]):
    """The writer and reader threads of one spill log; see the module docstring.

    ``on_written(entry, record, error)`` (the record written, :func:`encode_batch`'s bytes, and
    error None on success; record None and the error on failure) and ``on_released()`` are
    called on the event loop that called :meth:`start`.
    """

    def __init__(self, spill: SpillLog, *, writer_queue: int, persist_interval_s: float,
                 on_written: Callable[[EntryT, bytes | None, SpillError | None], None],
                 on_released: Callable[[], None]) -> None:
        """Starts nothing."""
        self.spill = spill
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

    async def read(self, seq: int, record: bytes | None = None) -> TransitionBatch:
        """Returns the spilled batch starting at ``seq`` (or the one ``record`` holds, a record
        still in memory), read and decoded in the reader thread.

        Raises SpillError when its record is gone or unreadable.
        """
        return await asyncio.get_running_loop().run_in_executor(self._reader, self._read, seq, record)

    async def frames(self, seq: int, count: int, record: bytes | None, max_frame_bytes: int) -> list[Buffer]:
        """Returns the frames that send the ``count``-step batch at ``seq``, made in the reader
        thread: its record as it was written — ``record``, or read back from the spill log and
        passed through :func:`check_record` — or, for a record over ``max_frame_bytes``, the
        batch decoded and encoded multipart (its arrays in frames of their own).

        Raises SpillError when the record is gone, unreadable or not this session's batch.
        """
        return await asyncio.get_running_loop().run_in_executor(
            self._reader, self._frames, seq, count, record, max_frame_bytes)

    # ------------------------------------------------------------------ threads
    def _read(self, seq: int, record: bytes | None) -> TransitionBatch:
        return decode_batch(self.spill.read(seq) if record is None else record)

    def _frames(self, seq: int, count: int, record: bytes | None, max_frame_bytes: int) -> list[Buffer]:
        if record is None:
            record = self.spill.read(seq)
            check_record(record, self.spill.session_id, seq, count)
        return [record] if len(record) <= max_frame_bytes else encode(decode_batch(record))

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
            record = encode_batch(batch)
        except ProtocolError as e:  # cannot happen for a validated batch; never end the writer thread
            self._call_loop(self._on_written, entry, None,
                            SpillError(f"batch at seq {entry.first_seq} cannot be encoded: {e}"))
            return
        try:
            self.spill.append(entry.first_seq, record, entry.count)
        except SpillError as e:
            self._call_loop(self._on_written, entry, None, e)
            return
        self._call_loop(self._on_written, entry, record, None)

    def _call_loop(self, callback: Callable[..., None], *args: object) -> None:
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(callback, *args)
            except RuntimeError:  # the loop closed between the check and the call
                logger.debug("outbox: event loop closed; dropping a writer notification")
