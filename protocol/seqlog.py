"""Append-only, CRC'd on-disk log of records keyed by seq, surviving crashes.

The shared core of the runtime's spill log (``runtime.spill``) and the learner's ingest
journal (``learner.journal``). Layout of ``directory``: ``<first_seq:020d>.seg`` segment
files of records; a new segment starts when the active one reaches ``segment_bytes``.

A record is a 24-byte little-endian header — magic ``b"RFSP"``, ``seq`` (u64), ``count``
(u32, steps in the record), ``length`` (u32), ``crc`` (u32: CRC32 of the 16 bytes
seq..length followed by the payload) — then ``length`` payload bytes. On open, each segment
is scanned; the first record that is short, has a bad magic, or fails its CRC marks a torn
write: the file is truncated there (logged), never a crash. Records may arrive out of seq
order (a batch kept in memory can spill after a newer one); the index is kept sorted by seq.

The log has a disk cap: a WARNING at ``warn_fraction`` of it, and at 100 % the configured
policy — ``"hold"`` (refuse the record with :class:`SeqLogFullError`) or ``"drop_oldest"``
(delete the oldest segments, with an ERROR naming the steps lost). Never silent loss. All
methods block on the disk: call them from a worker thread, never from an event loop.
Thread-safe (one internal lock).
"""

from __future__ import annotations

import bisect
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from protocol.errors import SeqLogError, SeqLogFullError

logger = logging.getLogger(__name__)

MAGIC = b"RFSP"
_HEADER = struct.Struct("<4sQIII")
_CRC_FIELDS = struct.Struct("<QII")
HEADER_BYTES = _HEADER.size
FULL_POLICIES = ("hold", "drop_oldest")


@dataclass(frozen=True, kw_only=True)
class SeqLogConfig:
    """Where and how much a seq log may write."""

    directory: Path
    """Directory of the segment files (created when missing)."""
    segment_bytes: int = 64 * 2**20
    """Size at which the active segment is closed and a new one started."""
    max_bytes: int = 8 * 2**30
    """Disk cap for all segments together."""
    warn_fraction: float = 0.8
    """Fraction of ``max_bytes`` at which a WARNING is logged."""
    full_policy: str = "hold"
    """At the cap: ``"hold"`` (refuse with SeqLogFullError) or ``"drop_oldest"``."""
    fsync: bool = False
    """fsync after every record (slower; otherwise on rotation and close)."""
    name: str = "seqlog"
    """Name used in log messages (``spill``, ``journal``)."""

    def __post_init__(self) -> None:
        if self.segment_bytes < HEADER_BYTES + 1:
            raise ValueError(f"segment_bytes: must exceed {HEADER_BYTES}, got {self.segment_bytes}")
        if self.max_bytes < self.segment_bytes:
            raise ValueError(f"max_bytes: must be >= segment_bytes, got {self.max_bytes}")
        if not 0 < self.warn_fraction < 1:
            raise ValueError(f"warn_fraction: must be in (0, 1), got {self.warn_fraction}")
        if self.full_policy not in FULL_POLICIES:
            raise ValueError(f"full_policy: must be one of {FULL_POLICIES}, got {self.full_policy!r}")


@dataclass
class _Segment:
    path: Path
    size: int = 0
    max_end: int = 0
    records: int = 0


@dataclass(order=True)
class _Record:
    seq: int
    count: int = field(compare=False)
    segment: _Segment | None = field(compare=False, repr=False)
    offset: int = field(compare=False)
    length: int = field(compare=False)


def _crc(seq: int, count: int, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(_CRC_FIELDS.pack(seq, count, len(payload))))


