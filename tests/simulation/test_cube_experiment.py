"""``resetfree-bench cube-ood``: the intervention counter on journals whose answer is known,
the pixel replay against the twin itself, and a tiny end-to-end run (real learner, runtime,
demos, BC and evaluation: a few hundred steps, small networks) with its resume and refusals."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from learner.journal import IngestJournal, JournalConfig
from protocol.messages import TransitionBatch
from simulation.drills import cube_config, cube_practice
from simulation.drills import cube_experiment as ce
from simulation.drills.cube_interventions import (BACKWARD, FORWARD, TurnEnd, TwinReplay, backward_turn_ends,
                                           count_interventions, in_reach, journal_interventions, state_cube)
from simulation.tasks import make
from simulation.tasks.cube import REST_Z

IN = (0.02, -0.05, REST_Z)
FAR = (0.30, 0.0, REST_Z)        # on the table, past the hand's workspace
HELD = (0.0, 0.0, REST_Z + 0.08)  # still in the gripper
FLOOR = (0.6, 0.0, -0.73)        # fell off the table


def _batch(session: str, first_seq: int, rows: list[tuple[int, tuple[float, float, float]]], *,
           first: bool = False, last: bool = False) -> TransitionBatch:
    n = len(rows)
    states = np.zeros((n, 12), np.float32)
    for i, (_, cube) in enumerate(rows):
        states[i, 5:8] = cube
    is_first, is_last = np.zeros(n, bool), np.zeros(n, bool)
    is_first[0], is_last[-1] = first, last
    return TransitionBatch(session_id=session, first_seq=first_seq, observations={"state": states},
                           actions=np.zeros((n, 5), np.float32), agents=np.array([a for a, _ in rows], np.uint8),
                           timestamps=np.arange(n, dtype=np.float64), is_first=is_first, is_last=is_last)


def _turn(agent: int, cube: tuple[float, float, float], length: int = 3) -> list[tuple[int, tuple]]:
    return [(agent, cube)] * length


def test_in_reach_region() -> None:
    assert in_reach(IN) and in_reach((0.15, -0.15, REST_Z + 0.004))
    for cube in (FAR, HELD, FLOOR, (0.0, 0.151, REST_Z), (0.0, 0.0, REST_Z + 0.01)):
        assert not in_reach(cube), cube


def test_count_interventions_runs_of_failed_turns() -> None:
    ends = [TurnEnd(i * 10, c) for i, c in enumerate([IN, FAR, HELD, IN, IN, FLOOR])]
    report = count_interventions(ends)
    assert (report.turns, report.failed_turns, report.interventions) == (6, 3, 2)
    assert report.first_failure == 10 and report.out_of_reach_at_end and report.last_cube == FLOOR
    assert count_interventions([]).turns == 0


def test_synthetic_journal_counts_turn_ends(tmp_path: Path) -> None:
    """Backward turns end at the first forward observation after them; the cube there decides.
    A turn cut by a segment end (a restart) is not judged."""
    rows = (_turn(FORWARD, HELD) + _turn(BACKWARD, HELD) + _turn(FORWARD, IN)       # end 1: in reach
            + _turn(BACKWARD, IN) + _turn(FORWARD, FAR)                             # end 2: out
            + _turn(BACKWARD, FAR) + _turn(FORWARD, FAR)                            # end 3: out (same event)
            + _turn(BACKWARD, FAR) + _turn(FORWARD, IN))                            # end 4: back in reach
    cut = _turn(BACKWARD, IN) + _turn(BACKWARD, FLOOR)                              # ends with is_last: not judged
    restarted = _turn(FORWARD, IN) + _turn(BACKWARD, IN) + _turn(FORWARD, HELD)     # end 5: out (new event)
    journal = IngestJournal.open(JournalConfig(directory=tmp_path / "journal", retention_steps=10_000, fsync=False))
    position = 0
    for batch in (_batch("s", 0, rows[:10], first=True), _batch("s", 10, rows[10:]),
                  _batch("s", len(rows), cut, last=True), _batch("s", len(rows) + len(cut), restarted, first=True)):
        journal.append(position, batch)
        position += batch.size
    journal.close()
    report = journal_interventions(tmp_path, obs="state", seed=0)
    assert (report.turns, report.failed_turns, report.interventions) == (5, 3, 2)
    assert report.first_failure == 12 and report.out_of_reach_at_end and report.source == "state"


def _rollout(obs: str, seed: int, actions: np.ndarray) -> list[np.ndarray]:
    env = make("cube", obs=obs)
    try:
        observations = [env.reset(seed=seed, options={"init": "initial"})[0]]
        observations += [env.step(a)[0] for a in actions]
    finally:
        env.close()
    return observations


def test_pixel_replay_follows_the_twin() -> None:
    """A pixel journal (proprio only) replayed through the state twin gives the cube positions
    a state run of the same actions shows; a proprio that was never reached stops the count."""
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (40, 5)).astype(np.float32)
    agents = np.array(([FORWARD] * 10 + [BACKWARD] * 10) * 2, np.uint8)
    pixels = _rollout("pixels", 7, actions)[:40]
    states = _rollout("state", 7, actions)[:40]

    def batch(observations: dict[str, np.ndarray]) -> TransitionBatch:
        flags = np.zeros(40, bool)
        return TransitionBatch(session_id="s", first_seq=0, observations=observations, actions=actions,
                               agents=agents, timestamps=np.arange(40.0), is_first=np.r_[True, flags[1:]],
                               is_last=flags)

    truth = list(backward_turn_ends([(0, batch({"state": np.stack(states)}))], state_cube))
    proprio = np.stack([p["proprio"] for p in pixels])
    replay = TwinReplay(seed=7)
    replayed = list(backward_turn_ends([(0, batch({"proprio": proprio}))], replay))
    assert len(truth) == 1 and replay.diverged_at is None
    assert np.allclose(replayed[0].cube, truth[0].cube, atol=1e-6) and replayed[0].position == truth[0].position
    proprio[15, 0] += 0.01
    broken = TwinReplay(seed=7)
    assert list(backward_turn_ends([(0, batch({"proprio": proprio}))], broken)) == []
    assert broken.diverged_at == 15
    replay.close()
    broken.close()


TINY = ["--set", "schedule.seed_frames=100", "--set", "switch.interval=50", "--set", "network.hidden_dim=64",
        "--set", "agent.batch_size=32", "--set", "replay.batch_size=32", "--set", "replay.demo_per_batch=8",
        "--set", "vice.batch_size=32", "--set", "medal.batch_size=32", "--set", "schedule.bc_batch_size=32"]
"""Learner overrides that keep a few hundred steps to seconds on a busy CPU."""


def _argv(out: Path, steps: int = 300) -> list[str]:
    return ["--out", str(out), "--seeds", "0", "--steps", str(steps), "--eval-every", "100", "--trials", "2",
            "--demos", "4", "--bc-steps", "20", "--display-every", "30", *TINY]


def test_tiny_experiment_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "exp"
    assert ce.main(_argv(out)) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["reason"] == "finished" and summary["complete"]
    for name in ("experiment.json", "results.json", "results.md", "ood_vs_steps.png", "demos/cube_forward.npz",
                 "demos/cube_backward.npz", "bc/seed0/eval.json", "practice/seed0/interventions.json"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    run = results["practice"]["0"]
    assert run["env_steps"] == 300 and run["curve"][-1][0] == 300 and len(run["curve"]) >= 2
    final = json.loads((out / "practice/seed0/evals/step-00000300.json").read_text())
    bc = json.loads((out / "bc/seed0/eval.json").read_text())
    for split in ("id", "ood"):
        assert len(final[split]["successes"]) == 2 and len(bc[split]["successes"]) == 2
        assert results["table"][split]["practised"]["seeds"]["0"] == final[split]["success_rate"]
        assert results["table"][split]["bc"]["mean"] == bc[split]["success_rate"]
    run_json = json.loads((out / "practice/seed0/run.json").read_text())
    assert run_json["profile"] == "robot" and run_json["reset_interval"] is None and run_json["task"] == "cube"
    interventions = run["interventions"]
    assert interventions["turns"] >= 2 and interventions["source"] == "state"  # 300 steps, switch every 50
    assert "| OOD | practised |" in (out / "results.md").read_text()

    # rerun: nothing redone, nothing overwritten
    before = (out / "results.json").stat().st_mtime_ns
    assert ce.main(_argv(out)) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["reason"] == "already complete"
    assert (out / "results.json").stat().st_mtime_ns == before
    # other settings on a finished experiment: refused, naming the difference
    assert ce.main(_argv(out, steps=400)) == 1
    assert "steps: was 300, now 400" in capsys.readouterr().err


def test_practice_resumes_from_its_run_dir(tmp_path: Path) -> None:
    """A practice run stopped at 200 steps continues to 350 in the same run directory: the
    learner resumes its checkpoint and the journal continues."""
    args = ce.parser().parse_args(_argv(tmp_path, steps=200))
    cfg = cube_config.CubeExperimentConfig(out=tmp_path, seeds=(0,), steps=200, eval_every=100, trials=1, demos=4,
                                           bc_steps=20, overrides=tuple(args.overrides), display_every=30.0)
    cube_config.prepare_out(cfg)
    ce.make_demos(cfg)
    assert cube_practice.run_practice(cfg, 0) == "finished"
    assert cube_practice.practised_steps(cfg.practice_dir(0)) == 200
    longer = dataclasses.replace(cfg, steps=350)
    assert cube_practice.run_practice(longer, 0) == "finished"
    run_dir = cfg.practice_dir(0)
    assert cube_practice.practised_steps(run_dir) == 350
    assert "--resume" in (run_dir / "logs" / "learner.log").read_text()
    assert journal_interventions(run_dir, obs="state", seed=0).turns >= 1
    assert (run_dir / "evals" / "step-00000200.json").is_file() and (run_dir / "evals" / "step-00000350.json").is_file()


def test_refuses_bad_out_dirs_and_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert ce.main(["--out", str(a_file)]) == 1
    assert "not a directory" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert ce.main(["--out", str(foreign)]) == 1
    assert "no cube-ood run wrote" in capsys.readouterr().err
    assert ce.main(["--out", str(tmp_path / "x"), "--seeds", "1", "1"]) == 1
    assert "distinct" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ce.main(["--out", str(tmp_path / "x"), "--trials", "0"])
    with pytest.raises(SystemExit):
        ce.main(["--out", str(tmp_path / "x"), "--obs", "depth"])
    assert not (tmp_path / "x").exists()


def test_with_the_emulated_operator_every_closed_backward_turn_is_an_intervention(tmp_path: Path) -> None:
    """The operator resets the scene when a backward turn ends with the cube lost, which closes the
    segment right after the turn's last step: every such closing is a failed turn and an
    intervention (consecutive ones too), read from the journal's structure alone, so a pixel
    journal counts the same; a turn cut short by a restart is not judged."""
    segments = [_turn(FORWARD, IN) + _turn(BACKWARD, FAR),                                # lost: reset
                _turn(FORWARD, IN) + _turn(BACKWARD, HELD),                               # lost again: reset
                _turn(FORWARD, IN) + _turn(BACKWARD, IN) + _turn(FORWARD, IN) + _turn(BACKWARD, IN, 2),  # in reach; cut
                _turn(FORWARD, IN) + _turn(BACKWARD, IN) + _turn(FORWARD, IN, 1)]         # in reach
    journal = IngestJournal.open(JournalConfig(directory=tmp_path / "journal", retention_steps=10_000, fsync=False))
    position = 0
    for k, rows in enumerate(segments):
        batch = _batch("s", position, rows, first=True, last=k < len(segments) - 1)
        journal.append(position, batch)
        position += batch.size
    journal.close()
    for obs in ("state", "pixels"):
        report = journal_interventions(tmp_path, obs=obs, seed=0, operator_turn=3)
        assert (report.turns, report.failed_turns, report.interventions) == (4, 2, 2), obs
        assert report.first_failure == 5 and not report.out_of_reach_at_end and report.operator
        assert report.source == ("state" if obs == "state" else "operator")
    # without the operator's structure, the same journal judges only the in-segment turn ends
    plain = journal_interventions(tmp_path, obs="state", seed=0)
    assert (plain.turns, plain.failed_turns, plain.interventions) == (2, 0, 0)


def test_a_turn_end_needs_a_cube_or_a_verdict() -> None:
    assert TurnEnd(0, None, lost=True).failed() and not TurnEnd(0, None, lost=False).failed()
    assert TurnEnd(0, FAR).failed() and not TurnEnd(0, IN).failed()
    with pytest.raises(Exception, match="neither the cube nor a verdict"):
        TurnEnd(3, None).failed()
