"""Spill log: append/read, rotation, release, crash recovery, persisted numbering, disk cap."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from runtime.errors import SpillError, SpillFullError
from runtime.spill import HEADER_BYTES, SpillConfig, SpillLog


def payload(seq: int, size: int = 100) -> bytes:
    return bytes([seq % 251]) * size


def test_append_iter_read_and_rotation(tmp_path: Path) -> None:
    log = SpillLog.open(SpillConfig(directory=tmp_path, segment_bytes=1000, max_bytes=100_000))
    for seq in range(0, 40, 2):
        log.append(seq, payload(seq), count=2)
    assert len(list(tmp_path.glob("*.seg"))) == 3
    assert [s for s, _, _ in log.iter_from(11)] == list(range(10, 40, 2))
    assert all(p == payload(s) for s, _, p in log.iter_from(0))
    assert log.read(20) == payload(20)
    with pytest.raises(SpillError):
        log.read(21)
    assert log.next_seq == 40
    log.append(20, b"duplicate", count=2)  # already stored: ignored
    assert log.read(20) == payload(20)
    log.close()


def test_release_deletes_only_fully_acked_segments(tmp_path: Path) -> None:
    log = SpillLog.open(SpillConfig(directory=tmp_path, segment_bytes=300, max_bytes=100_000))
    for seq in range(10):
        log.append(seq, payload(seq))  # 3 records (372 bytes) per segment: [0-2] [3-5] [6-8] [9]
    before = log.bytes_used
    freed = log.release_through(4)
    assert freed > 0 and log.bytes_used == before - freed
    remaining = [s for s, _ in log.records()]
    assert remaining == list(range(3, 10))  # segment [3-5] still holds the unacked 5
    assert [s for s, _, _ in log.iter_from(5)][0] == 5
    log.release_through(9)
    assert log.records() == [] and log.bytes_used == 0
    log.append(10, payload(10))
    assert log.read(10) == payload(10)
    log.close()


def test_crash_recovery_cuts_a_torn_tail_and_keeps_numbering(tmp_path: Path, caplog) -> None:
    cfg = SpillConfig(directory=tmp_path, segment_bytes=10_000, max_bytes=100_000)
    log = SpillLog.open(cfg)
    session = log.session_id
    for seq in range(5):
        log.append(seq, payload(seq))
    log.set_next_seq(7)  # steps 5, 6 were numbered (kept in memory) before the crash
    segment = next(tmp_path.glob("*.seg"))
    log._file.flush()  # simulate a crash: no close()
    size = segment.stat().st_size
    with open(segment, "r+b") as f:  # tear the last record in the middle of its payload
        f.truncate(size - 30)
    with caplog.at_level(logging.WARNING, logger="runtime.spill"):
        again = SpillLog.open(cfg)
    assert "truncating" in caplog.text
    assert again.session_id == session and again.next_seq == 7
    assert [s for s, _ in again.records()] == [0, 1, 2, 3]
    assert segment.stat().st_size == 4 * (HEADER_BYTES + 100)
    again.append(7, payload(7))
    again.close()
    third = SpillLog.open(cfg)
    assert [s for s, _ in third.records()] == [0, 1, 2, 3, 7] and third.next_seq == 8
    third.close()


def test_corrupt_crc_in_the_middle_is_cut(tmp_path: Path) -> None:
    cfg = SpillConfig(directory=tmp_path, segment_bytes=10_000, max_bytes=100_000)
    log = SpillLog.open(cfg)
    for seq in range(4):
        log.append(seq, payload(seq))
    log.close()
    segment = next(tmp_path.glob("*.seg"))
    data = bytearray(segment.read_bytes())
    data[2 * (HEADER_BYTES + 100) + HEADER_BYTES + 5] ^= 0xFF  # flip a byte in record 2
    segment.write_bytes(bytes(data))
    recovered = SpillLog.open(cfg)
    assert [s for s, _ in recovered.records()] == [0, 1]
    assert recovered.truncated_bytes == 2 * (HEADER_BYTES + 100)
    recovered.close()


def test_garbage_file_and_state_never_crash(tmp_path: Path) -> None:
    (tmp_path / "00000000000000000000.seg").write_bytes(b"\x00garbage" * 10)
    (tmp_path / "state.json").write_text("{not json")
    log = SpillLog.open(SpillConfig(directory=tmp_path, segment_bytes=1000, max_bytes=10_000))
    assert log.records() == [] and log.next_seq == 0
    log.close()


def test_disk_cap_warns_then_holds(tmp_path: Path, caplog) -> None:
    log = SpillLog.open(SpillConfig(directory=tmp_path, segment_bytes=500, max_bytes=1240))
    with caplog.at_level(logging.WARNING, logger="runtime.spill"):
        for seq in range(8):
            log.append(seq, payload(seq))
        with pytest.raises(SpillFullError):
            for seq in range(8, 20):
                log.append(seq, payload(seq))
    assert "disk cap used" in caplog.text
    assert log.bytes_used <= 1240
    kept = log.records()
    log.release_through(kept[-1][0])
    log.append(100, payload(100))  # room again
    log.close()


def test_disk_cap_drop_oldest_is_loud(tmp_path: Path, caplog) -> None:
    log = SpillLog.open(SpillConfig(directory=tmp_path, segment_bytes=300, max_bytes=700,
                                    full_policy="drop_oldest"))
    with caplog.at_level(logging.ERROR, logger="runtime.spill"):
        for seq in range(20):
            log.append(seq, payload(seq))
    assert log.bytes_used <= 700 and log.dropped_steps > 0
    assert "data lost" in caplog.text
    assert log.records()[-1][0] == 19
    log.close()


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="full_policy"):
        SpillConfig(directory=Path("."), full_policy="ignore")
    with pytest.raises(ValueError, match="max_bytes"):
        SpillConfig(directory=Path("."), segment_bytes=1000, max_bytes=10)
