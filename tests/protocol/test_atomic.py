"""protocol.atomic: a reader sees the old file or the new one, never a torn one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protocol.atomic import atomic_file, write_bytes_atomic, write_json_atomic, write_text_atomic


def test_writes_create_parents_and_replace(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "state.json"
    write_json_atomic(path, {"next_seq": 3, "session_id": "x"})
    assert json.loads(path.read_text()) == {"next_seq": 3, "session_id": "x"} and path.read_text().endswith("\n")
    write_text_atomic(path, "new")
    assert path.read_text() == "new"
    write_bytes_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="disk gone"):
        with atomic_file(path) as f:
            f.write(b"half of the new")
            raise RuntimeError("disk gone")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_unencodable_json_fails_before_touching_the_disk(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("old")
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert path.read_text() == "old" and len(list(tmp_path.iterdir())) == 1
