"""resetfree-demos: generate -> load round trips, import-earl, inspect."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from protocol.demos import load_demos
from simulation.tools.demos_cli import main
from tests.simulation.test_earl_import import earl_arrays
from tests.simulation.test_nonepisodic import GOAL, START, install_toy


@pytest.fixture(autouse=True)
def _toy(monkeypatch: pytest.MonkeyPatch) -> None:
    install_toy(monkeypatch)


def test_generate_state_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fwd.npz"
    assert main(["generate", "--task", "toy", "--episodes", "3", "--out", str(out), "--seed", "4"]) == 0
    assert "3 episodes, 3 successful" in capsys.readouterr().out
    demos = load_demos(out)
    assert demos.meta.task == "toy" and demos.meta.direction == "forward" and demos.meta.source == "expert"
    assert demos.episode_success.all() and demos.terminals.sum() == 3
    for episode in demos.episodes():
        states = episode.observations["state"]
        assert abs(states[0, 0] - START[0]) <= 0.05 + 1e-6
        assert np.linalg.norm(states[-1, :2] - GOAL) <= 0.02 + 1e-6
        assert 18 <= episode.num_transitions <= 22
    # same seed, same demos
    assert main(["generate", "--task", "toy", "--episodes", "3", "--out", str(tmp_path / "b.npz"),
                 "--seed", "4"]) == 0
    assert np.array_equal(load_demos(tmp_path / "b.npz").actions, demos.actions)


def test_generate_backward_pixels(tmp_path: Path) -> None:
    out = tmp_path / "bwd.npz"
    assert main(["generate", "--task", "toy", "--direction", "backward", "--episodes", "2", "--obs", "pixels",
                 "--image-size", "24", "--max-steps", "5", "--out", str(out)]) == 0
    demos = load_demos(out)
    assert demos.meta.obs_mode == "pixels" and demos.meta.cameras == ("top", "side")
    assert demos.observations["top"].shape == (12, 3, 24, 24) and demos.observations["top"].dtype == np.uint8
    assert demos.observations["proprio"].shape == (12, 3)
    assert not demos.episode_success.any() and not demos.terminals.any()  # 5 steps are too few


def test_import_earl_pickle_state_and_pixels(tmp_path: Path) -> None:
    pkl = tmp_path / "demo_data.pkl"
    pkl.write_bytes(pickle.dumps(earl_arrays([3, 2], dim=4), protocol=4))
    assert main(["import-earl", str(pkl), "--task", "toy", "--direction", "forward", "--out",
                 str(tmp_path / "s.npz")]) == 0
    demos = load_demos(tmp_path / "s.npz")
    assert demos.num_episodes == 2 and demos.meta.source == "earl" and demos.observations["state"].shape == (7, 4)
    assert main(["import-earl", str(pkl), "--task", "toy", "--direction", "forward", "--render-pixels",
                 "--image-size", "16", "--out", str(tmp_path / "p.npz")]) == 0
    pixels = load_demos(tmp_path / "p.npz")
    assert pixels.observations["top"].shape == (7, 3, 16, 16)
    # proprio follows the EARL state the frame was rendered from
    expected = np.clip(demos.observations["state"][:, :2], -1, 1)
    assert np.allclose(pixels.observations["proprio"][:, :2], expected, atol=1e-6)


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned > /dev/null",))


def test_import_earl_refuses_malicious_pickle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(pickle.dumps({"observations": _Evil()}))
    out = tmp_path / "x.npz"
    assert main(["import-earl", str(pkl), "--task", "toy", "--direction", "forward", "--out", str(out)]) == 1
    assert "system" in capsys.readouterr().err and not out.exists()


def test_import_earl_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pkl = tmp_path / "d.pkl"
    pkl.write_bytes(pickle.dumps(earl_arrays([2], dim=6)))
    assert main(["import-earl", str(pkl), "--task", "toy", "--direction", "forward", "--out",
                 str(tmp_path / "x.npz")]) == 1
    assert "expects (4,)" in capsys.readouterr().err


def test_inspect_prints_and_draws(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p.npz"
    assert main(["generate", "--task", "toy", "--episodes", "2", "--obs", "pixels", "--image-size", "16",
                 "--max-steps", "4", "--out", str(out)]) == 0
    capsys.readouterr()
    sheet = tmp_path / "sheet.png"
    assert main(["inspect", str(out), "--sheet", str(sheet)]) == 0
    text = capsys.readouterr().out
    assert "2 episodes, 8 transitions" in text and "obs/top: uint8 (10, 3, 16, 16)" in text
    assert "episode 1: rows 5-9, 4 steps, failure" in text
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["inspect", str(tmp_path / "absent.npz")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_inspect_of_a_file_that_is_not_an_npz_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# resetfree\n")
    assert main(["inspect", str(readme)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "README.md: not an npz archive" in err and "pickle" not in err, err


def test_help_and_unknown_task(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("generate", "import-earl", "inspect"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
    assert main(["generate", "--task", "nope", "--out", "/tmp/never.npz"]) == 1
    assert "unknown 'nope'" in capsys.readouterr().err
