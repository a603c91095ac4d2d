"""End to end: ``resetfree-sim`` runs the real learner and a real lock-step runtime as OS
processes for a few hundred steps, publishes weights, evaluates them and exits cleanly."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from learner.config import LearnerConfig
from simulation.app.evaluator import read_evals

REPO = Path(__file__).resolve().parents[2]
STEPS = 300

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("learner.__main__") is None or importlib.util.find_spec("runtime.__main__") is None,
    reason="the learner or runtime process entry point is not in this tree",
)

TINY = [  # small networks and batches: the point is the plumbing, not learning
    "network.hidden_dim=32", "network.num_critics=2", "agent.batch_size=32", "replay.batch_size=32",
    "replay.demo_per_batch=8", "vice.batch_size=32", "vice.hidden_dim=32", "vice.updates_every=100",
    "vice.updates_per_round=1", "medal.batch_size=32", "medal.hidden_dim=32", "medal.updates_every=100",
    "medal.updates_per_round=1", "schedule.seed_frames=100", "service.publish_every=20",
    "service.checkpoint_every=100000", "agent.encoder_bf16=false",
]


@pytest.mark.timeout(240)
def test_sim_smoke(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # no --task / --obs: the newcomer's default run (door, state, the shipped EARL demo)
    argv = [sys.executable, "-m", "simulation.app", "--steps", str(STEPS),
            "--eval-every", "200", "--eval-episodes", "2", "--bc-steps", "50", "--run-dir", str(run),
            "--log-level", "INFO"]
    for item in TINY:
        argv += ["--set", item]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    # door's 300-step evaluations with video: 88 s here beside a learning run
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=230)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((run / "logs").glob("*.log")))
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{logs}"

    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome["reason"] == "finished" and outcome["ok"]
    assert outcome["env_steps"] >= STEPS and outcome["updates"] > 0
    # lock-step: UTD exactly 1 past the 100 seed frames, every owed update done by the end
    assert outcome["updates"] == outcome["env_steps"] - 100, outcome
    assert all(code == 0 for code in outcome["exit_codes"].values()), outcome["exit_codes"]

    # the run directory
    assert LearnerConfig.from_toml(run / "config.toml").network.hidden_dim == 32
    assert json.loads((run / "run.json").read_text())["task"] == "door"
    assert {"learner.log", "runtime0.log", "bc.log"} <= {p.name for p in (run / "logs").iterdir()}
    assert len(list((run / "demos").glob("*.npz"))) == 2
    bc = json.loads((run / "bc.json").read_text())
    assert 0.0 <= bc["success_rate"] <= 1.0 and len(bc["per_seed"]) == 3  # state mode: three BC seeds
    assert (run / "curves.png").stat().st_size > 0
    assert list((run / "videos").glob("eval_*"))
    assert any(p.is_dir() and p.name.startswith("ckpt-") for p in run.iterdir()), "no checkpoint on SIGTERM"

    # weights were published and evaluated: every row names the forward actor's version
    evals = read_evals(run / "evals.csv")
    assert evals and all(r.weights_version >= 0 for r in evals) and len(evals[-1].returns) == 2
    assert evals[-1].step >= STEPS
