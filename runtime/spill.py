"""Append-only on-disk log of encoded batches, surviving crashes and learner outages.

Layout of ``directory``:

* ``state.json`` — ``{"session_id": str, "next_seq": int}``, replaced atomically
  (temp + fsync + rename), so a restarted runtime keeps its session and its numbering;
* ``<first_seq:020d>.seg`` — segment files of records; a new segment starts when the
  active one reaches ``segment_bytes``.

A record is a 24-byte little-endian header — magic ``b"RFSP"``, ``seq`` (u64), ``count``
(u32, steps in the batch), ``length`` (u32), ``crc`` (u32: CRC32 of the 16 bytes seq..length
followed by the payload) — then ``length`` payload bytes. On open, each segment is scanned;
the first record that is short, has a bad magic, or fails its CRC marks a torn write: the
file is truncated there (logged), never a crash. Records may arrive out of seq order (a
batch kept in memory can spill after a newer one); the index is kept sorted by seq.

The log has a disk cap: a WARNING at ``warn_fraction`` of it, and at 100 % the configured
policy — ``"hold"`` (default: refuse the record with :class:`SpillFullError` so the loop
stops recording and holds the robot) or ``"drop_oldest"`` (delete the oldest segments, with
an ERROR naming the steps lost). Never silent loss. All methods block on the disk: call
them from a worker thread, never from the event loop. Thread-safe (one internal lock).
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import struct
import threading
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from runtime.errors import SpillError, SpillFullError

logger = logging.getLogger(__name__)

MAGIC = b"RFSP"
_HEADER = struct.Struct("<4sQIII")
_CRC_FIELDS = struct.Struct("<QII")
HEADER_BYTES = _HEADER.size
SPILL_POLICIES = ("hold", "drop_oldest")


@dataclass(frozen=True, kw_only=True)
class SpillConfig:
    """Where and how much the spill log may write."""

    directory: Path
    """Directory of the segment files and ``state.json`` (created when missing)."""
    segment_bytes: int = 64 * 2**20
    """Size at which the active segment is closed and a new one started."""
    max_bytes: int = 8 * 2**30
    """Disk cap for all segments together."""
    warn_fraction: float = 0.8
    """Fraction of ``max_bytes`` at which a WARNING is logged."""
    full_policy: str = "hold"
    """At the cap: ``"hold"`` (refuse, the loop holds the robot) or ``"drop_oldest"``."""
    fsync: bool = False
    """fsync after every record (slower; otherwise on rotation, state writes and close)."""

    def __post_init__(self) -> None:
        if self.segment_bytes < HEADER_BYTES + 1:
            raise ValueError(f"segment_bytes: must exceed {HEADER_BYTES}, got {self.segment_bytes}")
        if self.max_bytes < self.segment_bytes:
            raise ValueError(f"max_bytes: must be >= segment_bytes, got {self.max_bytes}")
        if not 0 < self.warn_fraction < 1:
            raise ValueError(f"warn_fraction: must be in (0, 1), got {self.warn_fraction}")
        if self.full_policy not in SPILL_POLICIES:
            raise ValueError(f"full_policy: must be one of {SPILL_POLICIES}, got {self.full_policy!r}")


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
    segment: _Segment = field(compare=False, repr=False)
    offset: int = field(compare=False)
    length: int = field(compare=False)


class SpillLog:
    """The on-disk log; open with :meth:`open`. See the module docstring."""

    def __init__(self, config: SpillConfig, session_id: str, next_seq: int) -> None:
        """Use :meth:`open`; this only stores state."""
        self.config = config
        self.session_id = session_id
        self._next_seq = next_seq
        self._persisted_seq = next_seq
        self._segments: list[_Segment] = []
        self._records: list[_Record] = []
        self._active: _Segment | None = None
        self._file: BinaryIO | None = None
        self._lock = threading.RLock()
        self._warned = False
        self.dropped_steps = 0
        """Steps deleted by the ``drop_oldest`` policy."""
        self.truncated_bytes = 0
        """Bytes cut from torn tails during recovery."""

    # ------------------------------------------------------------------ open / close
    @classmethod
    def open(cls, config: SpillConfig) -> SpillLog:
        """Opens (or creates) the log in ``config.directory`` and recovers it.

        Returns the log with its session id and next seq restored. Blocks on the disk.
        Raises SpillError when the directory or state file is unusable.
        """
        directory = Path(config.directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            state = _read_state(directory / "state.json")
        except OSError as e:
            raise SpillError(f"cannot open spill directory {directory}: {e}") from e
        log = cls(config, state.get("session_id") or uuid.uuid4().hex, int(state.get("next_seq", 0)))
        for path in sorted(directory.glob("*.seg")):
            log._recover_segment(path)
        log._records.sort()
        if log._records:
            log._next_seq = max(log._next_seq, max(s.max_end for s in log._segments))
        log._write_state(log._next_seq)
        logger.info("spill: session %s, next seq %d, %d records (%d bytes) recovered",
                    log.session_id, log._next_seq, len(log._records), log.bytes_used)
        return log

    def close(self) -> None:
        """Flushes, fsyncs and closes the active segment and persists the state. Idempotent."""
        with self._lock:
            self._close_active()
            self._write_state(self._next_seq)

    # ------------------------------------------------------------------ queries
    @property
    def bytes_used(self) -> int:
        """Bytes in all segment files."""
        return sum(s.size for s in self._segments)

    @property
    def next_seq(self) -> int:
        """The next seq the runtime will assign (persisted in ``state.json``)."""
        return self._next_seq

    def records(self) -> list[tuple[int, int]]:
        """Returns ``(seq, count)`` of every stored record, sorted by seq."""
        with self._lock:
            return [(r.seq, r.count) for r in self._records]

    # ------------------------------------------------------------------ write
    def set_next_seq(self, next_seq: int) -> None:
        """Raises the persisted next seq to ``next_seq`` (atomic file replace when it grew)."""
        with self._lock:
            if next_seq > self._next_seq:
                self._next_seq = next_seq
            if self._next_seq != self._persisted_seq:
                self._write_state(self._next_seq)

    def append(self, seq: int, payload: bytes | memoryview, count: int = 1) -> None:
        """Appends one record of ``count`` steps starting at ``seq``; blocks on the disk.

        A record whose seq is already stored is ignored. Raises SpillFullError at the cap
        under the ``hold`` policy, SpillError when the disk write fails.
        """
        size = HEADER_BYTES + len(payload)
        with self._lock:
            index = bisect.bisect_left(self._records, _Record(seq, 0, None, 0, 0))  # type: ignore[arg-type]
            if index < len(self._records) and self._records[index].seq == seq:
                return
            self._make_room(size)
            segment = self._writable_segment(seq)
            crc = zlib.crc32(payload, zlib.crc32(_CRC_FIELDS.pack(seq, count, len(payload))))
            try:
                self._file.write(_HEADER.pack(MAGIC, seq, count, len(payload), crc))
                self._file.write(payload)
                self._file.flush()
                if self.config.fsync:
                    os.fsync(self._file.fileno())
            except OSError as e:
                raise SpillError(f"spill write failed: {e}") from e
            record = _Record(seq, count, segment, segment.size + HEADER_BYTES, len(payload))
            segment.size += size
            segment.records += 1
            segment.max_end = max(segment.max_end, seq + count)
            self._records.insert(index, record)
            self._next_seq = max(self._next_seq, seq + count)
            self._check_warning()

    def release_through(self, seq: int) -> int:
        """Deletes every segment whose records all end at or before ``seq`` (inclusive,
        i.e. acked). Returns the bytes freed. Blocks on the disk."""
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

        Raises SpillError when no such record is stored (released or dropped) or it is corrupt.
        """
        with self._lock:
            index = bisect.bisect_left(self._records, _Record(seq, 0, None, 0, 0))  # type: ignore[arg-type]
            if index >= len(self._records) or self._records[index].seq != seq:
                raise SpillError(f"no spilled record starts at seq {seq}")
            record = self._records[index]
            if self._active is record.segment and self._file is not None:
                self._file.flush()
        return self._read_record(record)

    def iter_from(self, seq: int) -> Iterator[tuple[int, int, bytes]]:
        """Yields ``(seq, count, payload)`` for every stored record that holds a step at or
        after ``seq``, in seq order. Blocks on the disk. Records released meanwhile are skipped."""
        with self._lock:
            wanted = [r for r in self._records if r.seq + r.count > seq]
        for record in wanted:
            try:
                payload = self._read_record(record)
            except SpillError as e:
                if record.segment not in self._segments:
                    continue  # released while iterating
                raise e
            yield record.seq, record.count, payload

    # ------------------------------------------------------------------ internals
    def _read_record(self, record: _Record) -> bytes:
        try:
            with open(record.segment.path, "rb") as f:
                f.seek(record.offset - HEADER_BYTES)
                header = f.read(HEADER_BYTES)
                payload = f.read(record.length)
        except OSError as e:
            raise SpillError(f"cannot read seq {record.seq} from {record.segment.path}: {e}") from e
        magic, seq, count, length, crc = _HEADER.unpack(header)
        if (magic != MAGIC or seq != record.seq or length != len(payload)
                or zlib.crc32(payload, zlib.crc32(_CRC_FIELDS.pack(seq, count, length))) != crc):
            raise SpillError(f"spilled record at seq {record.seq} is corrupt")
        return payload

    def _recover_segment(self, path: Path) -> None:
        segment = _Segment(path=path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise SpillError(f"cannot read spill segment {path}: {e}") from e
        offset = 0
        while offset + HEADER_BYTES <= len(data):
            magic, seq, count, length, crc = _HEADER.unpack_from(data, offset)
            end = offset + HEADER_BYTES + length
            if magic != MAGIC or end > len(data):
                break
            payload = memoryview(data)[offset + HEADER_BYTES : end]
            if zlib.crc32(payload, zlib.crc32(_CRC_FIELDS.pack(seq, count, length))) != crc:
                break
            self._records.append(_Record(seq, count, segment, offset + HEADER_BYTES, length))
            segment.records += 1
            segment.max_end = max(segment.max_end, seq + count)
            offset = end
        if offset < len(data):
            logger.warning("spill: %s has a torn or corrupt record at byte %d; truncating %d bytes",
                           path.name, offset, len(data) - offset)
            self.truncated_bytes += len(data) - offset
            try:
                os.truncate(path, offset)
            except OSError as e:
                raise SpillError(f"cannot truncate {path}: {e}") from e
        segment.size = offset
        if segment.records == 0:
            path.unlink(missing_ok=True)
            return
        self._segments.append(segment)

    def _writable_segment(self, seq: int) -> _Segment:
        if self._active is not None and self._active.size >= self.config.segment_bytes:
            self._close_active()
        if self._active is None:
            path = Path(self.config.directory) / f"{seq:020d}.seg"
            while path.exists():  # out-of-order spill can reuse a start seq
                path = path.with_name(path.stem + "_.seg")
            try:
                self._file = open(path, "ab")
            except OSError as e:
                raise SpillError(f"cannot create spill segment {path}: {e}") from e
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
                logger.error("spill: closing %s failed: %s", self._active.path if self._active else "?", e)
        self._file = None
        self._active = None

    def _delete_segment(self, segment: _Segment) -> int:
        if segment is self._active:
            self._close_active()
        try:
            segment.path.unlink(missing_ok=True)
        except OSError as e:
            raise SpillError(f"cannot delete spill segment {segment.path}: {e}") from e
        self._segments.remove(segment)
        return segment.size

    def _make_room(self, size: int) -> None:
        cap = self.config.max_bytes
        while self.bytes_used + size > cap:
            victims = [s for s in self._segments if s is not self._active] or self._segments[:1]
            if self.config.full_policy == "hold" or not victims:
                raise SpillFullError(f"spill log at its cap of {cap} bytes; holding (policy 'hold')")
            victim = victims[0]
            lost = [r for r in self._records if r.segment is victim]
            self.dropped_steps += sum(r.count for r in lost)
            logger.error("spill: cap %d bytes reached; dropping %s (%d steps, seq %s..) — data lost",
                         cap, victim.path.name, sum(r.count for r in lost), lost[0].seq if lost else "?")
            self._delete_segment(victim)
            self._records = [r for r in self._records if r.segment is not victim]

    def _check_warning(self) -> None:
        used, cap = self.bytes_used, self.config.max_bytes
        if not self._warned and used >= self.config.warn_fraction * cap:
            self._warned = True
            logger.warning("spill: %.0f%% of the %d-byte disk cap used (%d bytes); the learner "
                           "is not keeping up or is gone", 100 * used / cap, cap, used)

    def _write_state(self, next_seq: int) -> None:
        path = Path(self.config.directory) / "state.json"
        tmp = path.with_suffix(".json.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"session_id": self.session_id, "next_seq": next_seq}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            raise SpillError(f"cannot write {path}: {e}") from e
        self._persisted_seq = next_seq


def _read_state(path: Path) -> dict[str, object]:
    """Returns the saved state, ``{}`` when missing; a corrupt file is logged and ignored."""
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        logger.error("spill: %s is unreadable (%s); starting a new session", path, e)
        return {}
    if not isinstance(state, dict) or not isinstance(state.get("next_seq", 0), int):
        logger.error("spill: %s has an unexpected layout; starting a new session", path)
        return {}
    return state
