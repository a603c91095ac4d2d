"""The learning suite: per-seed numbers, pending jobs, results files, and one tiny resumable run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from simulation.drills import bench_suite
from simulation.drills.bench_suite import SuiteSpec, pending, run_one
from simulation.drills.suite_results import collect, markdown_table, seed_score, write_results

torch.set_num_threads(1)

TINY = (
    "network.hidden_dim=32", "network.num_critics=2",
    "agent.batch_size=32", "replay.batch_size=32", "replay.demo_per_batch=8", "replay.capacity=2000",
    "vice.batch_size=32", "vice.hidden_dim=16", "vice.updates_every=50", "vice.updates_per_round=2",
    "medal.batch_size=32", "medal.hidden_dim=16", "medal.updates_every=50", "medal.updates_per_round=2",
    "schedule.seed_frames=100", "schedule.bc_batch_size=32", "switch.interval=60",
)


def _curve(path: Path, points: list[tuple[int, float]]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"env_steps": s, "updates": s, "train_minutes": 0.1, "success_rate": r, "metrics": {}})
             for s, r in points]
    (path / "curve.jsonl").write_text("\n".join(lines) + "\n")


def test_seed_score_is_the_mean_of_the_last_three_evaluations() -> None:
    points = [{"success_rate": r} for r in (0.0, 1.0, 0.5, 0.7, 0.9)]
    assert seed_score(points) == pytest.approx(0.7)
    assert seed_score(points[:2]) == pytest.approx(0.5) and seed_score([]) is None


def test_pending_results_and_table(tmp_path: Path) -> None:
    spec = SuiteSpec(out=tmp_path, tasks=("door",), seeds=(0, 1), steps=30)
    assert pending(spec) == [("bc", "door"), ("run", ("door", 0)), ("run", ("door", 1))]
    _curve(tmp_path / "door" / "seed0", [(10, 0.2), (20, 0.4), (30, 0.6)])
    _curve(tmp_path / "door" / "seed1", [(10, 1.0)])
    (tmp_path / "door" / "bc.json").write_text(json.dumps({"success": 0.5, "success_seeds": [0.4, 0.6]}))
    assert pending(spec) == [("run", ("door", 1))]  # seed 0 reached its steps, seed 1 resumes
    results = collect(spec)
    door = results["tasks"]["door"]
    assert door["seeds"]["0"]["score"] == pytest.approx(0.4) and door["mean"] == pytest.approx(0.7)
    assert door["complete"] is False
    table = markdown_table(results)
    assert "| door | 0: 0.40 @ 0k, 1: 1.00 @ 0k | 0.70 (running) | 0.40, 0.60 | 0.50 | 0.95 |" in table
    write_results(spec)
    assert (tmp_path / "suite.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "results.json").read_text())["tasks"]["door"]["goal"] == 0.95


def test_one_run_resumes_to_its_step_target(tmp_path: Path) -> None:
    spec = SuiteSpec(out=tmp_path, tasks=("tabletop",), seeds=(0,), steps=240, eval_every=120, eval_episodes=1,
                     overrides=TINY)
    run_dir = tmp_path / "tabletop" / "seed0"
    short = SuiteSpec(**{**spec.__dict__, "steps": 120})
    first = run_one("tabletop", 0, run_dir, short)
    assert first["env_steps"] == 120 and (run_dir / "curve.jsonl").is_file()
    result = run_one("tabletop", 0, run_dir, spec)  # the same directory: it continues
    assert result["env_steps"] == 240 and [p["env_steps"] for p in result["curve"]] == [120, 240]
    assert pending(spec) == [("bc", "tabletop")]


def test_the_suite_is_reached_from_the_learning_benchmark(monkeypatch) -> None:
    seen = []
    monkeypatch.setattr(bench_suite, "main", lambda argv: seen.append(argv) or 0)
    from simulation.drills import bench_learning

    assert bench_learning.main(["--suite", "--tasks", "door"]) == 0 and seen == [["--tasks", "door"]]


def test_a_run_stopped_by_sigterm_checkpoints_where_it_is(tmp_path: Path) -> None:
    # The suite stops its children with SIGTERM; a child keeps what it did since its last evaluation.
    import signal
    import subprocess
    import sys
    import time

    argv = [sys.executable, "-m", "simulation.drills.bench_suite", "--out", str(tmp_path), "--steps", "100000",
            "--eval-every", "150", "--eval-episodes", "1", "--child-run", "tabletop", "0"]
    for item in TINY:
        argv += ["--set", item]
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "tabletop" / "seed0"
    deadline = time.monotonic() + 120
    while not (run_dir / "curve.jsonl").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 0, err[-2000:]
    steps = sorted(int(p.name.split("-")[1]) for p in run_dir.glob("ckpt-*"))
    assert steps and steps[-1] > 150  # a checkpoint at the stop, past the last evaluation


def test_fixed_goal_reaches_the_children_and_the_results(tmp_path: Path) -> None:
    args = bench_suite.parser().parse_args(["--out", str(tmp_path), "--fixed-goal", "--tasks", "tabletop"])
    assert args.fixed_goal
    held = SuiteSpec(out=tmp_path, tasks=("tabletop",), goal_per_turn=False)
    argv = bench_suite._child_argv("run", ("tabletop", 0), held)
    assert "--fixed-goal" in argv
    assert "--fixed-goal" not in bench_suite._child_argv("run", ("tabletop", 0), SuiteSpec(out=tmp_path))
    assert collect(held)["goal_per_turn"] is False and collect(SuiteSpec(out=tmp_path))["goal_per_turn"] is True


def test_reset_every_reaches_the_children_the_practice_config_and_the_results(tmp_path: Path, monkeypatch) -> None:
    args = bench_suite.parser().parse_args(["--out", str(tmp_path), "--reset-every", "400"])
    assert args.reset_every == 400
    spec = SuiteSpec(out=tmp_path, tasks=("tabletop",), reset_every=400)
    argv = bench_suite._child_argv("run", ("tabletop", 0), spec)
    assert argv[argv.index("--reset-every") + 1] == "400"
    assert "--reset-every" not in bench_suite._child_argv("run", ("tabletop", 0), SuiteSpec(out=tmp_path))
    assert bench_suite.parser().parse_args(argv[3:]).reset_every == 400  # the child parses it back
    assert collect(spec)["reset_every"] == 400 and collect(SuiteSpec(out=tmp_path))["reset_every"] is None
    with pytest.raises(ValueError, match="reset_every"):
        SuiteSpec(out=tmp_path, reset_every=0)
    seen = []

    class Result:
        def to_dict(self) -> dict:
            return {}

    import simulation.app.practice as practice_module
    monkeypatch.setattr(practice_module, "practice", lambda cfg, pcfg, demos, should_stop: seen.append(pcfg) or Result())
    monkeypatch.setattr(bench_suite.signal, "signal", lambda *_: None)  # keep pytest's own handlers
    run_one("tabletop", 0, tmp_path / "tabletop" / "seed0", spec)
    assert seen[0].reset_every == 400 and seen[0].reset_interval == 400
