"""resetfree-demos export / import / export-run with LeRobotDataset v3 (the lerobot extra;
skipped without it): the CLI round trip, a dataset recorded with the library's own API
training BC and starting a learner, one-line errors, and a run's practice data."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ledataset")
# imported before any MuJoCo rendering context exists (the library pulls in torchvision)
lerobot_dataset = pytest.importorskip("ledataset.datasets.lerobot_dataset")

import simulation  # noqa: E402
from learner.bc import BCConfig, train_bc_from_demos  # noqa: E402
from learner.demo_dir import load_demo_dir  # noqa: E402
from learner.journal import IngestJournal, JournalConfig  # noqa: E402
from learner.service import LearnerService  # noqa: E402
from protocol.demos import load_demos  # noqa: E402
from protocol.lerobot import import_lerobot  # noqa: E402
from protocol.messages import TransitionBatch  # noqa: E402
from simulation.tools.demos_cli import main  # noqa: E402
from tests.learner.test_service import started, status, stop, tiny_config  # noqa: E402
from tests.protocol.test_lerobot import isolate_library, record_like_lerobot  # noqa: E402

EARL_DOOR = Path(simulation.__file__).parent / "assets" / "demos" / "door_forward.npz"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_library(monkeypatch, tmp_path / "hf-cache")


def test_cli_round_trip_of_earl_demos_is_exact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, back = tmp_path / "door_lerobot", tmp_path / "back.npz"
    assert main(["export", "--format", "lerobot", str(EARL_DOOR), str(out)]) == 0
    assert "5 episodes, 400 frames at 10 fps" in capsys.readouterr().out  # door runs at 10 Hz
    dataset = lerobot_dataset.LeRobotDataset("local/door", root=out)
    assert dataset.meta.total_episodes == 5 and list(dataset.meta.tasks.index) == ["door forward"]
    assert main(["import", str(out), str(back)]) == 0
    original, imported = load_demos(EARL_DOOR), load_demos(back)
    assert imported.meta == original.meta
    for key in ("actions", "rewards", "terminals", "is_first", "is_last", "episode_success"):
        assert np.array_equal(getattr(imported, key), getattr(original, key)), key
    assert np.array_equal(imported.observations["state"], original.observations["state"])


def test_a_recorded_dataset_trains_bc_and_starts_a_learner(tmp_path: Path) -> None:
    """Recorded as LeRobot's recorder records (a camera, the end-effector state, the action),
    imported for door in pixel mode: BC trains on it and a learner serves with it."""
    recorded = record_like_lerobot(tmp_path / "rec", episodes=2, frames=8, state_dim=4, image_size=32,
                                   camera="doorview")
    demo_dir = tmp_path / "demos"
    assert main(["import", str(recorded), str(demo_dir / "door_forward.npz"), "--task", "door",
                 "--direction", "forward"]) == 0
    demos = load_demos(demo_dir / "door_forward.npz")
    assert demos.meta.obs_mode == "pixels" and demos.observations["doorview"].shape == (16, 3, 32, 32)
    cfg = tiny_config()
    demo_set = load_demo_dir(demo_dir)
    weights = train_bc_from_demos(demos, demo_set.obs_spec, cfg.network, BCConfig(steps=3, batch_size=8))
    assert all(np.isfinite(w.numpy()).all() for w in weights.values())

    async def serve() -> None:
        service = LearnerService(cfg, demo_set, run_dir=tmp_path / "run")
        task = await started(service)
        try:
            assert (await status(service)).ok
        finally:
            await stop(service, task)

    asyncio.run(serve())


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recorded = record_like_lerobot(tmp_path / "rec", episodes=1, state_dim=5)
    capsys.readouterr()
    assert main(["import", str(recorded), str(tmp_path / "x.npz"), "--task", "door", "--direction", "forward"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "observation.state has 5 values" in err and "expects 4" in err
    assert main(["import", str(recorded), str(tmp_path / "x.npz")]) == 1
    assert "pass task and direction" in capsys.readouterr().err
    info = json.loads((recorded / "meta/info.json").read_text())
    (recorded / "meta/info.json").write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    assert main(["import", str(recorded), str(tmp_path / "x.npz"), "--task", "door", "--direction", "forward"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "v2.1" in err and "v3.0" in err
    assert main(["export", str(EARL_DOOR), str(recorded)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()


# ---------------------------------------------------------------------- practice data
def _batch(session: str, code: int, seqs: range, agents: list[int], *, segment_end: int | None) -> TransitionBatch:
    seq = np.arange(seqs.start, seqs.stop)
    state = np.stack([seq, np.full_like(seq, code), np.asarray(agents), np.zeros_like(seq)], axis=1)
    return TransitionBatch(session_id=session, first_seq=seqs.start, observations={"state": state.astype(np.float32)},
                           actions=np.stack([seq / 100, -seq / 100], axis=1).astype(np.float32),
                           agents=np.asarray(agents, np.uint8), timestamps=seq.astype(np.float64),
                           is_first=seq == 0, is_last=seq == segment_end)


def write_run(run_dir: Path) -> Path:
    """Two robots: ``a`` practises forward 0-9, backward 10-19, forward 20-29 (segment ends
    at 29); ``b`` forward 0-11, still going. Their batches interleave in the journal; a third
    robot's record has a NaN action."""
    journal = IngestJournal.open(JournalConfig(directory=run_dir / "journal", retention_steps=1000, fsync=False))
    agent_a = [0] * 10 + [1] * 10 + [0] * 10
    batches = [_batch("a", 1, range(0, 8), agent_a[0:8], segment_end=29),
               _batch("b", 2, range(0, 6), [0] * 6, segment_end=None),
               _batch("a", 1, range(8, 24), agent_a[8:24], segment_end=29),
               _batch("b", 2, range(6, 12), [0] * 6, segment_end=None),
               _batch("a", 1, range(24, 30), agent_a[24:30], segment_end=29),
               _batch("c", 3, range(0, 4), [0] * 4, segment_end=3)]
    batches[-1].actions[1] = np.nan  # journaled before ingest checked values: left out, as on replay
    position = 0
    for batch in batches:
        journal.append(position, batch)
        position += batch.size
    journal.close()
    (run_dir / "run.json").write_text(json.dumps({"task": "door", "obs": "state"}))
    return run_dir


