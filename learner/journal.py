"""The learner's ingest journal: the durable copy of everything ingested, in ingest order.

Each admitted :class:`~protocol.messages.TransitionBatch` is appended (encoded with
:func:`protocol.codec.encode`, one frame) to a :class:`protocol.seqlog.SeqLog` *before* the
learner commits and acks it. Records are keyed by the **journal position**: the number of
steps journaled before the record, over all sessions, so ``position`` + ``batch.size`` is the
next record's key and re-reading the journal reproduces the original ingest order exactly.
A checkpoint stores the position the trainer had consumed; a restarted learner re-ingests
the records from there (and, when the checkpoint holds no replay, refills the buffers from
the older retained records without counting them again).

Retention: :meth:`IngestJournal.trim` deletes whole segments only when they are older than
both ``retention_steps`` (≥ the replay capacity) and the oldest checkpoint still on disk.
Every method blocks on the disk: call it from a worker thread, never from the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from learner.errors import LearnerError
from protocol.codec import Limits, decode, encode
from protocol.errors import ProtocolError, SeqLogError, SeqLogFullError
from protocol.messages import TransitionBatch
from protocol.seqlog import SeqLog, SeqLogConfig

logger = logging.getLogger(__name__)


class JournalError(LearnerError):
    """The ingest journal could not be written or read back (the text names the record)."""


class JournalFullError(JournalError):
    """The journal reached its disk cap; nothing more is acked until space is freed."""


@dataclass(frozen=True, kw_only=True)
class JournalConfig:
    """Where the journal lives and how much it keeps."""

    directory: Path
    """Directory of the journal's segment files (``RUN_DIR/journal``)."""
    retention_steps: int
    """Steps always kept (at least the replay capacity, so the replay can be rebuilt)."""
    segment_bytes: int = 64 * 2**20
    """Segment size; retention frees whole segments."""
    max_bytes: int = 512 * 2**30
    """Disk cap; at the cap appends fail (``hold``) and batches go unacked."""
    fsync: bool = True
    """fsync each record before it is acked (power-loss safe; otherwise crash safe)."""

    def __post_init__(self) -> None:
        if not isinstance(self.retention_steps, int) or self.retention_steps < 1:
            raise ValueError(f"retention_steps: must be a positive int, got {self.retention_steps!r}")
        self.seqlog_config()

    def seqlog_config(self) -> SeqLogConfig:
        """Returns the underlying seq log's config. Raises ValueError naming a bad field."""
        return SeqLogConfig(directory=Path(self.directory), segment_bytes=self.segment_bytes,
                            max_bytes=self.max_bytes, full_policy="hold", fsync=self.fsync, name="journal")


class IngestJournal:
    """Append-only journal of ingested batches keyed by journal position; see the module docstring."""

    def __init__(self, config: JournalConfig, log: SeqLog) -> None:
        """Use :meth:`open`."""
        self.config = config
        self._log = log
        self._limits = Limits()

    @classmethod
    def open(cls, config: JournalConfig, *, read_only: bool = False) -> IngestJournal:
        """Opens (or creates) the journal, cutting a torn tail. Blocks. Raises JournalError.

        ``read_only`` reads a journal a running learner may be appending to (exports): the
        directory must exist, nothing is cut or written (``append``/``trim`` raise JournalError).
        """
        try:
            log = SeqLog.open(config.seqlog_config(), read_only=read_only)
        except SeqLogError as e:
            raise JournalError(f"cannot open the ingest journal: {e}") from e
        journal = cls(config, log)
        logger.info("journal: %s holds %d records, positions %s..%d", config.directory, len(log.records()),
                    log.first_seq, log.end_seq)
        return journal

    @property
    def end(self) -> int:
        """The next journal position (steps journaled in total; 0 when empty)."""
        return self._log.end_seq

    @property
    def start(self) -> int:
        """The lowest position still retained (``end`` when empty)."""
        first = self._log.first_seq
        return self.end if first is None else first

    @property
    def bytes_used(self) -> int:
        """Bytes on disk."""
        return self._log.bytes_used

    def append(self, position: int, batch: TransitionBatch) -> None:
        """Durably appends ``batch`` at ``position`` (flushed; fsynced when configured).

        Blocks on the disk. A record already at ``position`` is left as it is. Raises
        JournalFullError at the disk cap, JournalError when the write fails.
        """
        self.append_encoded(position, encode(batch, single_frame=True)[0], batch.size)

    def append_encoded(self, position: int, frame: bytes | memoryview, size: int) -> None:
        """As :meth:`append`, for a batch of ``size`` steps already encoded as one frame
        (``protocol.codec.encode(batch, single_frame=True)``'s form: the frame a runtime sends,
        which the caller has decoded and checked). Stored as it is; :meth:`records_from` decodes it."""
        try:
            self._log.append(position, frame, count=size)
        except SeqLogFullError as e:
            raise JournalFullError(str(e)) from e
        except SeqLogError as e:
            raise JournalError(str(e)) from e

    def records_from(self, position: int) -> Iterator[tuple[int, TransitionBatch]]:
        """Yields ``(position, batch)`` for every retained record at or after ``position``, in order.

        Blocks on the disk. Raises JournalError for a record that cannot be read or decoded.
        """
        try:
            for seq, count, payload in self._log.iter_from(position):
                if seq < position:
                    continue  # a record straddling `position` was consumed already
                try:
                    batch = decode([payload], limits=self._limits)
                except ProtocolError as e:
                    raise JournalError(f"journal record at position {seq} does not decode: {e}") from e
                if not isinstance(batch, TransitionBatch) or batch.size != count:
                    raise JournalError(f"journal record at position {seq} is not a {count}-step batch")
                yield seq, batch
        except SeqLogError as e:
            raise JournalError(str(e)) from e

    def trim(self, protect_from: int) -> int:
        """Deletes segments wholly before ``min(end - retention_steps, protect_from)``.

        ``protect_from`` is the journal position of the oldest checkpoint on disk. Returns
        the bytes freed. Blocks on the disk. Raises JournalError when a delete fails.
        """
        keep_from = min(self.end - self.config.retention_steps, protect_from)
        if keep_from <= 0:
            return 0
        try:
            freed = self._log.release_through(keep_from - 1)
        except SeqLogError as e:
            raise JournalError(str(e)) from e
        if freed:
            logger.info("journal: freed %d bytes (kept positions >= %d)", freed, self.start)
        return freed

    def close(self) -> None:
        """Flushes, fsyncs and closes the active segment. Idempotent. Blocks."""
        self._log.close()
