"""What a ``resetfree-bench cube-ood`` experiment is (:mod:`simulation.drills.cube_experiment`):
its settings (:class:`CubeExperimentConfig`), the layout of its out directory, and the check
that a rerun continues the experiment its ``--out`` holds (:func:`prepare_out`)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from protocol.atomic import write_json_atomic

logger = logging.getLogger(__name__)

TASK = "cube"


class ExperimentError(ValueError):
    """A bad ``--out`` directory or flag, or an output that must not be overwritten."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class CubeExperimentConfig:
    """One cube OOD experiment (``resetfree-bench cube-ood``)."""

    out: Path
    """Output directory: everything the experiment writes, and what a rerun continues from."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of the practice runs and of the BC policies (the paper: 3)."""
    steps: int = 300_000
    """Autonomous practice steps per seed (the paper: ~300k)."""
    eval_every: int = 25_000
    """Learner updates between checkpoints, each evaluated on both splits (≈ env steps)."""
    trials: int = 20
    """Evaluation trials per split and policy (the paper: 20)."""
    obs: str = "state"
    """``state`` or ``pixels`` (wrist + third-person cameras and proprio: the paper's, on a GPU)."""
    demos: int = 50
    """Forward demos (ID split) and backward demos from the scripted experts (the paper: 50)."""
    demo_seed: int = 0
    """Seed of the demos' resets."""
    bc_steps: int = 10_000
    """BC gradient steps per seed."""
    bc_batch_size: int = 256
    """Demo transitions per BC step (``learner.bc``'s default; a smaller one makes a pixel BC
    affordable on a CPU, 0.34 s a step at 64 against 1.2 s at 256 on 2 cores)."""
    operator: bool = True
    """The practice runs' runtimes emulate the person who watched the paper's reset-free runs:
    when a backward turn ends with the cube out of reach, they reset the scene and count an
    intervention (``RunSpec.operator``). Without it, one lost cube ends the practice for good
    (measured: the first backward turn of a run, after the 2,000 random seed steps)."""
    overrides: tuple[str, ...] = ()
    """Learner ``--set KEY=VALUE`` overrides, applied over the ``robot`` profile (tests, tuning)."""
    device: str = "auto"
    """Learner torch device."""
    display_every: float = 30.0
    """Seconds between the practice runs' progress lines."""

    def __post_init__(self) -> None:
        for name in ("steps", "eval_every", "trials", "demos", "bc_steps", "bc_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ExperimentError(f"CubeExperimentConfig.{name} must be a positive int, got {value!r}")
        if self.obs not in ("state", "pixels"):
            raise ExperimentError(f"CubeExperimentConfig.obs must be state or pixels, got {self.obs!r}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ExperimentError(f"CubeExperimentConfig.seeds must be distinct and not empty, got {self.seeds!r}")

    def settings(self) -> dict[str, Any]:
        """Returns what decides the results (recorded in ``OUT/experiment.json``; a rerun must match)."""
        return {"task": TASK, "seeds": list(self.seeds), "steps": self.steps, "eval_every": self.eval_every,
                "trials": self.trials, "obs": self.obs, "demos": self.demos, "demo_seed": self.demo_seed,
                "bc_steps": self.bc_steps, "bc_batch_size": self.bc_batch_size, "overrides": list(self.overrides), "profile": "robot",
                "reset": "never", "operator": self.operator}

    def practice_dir(self, seed: int) -> Path:
        """Returns the run directory of practice seed ``seed``."""
        return self.out / "practice" / f"seed{seed}"

    def run_overrides(self) -> tuple[str, ...]:
        """Returns the learner overrides of a practice run: a checkpoint every ``eval_every``
        updates, then the user's (the task's preset, ``simulation/configs/cube_state.toml``,
        gives the discriminators the state vector in state mode)."""
        return (f"service.checkpoint_every={self.eval_every}", *self.overrides)


def prepare_out(cfg: CubeExperimentConfig) -> bool:
    """Checks ``cfg.out`` and records the settings; returns whether the experiment is already
    complete (its ``results.json`` says so). Raises ExperimentError for a file, a directory
    another command wrote, or one started with other settings (never overwritten)."""
    out = cfg.out
    if out.exists() and not out.is_dir():
        raise ExperimentError(f"--out {out}: exists and is not a directory")
    record = out / "experiment.json"
    if out.is_dir() and any(out.iterdir()) and not record.is_file():
        raise ExperimentError(f"--out {out}: a non-empty directory that no cube-ood run wrote (no experiment.json); "
                              "choose a new directory")
    if record.is_file():
        try:
            saved = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ExperimentError(f"--out {out}: unreadable {record}: {e}") from e
        differ = {k: (saved.get(k), v) for k, v in cfg.settings().items() if saved.get(k) != v}
        if differ:
            text = "; ".join(f"{k}: was {a!r}, now {b!r}" for k, (a, b) in differ.items())
            raise ExperimentError(f"--out {out} holds an experiment with other settings ({text}); rerun with the "
                                  "same flags to continue it, or choose a new --out")
        results = out / "results.json"
        if results.is_file():
            try:
                return bool(json.loads(results.read_text(encoding="utf-8")).get("complete"))
            except (OSError, ValueError) as e:
                raise ExperimentError(f"--out {out}: unreadable {results}: {e}") from e
        return False
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, cfg.settings())
    return False
