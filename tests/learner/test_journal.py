"""Ingest journal: order, durability across a torn tail, retention that respects checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from learner.journal import IngestJournal, JournalConfig, JournalError
from learner.metrics import group_scalars
from tests.learner.test_service import make_batch


def test_records_come_back_in_ingest_order_across_sessions(tmp_path: Path) -> None:
    journal = IngestJournal.open(JournalConfig(directory=tmp_path, retention_steps=100, fsync=False))
    position = 0
    sent = []
    for i in range(6):
        batch = make_batch("a" if i % 2 else "b", 8 * (i // 2), 8)
        journal.append(position, batch)
        sent.append((position, batch))
        position += batch.size
    assert journal.end == 48 and journal.start == 0
    got = list(journal.records_from(16))
    assert [p for p, _ in got] == [16, 24, 32, 40]
    for (p, b), (q, c) in zip(sent[2:], got):
        assert (b.session_id, b.first_seq) == (c.session_id, c.first_seq)
        assert np.array_equal(b.observations["state"], c.observations["state"])
    journal.close()


def test_torn_tail_is_cut_and_appends_continue(tmp_path: Path) -> None:
    cfg = JournalConfig(directory=tmp_path, retention_steps=100, fsync=False)
    journal = IngestJournal.open(cfg)
    for i in range(3):
        journal.append(8 * i, make_batch("s", 8 * i, 8))
    journal.close()
    seg = next(tmp_path.glob("*.seg"))
    seg.write_bytes(seg.read_bytes()[:-10])  # a crash mid-write of the last record
    again = IngestJournal.open(cfg)
    assert again.end == 16 and [p for p, _ in again.records_from(0)] == [0, 8]
    again.append(16, make_batch("s", 16, 8))
    assert again.end == 24
    again.close()


def test_read_only_open_leaves_a_live_journal_alone(tmp_path: Path) -> None:
    """An export reads the journal while the learner appends: a half-written record is
    skipped, not cut, and the reader can write nothing."""
    cfg = JournalConfig(directory=tmp_path / "journal", retention_steps=1, fsync=False)
    with pytest.raises(JournalError, match="no such directory"):
        IngestJournal.open(cfg, read_only=True)
    journal = IngestJournal.open(cfg)
    for i in range(3):
        journal.append(8 * i, make_batch("s", 8 * i, 8))
    journal.close()
    seg = next((tmp_path / "journal").glob("*.seg"))
    whole = seg.read_bytes()
    seg.write_bytes(whole[:-10])  # the learner is half-way through writing the last record
    reader = IngestJournal.open(cfg, read_only=True)
    assert [p for p, _ in reader.records_from(0)] == [0, 8]
    assert seg.stat().st_size == len(whole) - 10
    with pytest.raises(JournalError, match="read-only"):
        reader.append(24, make_batch("s", 24, 8))
    with pytest.raises(JournalError, match="read-only"):
        reader.trim(protect_from=100)
    seg.write_bytes(whole)  # ... and finishes it: a new reader sees every record
    assert [p for p, _ in IngestJournal.open(cfg, read_only=True).records_from(0)] == [0, 8, 16]


def test_trim_keeps_retention_and_the_oldest_checkpoints_records(tmp_path: Path) -> None:
    cfg = JournalConfig(directory=tmp_path, retention_steps=16, segment_bytes=400, fsync=False)
    journal = IngestJournal.open(cfg)
    for i in range(10):
        journal.append(8 * i, make_batch("s", 8 * i, 8))
    assert journal.trim(protect_from=0) == 0  # a checkpoint at 0 needs everything
    journal.trim(protect_from=40)
    assert 0 < journal.start <= 40
    journal.trim(protect_from=80)
    assert 0 < journal.start <= 80 - 16 and journal.end == 80
    assert [p for p, _ in journal.records_from(64)] == [64, 72]
    journal.close()


def test_corrupt_payload_is_an_error_not_a_crash(tmp_path: Path) -> None:
    cfg = JournalConfig(directory=tmp_path, retention_steps=100, fsync=False)
    journal = IngestJournal.open(cfg)
    journal._log.append(0, b"not a message", count=1)
    with pytest.raises(JournalError, match="position 0"):
        list(journal.records_from(0))
    with pytest.raises(ValueError, match="retention_steps"):
        JournalConfig(directory=tmp_path, retention_steps=0)


def test_metric_groups() -> None:
    g = group_scalars({"forward/losses/critic": 1.0, "backward/values/q_mean": 2.0, "vice/accuracy": 0.5,
                       "medal/logits_pos": 1.5, "forward/values/reward_mean": 0.1, "charts/env_steps": 3.0})
    assert g == {"losses/forward_critic": 1.0, "q/backward_mean": 2.0, "disc/vice_accuracy": 0.5,
                 "disc/medal_logits_pos": 1.5, "reward/forward_mean": 0.1, "charts/env_steps": 3.0}
