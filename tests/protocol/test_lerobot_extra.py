"""Without the lerobot extra the LeRobotDataset converter says how to install it (core suite)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from protocol.demos import DemoMeta, Demos
from protocol.lerobot import LeRobotUnavailableError, export_lerobot, import_lerobot


def test_without_the_library_the_error_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ledataset.datasets.lerobot_dataset", None)  # as if not installed
    first, last = np.array([True, False]), np.array([False, True])
    demos = Demos(observations={"state": np.zeros((2, 3), np.float32)}, actions=np.zeros((2, 2), np.float32),
                  rewards=np.zeros(2, np.float32), terminals=np.zeros(2, bool), is_first=first, is_last=last,
                  episode_success=np.ones(1, bool),
                  meta=DemoMeta(task="door", direction="forward", obs_mode="state"))
    with pytest.raises(LeRobotUnavailableError, match=r"resetfree\[lerobot\]") as error:
        export_lerobot(demos, tmp_path / "ds", fps=10)
    assert isinstance(error.value, ImportError) and not (tmp_path / "ds").exists()
    dataset = tmp_path / "in"
    (dataset / "meta").mkdir(parents=True)
    (dataset / "meta" / "info.json").write_text('{"codebase_version": "v3.0", "features": {}}')
    (dataset / "meta" / "tasks.parquet").write_bytes(b"")
    for sub in ("meta/episodes/chunk-000", "data/chunk-000"):
        (dataset / sub).mkdir(parents=True)
        (dataset / sub / "file-000.parquet").write_bytes(b"")
    with pytest.raises(LeRobotUnavailableError, match=r"resetfree\[lerobot\]"):
        import_lerobot(dataset)