def test_export_run_writes_one_episode_per_turn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = write_run(tmp_path / "run")
    segment = next((run / "journal").glob("*.seg"))
    with segment.open("ab") as f:
        f.write(b"RFSP half a record")  # the learner is still writing: the export must not cut it
    size = segment.stat().st_size
    out = tmp_path / "practice"
    assert main(["export-run", str(run), str(out)]) == 0
    assert segment.stat().st_size == size
    dataset = lerobot_dataset.LeRobotDataset("local/practice", root=out)
    assert dataset.fps == 10 and dataset.meta.total_episodes == 4
    assert sorted(dataset.meta.tasks.index) == ["door backward practice", "door forward practice"]
    turns = {}
    for direction in ("forward", "backward"):
        demos = import_lerobot(out, direction=direction)
        assert demos.meta.source == "practice"
        for episode in demos.episodes():
            state = episode.observations["state"]
            turns[(int(state[0, 1]), int(state[0, 0]))] = (direction, state[:, 0].astype(int).tolist())
            assert np.allclose(episode.actions[:-1, 0], state[:-1, 0] / 100) and not episode.actions[-1].any()
    assert turns == {(1, 0): ("forward", list(range(0, 11))), (1, 10): ("backward", list(range(10, 21))),
                     (1, 20): ("forward", list(range(20, 30))), (2, 0): ("forward", list(range(0, 12)))}


def test_export_run_cuts_long_turns_and_reports_a_missing_journal(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    run = write_run(tmp_path / "run")
    out = tmp_path / "practice"
    assert main(["export-run", str(run), str(out), "--max-episode-steps", "4", "--fps", "5"]) == 0
    dataset = lerobot_dataset.LeRobotDataset("local/practice", root=out)
    assert dataset.fps == 5
    lengths = dataset.meta.episodes.with_format("arrow")[:].column("length").to_pylist()
    assert max(lengths) == 5 and sum(length - 1 for length in lengths) == 29 + 11  # every transition once
    capsys.readouterr()
    assert main(["export-run", str(tmp_path), str(tmp_path / "none"), "--task", "door"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "journal" in err
