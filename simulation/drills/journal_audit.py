"""The fault drill's audit of a learner's ingest journal: every step exactly once, in order."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from simulation.app.processes import FaultDrillError

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class JournalAudit:
    """What the learner's ingest journal holds, checked step by step."""

    steps: int
    """Steps in the retained journal records (counted once per record)."""
    unique: dict[str, int]
    """Session id → distinct seqs journaled."""
    duplicates: int
    """Steps journaled more than once (same session and seq)."""
    gaps: dict[str, int]
    """Session id → seqs missing below its highest journaled seq."""
    position_errors: int
    """Records whose journal position does not follow the previous record's end."""


def audit_journal(run_dir: Path) -> JournalAudit:
    """Reads ``RUN_DIR/journal`` (the learner must not be running) and checks exactly-once.

    Returns the audit; blocks on the disk. Raises FaultDrillError when the journal cannot be read.
    """
    from learner.errors import LearnerError
    from learner.journal import IngestJournal, JournalConfig

    seen: dict[str, np.ndarray] = {}
    steps = position_errors = 0
    try:
        journal = IngestJournal.open(JournalConfig(directory=run_dir / "journal", retention_steps=1 << 40))
    except LearnerError as e:
        raise FaultDrillError(f"{run_dir}: cannot open the ingest journal: {e}") from e
    try:
        expected = journal.start
        for position, batch in journal.records_from(journal.start):
            position_errors += position != expected
            expected = position + batch.size
            steps += batch.size
            counts = seen.setdefault(batch.session_id, np.zeros(0, np.int64))
            if counts.size < batch.end_seq:
                counts = np.concatenate([counts, np.zeros(batch.end_seq - counts.size, np.int64)])
            counts[batch.first_seq:batch.end_seq] += 1
            seen[batch.session_id] = counts
    except LearnerError as e:
        raise FaultDrillError(f"{run_dir}: cannot read the ingest journal: {e}") from e
    finally:
        journal.close()
    return JournalAudit(steps=steps, unique={s: int((c > 0).sum()) for s, c in seen.items()},
                        duplicates=int(sum(int(np.clip(c - 1, 0, None).sum()) for c in seen.values())),
                        gaps={s: int((c == 0).sum()) for s, c in seen.items()}, position_errors=position_errors)
