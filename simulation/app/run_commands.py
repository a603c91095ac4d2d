"""The command lines ``resetfree-sim`` starts its children with (learner, runtimes, BC
baseline) and the run-directory facts they depend on (spill directories, checkpoints, each
runtime's share of the steps)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from learner.config import LearnerConfig
from simulation.app.processes import python_module
from simulation.app.run_setup import ANY_LOOPBACK_PORT, RunSpec, bc_seed_count, reset_interval

logger = logging.getLogger(__name__)


def steps_per_runtime(total: int, done: int, robots: int) -> int:
    """Returns each runtime's ``--max-steps`` so ``robots`` runtimes bring ``done`` to ``total``
    (0 when nothing is left)."""
    left = max(0, total - done)
    return math.ceil(left / robots) if left else 0


def learner_command(spec: RunSpec, cfg: LearnerConfig, demos: Path, *, resume: bool) -> list[str]:
    """Returns the learner's command line (every port 0; endpoints in ``RUN_DIR/endpoints.json``)."""
    any_port = ANY_LOOPBACK_PORT  # as config.toml records
    argv = [*python_module(spec.learner_module), "--profile", cfg.profile, "--config", str(spec.run_dir / "config.toml"),
            "--demos", str(demos), "--bind", any_port, "--weights-bind", any_port, "--control-bind", any_port,
            "--mode", "lockstep", "--device", spec.device, "--threads", str(spec.learner_threads),
            "--seed", str(spec.seed), "--log-level", spec.log_level]
    return argv + (["--resume", str(spec.run_dir)] if resume else ["--run-dir", str(spec.run_dir)])


def runtime_spill_dir(run_dir: Path, index: int) -> Path:
    """Returns runtime ``index``'s spill directory (session id, seq, endpoints.json)."""
    return run_dir / "runtimes" / f"robot{index}"


def runtime_command(spec: RunSpec, index: int, uplink: str, *, max_steps: int, switch_every: int) -> list[str]:
    """Returns runtime ``index``'s command line (lock-step sim robot, control port 0)."""
    argv = [*python_module(spec.runtime_module), "--robot", f"sim:{spec.task}", "--learner", uplink,
            "--obs", spec.obs, "--lockstep", "--spill-dir", str(runtime_spill_dir(spec.run_dir, index)),
            "--control-bind", "tcp://127.0.0.1:0", "--seed", str(spec.seed + index),
            "--switch-every", str(switch_every), "--max-steps", str(max_steps), "--log-level", spec.log_level,
            # lock-step: the learner sets the pace and jitter does not matter; a real-time
            # priority would only take CPU from the learner on a small machine, and polling
            # idle CPUs would only cost power
            "--priority", "none", "--cpu-latency-us", "off"]
    # always explicit (0: never), so the runtime's own default never decides a run's schedule
    argv += ["--reset-every", str(reset_interval(spec) or 0)]
    argv += ["--operator"] if spec.operator else []
    return argv + (["--hz", f"{spec.hz:g}"] if spec.hz is not None else [])


def bc_command(spec: RunSpec, demos: Path) -> list[str]:
    """Returns the BC baseline child's command line (writes ``RUN_DIR/bc.json``)."""
    return [*python_module("simulation.app.bc_baseline"), "--task", spec.task, "--obs", spec.obs,
            "--demos", str(demos), "--config", str(spec.run_dir / "config.toml"),
            "--out", str(spec.run_dir / "bc.json"), "--steps", str(spec.bc_steps),
            "--episodes", str(spec.eval_episodes), "--eval-seed", str(EVAL_SEED), "--seed", str(spec.seed),
            "--seeds", str(bc_seed_count(spec)), "--log-level", spec.log_level]


EVAL_SEED = 10_000
"""Evaluation episode i of every evaluation (and of BC) resets with ``EVAL_SEED + i``."""


def has_checkpoint(run_dir: Path) -> bool:
    """Returns whether the learner left a checkpoint in ``run_dir``."""
    from learner.checkpoint import checkpoint_dirs

    try:
        return bool(checkpoint_dirs(run_dir))
    except OSError as e:
        logger.debug("no checkpoints in %s: %s", run_dir, e)
        return False
