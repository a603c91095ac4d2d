"""The runtime's spill log: a :class:`protocol.seqlog.SeqLog` of encoded batches plus the
session's identity and numbering, surviving crashes and learner outages.

Layout of ``directory``: the seq log's ``<first_seq:020d>.seg`` segment files (record
format in :mod:`protocol.seqlog`) and ``state.json`` — ``{"session_id": str, "next_seq":
int}``, replaced atomically (temp + fsync + rename), so a restarted runtime keeps its
session and its numbering.

The disk cap (WARNING at ``warn_fraction``; at 100 % ``"hold"`` refuses the record with
:class:`SpillFullError` so the loop stops recording and holds the robot, ``"drop_oldest"``
deletes the oldest segments with an ERROR naming the steps lost) is the seq log's. All
methods block on the disk: call them from a worker thread, never from the event loop.
Thread-safe (one internal lock).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from protocol.atomic import write_json_atomic
from protocol.errors import SeqLogError, SeqLogFullError
from protocol.seqlog import FULL_POLICIES, HEADER_BYTES, SeqLog, SeqLogConfig
from runtime.errors import SpillError, SpillFullError

logger = logging.getLogger(__name__)

SPILL_POLICIES = FULL_POLICIES
__all__ = ["HEADER_BYTES", "SPILL_POLICIES", "SpillConfig", "SpillLog"]


@dataclass(frozen=True, kw_only=True)
class SpillConfig(SeqLogConfig):
    """Where and how much the spill log may write: the seq log's config (validated there,
    naming the field), named ``spill``. ``directory`` also holds ``state.json``; at the cap
    ``"hold"`` refuses the record, so the loop holds the robot; without ``fsync`` records
    are synced on rotation, state writes and close."""

    name: str = "spill"
    """Name used in log messages."""


class SpillLog:
    """The runtime's spill log; open with :meth:`open`. See the module docstring."""

    def __init__(self, config: SpillConfig, log: SeqLog, session_id: str, next_seq: int) -> None:
        """Use :meth:`open`; this only stores state."""
        self.config = config
        self.session_id = session_id
        self._log = log
        self._next_seq = next_seq
        self._persisted_seq = -1
        self._lock = threading.RLock()

    @classmethod
    def open(cls, config: SpillConfig) -> SpillLog:
        """Opens (or creates) the log in ``config.directory`` and recovers it.

        Returns the log with its session id and next seq restored. Blocks on the disk.
        Raises SpillError when the directory, a segment or the state file is unusable.
        """
        directory = Path(config.directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            state = _read_state(directory / "state.json")
            log = SeqLog.open(config)
        except OSError as e:
            raise SpillError(f"cannot open spill directory {directory}: {e}") from e
        except SeqLogError as e:
            raise SpillError(str(e)) from e
        spill = cls(config, log, str(state.get("session_id") or uuid.uuid4().hex), int(state.get("next_seq", 0)))
        spill._next_seq = max(spill._next_seq, log.end_seq)
        spill._write_state(spill._next_seq)
        logger.info("spill: session %s, next seq %d, %d records (%d bytes) recovered",
                    spill.session_id, spill._next_seq, len(log.records()), log.bytes_used)
        return spill

    def close(self) -> None:
        """Flushes, fsyncs and closes the active segment and persists the state. Idempotent."""
        with self._lock:
            self._log.close()
            self._write_state(self._next_seq)

    # ------------------------------------------------------------------ queries
    @property
    def bytes_used(self) -> int:
        """Bytes in all segment files."""
        return self._log.bytes_used

    @property
    def next_seq(self) -> int:
        """The next seq the runtime will assign (persisted in ``state.json``)."""
        return self._next_seq

    @property
    def dropped_steps(self) -> int:
        """Steps deleted by the ``drop_oldest`` policy."""
        return self._log.dropped_steps

    @property
    def truncated_bytes(self) -> int:
        """Bytes cut from torn tails during recovery."""
        return self._log.truncated_bytes

    def records(self) -> list[tuple[int, int]]:
        """Returns ``(seq, count)`` of every stored record, sorted by seq."""
        return self._log.records()

    @property
    def _file(self) -> BinaryIO | None:
        """The active segment file of the underlying seq log (crash-simulation tests flush it)."""
        return self._log._file

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
        with self._lock:
            try:
                self._log.append(seq, payload, count)
            except SeqLogFullError as e:
                logger.warning("spill: the learner is not keeping up or is gone")
                raise SpillFullError(str(e)) from e
            except SeqLogError as e:
                raise SpillError(str(e)) from e
            self._next_seq = max(self._next_seq, seq + count)

    def release_through(self, seq: int) -> int:
        """Deletes every segment whose records all end at or before ``seq`` (inclusive,
        i.e. acked). Returns the bytes freed. Blocks on the disk. Raises SpillError."""
        try:
            return self._log.release_through(seq)
        except SeqLogError as e:
            raise SpillError(str(e)) from e

    # ------------------------------------------------------------------ read
    def read(self, seq: int) -> bytes:
        """Returns the payload of the record that starts at ``seq``; blocks on the disk.

        Raises SpillError when no such record is stored (released or dropped) or it is corrupt.
        """
        try:
            return self._log.read(seq)
        except SeqLogError as e:
            raise SpillError(str(e)) from e

    def iter_from(self, seq: int) -> Iterator[tuple[int, int, bytes]]:
        """Yields ``(seq, count, payload)`` for every stored record that holds a step at or
        after ``seq``, in seq order. Blocks on the disk. Raises SpillError for a corrupt record."""
        try:
            yield from self._log.iter_from(seq)
        except SeqLogError as e:
            raise SpillError(str(e)) from e

    # ------------------------------------------------------------------ state file
    def _write_state(self, next_seq: int) -> None:
        path = Path(self.config.directory) / "state.json"
        try:
            write_json_atomic(path, {"session_id": self.session_id, "next_seq": next_seq}, indent=None)
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