class SeqLog:
    """Size: the sorted record index, the segment list and the active file are one state —
    append, release and the cap's drops change all three under one lock, recovery builds them
    together — and split into classes, that state and its lock would be shared between them.

    The on-disk log; open with :meth:`open`. See the module docstring."""

    def __init__(self, config: SeqLogConfig) -> None:
        """Use :meth:`open`; this only stores state."""
        self.config = config
        self._segments: list[_Segment] = []
        self._records: list[_Record] = []
        self._active: _Segment | None = None
        self._file: BinaryIO | None = None
        self._lock = threading.RLock()
        self._warned = False
        self.dropped_steps = 0
        """Steps deleted by the ``drop_oldest`` policy."""
        self.truncated_bytes = 0
        """Bytes cut from torn tails during recovery (read-only: bytes after the last whole record)."""
        self.read_only = False
        """Opened with ``read_only=True``: nothing is written, truncated or deleted."""

    # ------------------------------------------------------------------ open / close
    @classmethod
    def open(cls, config: SeqLogConfig, *, read_only: bool = False) -> SeqLog:
        """Opens (or creates) the log in ``config.directory`` and recovers its segments.

        ``read_only`` opens a log that another process may be appending to (e.g. to export a
        live run): the directory must exist, a torn or half-written tail is skipped instead of
        truncated, and every method that writes raises SeqLogError.

        Returns the log. Blocks on the disk. Raises SeqLogError when the directory or a
        segment is unusable.
        """
        directory = Path(config.directory)
        try:
            if read_only and not directory.is_dir():
                raise OSError("no such directory")
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SeqLogError(f"cannot open {config.name} directory {directory}: {e}") from e
        log = cls(config)
        log.read_only = read_only
        for path in sorted(directory.glob("*.seg")):
            log._recover_segment(path)
        log._records.sort()
        return log

    def close(self) -> None:
        """Flushes, fsyncs and closes the active segment. Idempotent; the log stays usable."""
        with self._lock:
            self._close_active()

    # ------------------------------------------------------------------ queries
    @property
    def bytes_used(self) -> int:
        """Bytes in all segment files."""
        return sum(s.size for s in self._segments)

    @property
    def end_seq(self) -> int:
        """One past the highest seq stored (0 when empty)."""
        with self._lock:
            return max((s.max_end for s in self._segments), default=0)

    @property
    def first_seq(self) -> int | None:
        """The lowest record start seq stored, or None when empty."""
        with self._lock:
            return self._records[0].seq if self._records else None

    def records(self) -> list[tuple[int, int]]:
        """Returns ``(seq, count)`` of every stored record, sorted by seq."""
        with self._lock:
            return [(r.seq, r.count) for r in self._records]

    def __contains__(self, seq: int) -> bool:
        with self._lock:
            return self._find(seq) is not None

    # ------------------------------------------------------------------ write
    def append(self, seq: int, payload: bytes | memoryview, count: int = 1) -> bool:
        """Appends one record of ``count`` steps starting at ``seq``; blocks on the disk.

        Returns False when a record at ``seq`` is already stored (then nothing is written),
        True otherwise. Raises SeqLogFullError at the cap under the ``hold`` policy,
        SeqLogError when the disk write fails.
        """
        self._check_writable("append")
        size = HEADER_BYTES + len(payload)
        with self._lock:
            index = bisect.bisect_left(self._records, _Record(seq, 0, None, 0, 0))
            if index < len(self._records) and self._records[index].seq == seq:
                return False
            self._make_room(size)
            segment = self._writable_segment(seq)
            assert self._file is not None
            try:
                self._file.write(_HEADER.pack(MAGIC, seq, count, len(payload), _crc(seq, count, payload)))
                self._file.write(payload)
                self._file.flush()
                if self.config.fsync:
                    os.fsync(self._file.fileno())
            except OSError as e:
                raise SeqLogError(f"{self.config.name} write failed: {e}") from e
            record = _Record(seq, count, segment, segment.size + HEADER_BYTES, len(payload))
            segment.size += size
            segment.records += 1
            segment.max_end = max(segment.max_end, seq + count)
            index = bisect.bisect_left(self._records, record)  # _make_room may have removed records
            self._records.insert(index, record)
            self._check_warning()
            return True

    def sync(self) -> None:
        """fsyncs the active segment (records appended so far survive a power cut). Blocks."""
        with self._lock:
            if self._file is not None:
                try:
                    self._file.flush()
                    os.fsync(self._file.fileno())
                except OSError as e:
                    raise SeqLogError(f"{self.config.name} fsync failed: {e}") from e

    def release_through(self, seq: int) -> int:
        """Deletes every segment whose records all end at or before ``seq`` (inclusive).

        Returns the bytes freed. Blocks on the disk. Raises SeqLogError when a delete fails.
        """
        self._check_writable("release")
        freed = 0
        with self._lock:
            for segment in [s for s in self._segments if s.max_end - 1 <= seq]:
                freed += self._delete_segment(segment)
            self._records = [r for r in self._records if r.segment in self._segments]
            if freed and self.bytes_used < self.config.warn_fraction * self.config.max_bytes * 0.9:
                self._warned = False
        return freed

    # ------------------------------------------------------------------ read
    def read(self, seq: int) -> bytes:
        """Returns the payload of the record that starts at ``seq``; blocks on the disk.

        Raises SeqLogError when no such record is stored (released or dropped) or it is corrupt.
        """
        with self._lock:
            record = self._find(seq)
            if record is None:
                raise SeqLogError(f"no {self.config.name} record starts at seq {seq}")
            if self._active is record.segment and self._file is not None:
                self._file.flush()
        return self._read_record(record)

    def iter_from(self, seq: int) -> Iterator[tuple[int, int, bytes]]:
        """Yields ``(seq, count, payload)`` for every stored record that holds a step at or
        after ``seq``, in seq order. Blocks on the disk. Records released meanwhile are
        skipped; raises SeqLogError for a corrupt record."""
        with self._lock:
            wanted = [r for r in self._records if r.seq + r.count > seq]
            if self._file is not None:
                self._file.flush()
        for record in wanted:
            try:
                payload = self._read_record(record)
            except SeqLogError:
                if record.segment not in self._segments:
                    continue  # released while iterating
                raise
            yield record.seq, record.count, payload

    # ------------------------------------------------------------------ internals
    def _check_writable(self, what: str) -> None:
        if self.read_only:
            raise SeqLogError(f"{self.config.name}: opened read-only; cannot {what}")

    def _find(self, seq: int) -> _Record | None:
        index = bisect.bisect_left(self._records, _Record(seq, 0, None, 0, 0))
        if index < len(self._records) and self._records[index].seq == seq:
            return self._records[index]
        return None

    def _read_record(self, record: _Record) -> bytes:
        assert record.segment is not None
        try:
            with open(record.segment.path, "rb") as f:
                f.seek(record.offset - HEADER_BYTES)
                header = f.read(HEADER_BYTES)
                payload = f.read(record.length)
        except OSError as e:
            raise SeqLogError(f"cannot read seq {record.seq} from {record.segment.path}: {e}") from e
        if len(header) != HEADER_BYTES:
            raise SeqLogError(f"{self.config.name} record at seq {record.seq} is truncated")
        magic, seq, count, length, crc = _HEADER.unpack(header)
        if magic != MAGIC or seq != record.seq or length != len(payload) or _crc(seq, count, payload) != crc:
            raise SeqLogError(f"{self.config.name} record at seq {record.seq} is corrupt")
        return payload

    def _recover_segment(self, path: Path) -> None:
        segment = _Segment(path=path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise SeqLogError(f"cannot read {self.config.name} segment {path}: {e}") from e
        offset = 0
        while offset + HEADER_BYTES <= len(data):
            magic, seq, count, length, crc = _HEADER.unpack_from(data, offset)
            end = offset + HEADER_BYTES + length
            if magic != MAGIC or end > len(data):
                break
            if _crc(seq, count, memoryview(data)[offset + HEADER_BYTES : end]) != crc:
                break
            self._records.append(_Record(seq, count, segment, offset + HEADER_BYTES, length))
            segment.records += 1
            segment.max_end = max(segment.max_end, seq + count)
            offset = end
        if offset < len(data) and self.read_only:  # maybe a record being written right now: leave it
            logger.info("%s: %s: ignoring %d bytes after the last whole record (read-only)",
                        self.config.name, path.name, len(data) - offset)
            self.truncated_bytes += len(data) - offset
        elif offset < len(data):
            logger.warning("%s: %s has a torn or corrupt record at byte %d; truncating %d bytes",
                           self.config.name, path.name, offset, len(data) - offset)
            self.truncated_bytes += len(data) - offset
            try:
                os.truncate(path, offset)
            except OSError as e:
                raise SeqLogError(f"cannot truncate {path}: {e}") from e
        segment.size = offset
        if segment.records == 0:
            if not self.read_only:
                path.unlink(missing_ok=True)
            return
        self._segments.append(segment)

    def _writable_segment(self, seq: int) -> _Segment:
        if self._active is not None and self._active.size >= self.config.segment_bytes:
            self._close_active()
        if self._active is None:
            path = Path(self.config.directory) / f"{seq:020d}.seg"
            while path.exists():  # out-of-order appends can reuse a start seq
                path = path.with_name(path.stem + "_.seg")
            try:
                self._file = open(path, "ab")
            except OSError as e:
                raise SeqLogError(f"cannot create {self.config.name} segment {path}: {e}") from e
            self._active = _Segment(path=path)
            self._segments.append(self._active)
        return self._active

    def _close_active(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
            except OSError as e:
                logger.error("%s: closing %s failed: %s", self.config.name,
                             self._active.path if self._active else "?", e)
        self._file = None
        self._active = None

    def _delete_segment(self, segment: _Segment) -> int:
        if segment is self._active:
            self._close_active()
        try:
            segment.path.unlink(missing_ok=True)
        except OSError as e:
            raise SeqLogError(f"cannot delete {self.config.name} segment {segment.path}: {e}") from e
        self._segments.remove(segment)
        return segment.size

    def _make_room(self, size: int) -> None:
        cap, name = self.config.max_bytes, self.config.name
        while self.bytes_used + size > cap:
            victims = [s for s in self._segments if s is not self._active] or self._segments[:1]
            if self.config.full_policy == "hold" or not victims:
                raise SeqLogFullError(f"{name} log at its cap of {cap} bytes; holding (policy 'hold')")
            victim = victims[0]
            lost = [r for r in self._records if r.segment is victim]
            steps = sum(r.count for r in lost)
            self.dropped_steps += steps
            logger.error("%s: cap %d bytes reached; dropping %s (%d steps, seq %s..) — data lost",
                         name, cap, victim.path.name, steps, lost[0].seq if lost else "?")
            self._delete_segment(victim)
            self._records = [r for r in self._records if r.segment is not victim]

    def _check_warning(self) -> None:
        used, cap = self.bytes_used, self.config.max_bytes
        if not self._warned and used >= self.config.warn_fraction * cap:
            self._warned = True
            logger.warning("%s: %.0f%% of the %d-byte disk cap used (%d bytes)", self.config.name,
                           100 * used / cap, cap, used)
