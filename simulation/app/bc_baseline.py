"""The behaviour-cloning baseline of a run: ``learner.bc`` on the forward demos, evaluated
by the same deployed-policy protocol as the learner's forward policy.

The actor has the run's architecture (``[network]`` of the resolved learner config), so BC
and RL differ only in how the weights are trained. The result is written to ``bc.json``.
The orchestrator runs it once per run in a child process:

    python -m simulation.app.bc_baseline --task tabletop --demos RUN/demos --config RUN/config.toml \
        --out RUN/bc.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from learner.bc import BCConfig, train_bc_from_demos
from learner.config import LearnerConfig
from learner.errors import LearnerError
from learner.networks import NetworkConfig
from protocol.atomic import write_json_atomic
from protocol.demos import Demos, concatenate, load_demos
from simulation.evaluation import evaluate
from simulation.app.evaluator import load_policy, task_spec
from simulation.tasks.base import ObsMode, SimulationError

logger = logging.getLogger(__name__)


class BaselineError(SimulationError):
    """No usable forward demos, or demos that do not match the task and observation mode."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class BaselineConfig:
    """What the BC baseline trains on and how it is evaluated."""

    task: str
    """Task to evaluate on."""
    obs: ObsMode = "state"
    """Observation mode of demos and policy."""
    episodes: int = 10
    """Evaluation episodes (the run's ``--eval-episodes``)."""
    eval_seed: int = 10_000
    """Episode i resets with ``eval_seed + i`` (the run's evaluator uses the same starts)."""
    bc: BCConfig = dataclasses.field(default_factory=BCConfig)
    """Optimisation of the BC actor; its ``seed`` is the first seed."""
    seeds: int = 1
    """BC actors trained, with seeds ``bc.seed``, ``bc.seed + 1``, …; the baseline is their
    mean success. With a handful of demos one seed is a coin toss (peg, EARL's first five
    demos: 0.35 and 0.75 for seeds 0 and 1, docs/learning.md)."""

    def __post_init__(self) -> None:
        for name in ("episodes", "seeds"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"BaselineConfig.{name} must be a positive int, got {value!r}")
        if self.obs not in ("state", "pixels"):
            raise ValueError(f"BaselineConfig.obs must be state or pixels, got {self.obs!r}")


def forward_demos(demos_dir: Path, task: str, obs: ObsMode) -> Demos:
    """Loads and concatenates every ``*.npz`` in ``demos_dir`` whose meta says forward.

    Returns the demos. Raises BaselineError when none is forward or a file names another
    task or observation mode; DemoFormatError for a malformed file. Blocks on disk I/O.
    """
    parts = []
    for path in sorted(demos_dir.glob("*.npz")):
        demos = load_demos(path)
        if demos.meta.direction != "forward":
            continue
        if demos.meta.obs_mode != obs or demos.meta.task != task:
            raise BaselineError(f"{path}: demos of {demos.meta.task}/{demos.meta.obs_mode}, run is {task}/{obs}")
        parts.append(demos)
    if not parts:
        raise BaselineError(f"no forward demos in {demos_dir}")
    return parts[0] if len(parts) == 1 else concatenate(parts)


def run_baseline(cfg: BaselineConfig, demos_dir: Path, net_config: NetworkConfig) -> dict[str, Any]:
    """Trains ``cfg.seeds`` BC actors on the forward demos and evaluates each on the same
    starts. Blocks for training and evaluation (about a minute per seed in state mode here).

    Returns the ``bc.json`` content: ``success_rate`` and ``mean_return`` (means over the
    seeds), ``returns`` (every episode, seed by seed), ``per_seed`` (``seed``,
    ``success_rate``, ``mean_return`` of each), ``seeds``, ``episodes``, ``bc_steps``,
    ``train_s``, ``eval_s`` (totals), ``task``, ``obs``, ``demo_episodes``,
    ``demo_transitions``. Raises BaselineError (see :func:`forward_demos`).
    """
    demos = forward_demos(demos_dir, cfg.task, cfg.obs)
    obs_spec, action_dim = task_spec(cfg.task, cfg.obs)
    if demos.action_dim != action_dim:
        raise BaselineError(f"demo actions have {demos.action_dim} dims, {cfg.task} takes {action_dim}")
    per_seed: list[dict[str, Any]] = []
    returns: list[float] = []
    train_s = eval_s = 0.0
    for offset in range(cfg.seeds):
        bc = dataclasses.replace(cfg.bc, seed=cfg.bc.seed + offset)
        started = time.perf_counter()
        state = train_bc_from_demos(demos, obs_spec, net_config, bc)
        train_s += time.perf_counter() - started
        policy = load_policy(obs_spec, action_dim, net_config, state)
        result = evaluate(policy, cfg.task, episodes=cfg.episodes, obs=cfg.obs, seed=cfg.eval_seed)
        eval_s += result.wall_s
        returns.extend(result.returns)
        per_seed.append({"seed": bc.seed, "success_rate": result.success_rate,
                         "mean_return": float(sum(result.returns) / len(result.returns))})
        logger.info("BC baseline on %s/%s, seed %d (%d of %d): success %.2f after %d steps", cfg.task, cfg.obs,
                    bc.seed, offset + 1, cfg.seeds, result.success_rate, bc.steps)
    return {"success_rate": sum(p["success_rate"] for p in per_seed) / len(per_seed),
            "mean_return": float(sum(returns) / len(returns)), "returns": returns, "per_seed": per_seed,
            "seeds": cfg.seeds, "episodes": cfg.episodes, "bc_steps": cfg.bc.steps,
            "train_s": round(train_s, 3), "eval_s": round(eval_s, 3), "task": cfg.task, "obs": cfg.obs,
            "demo_episodes": demos.num_episodes, "demo_transitions": demos.num_transitions}


def bc_seeds_text(result: dict[str, Any]) -> str:
    """Returns ``", mean of 3 seeds: 35%, 75%, 55%"`` for a several-seed ``bc.json``, else ``""``."""
    per_seed = result.get("per_seed") or []
    if len(per_seed) < 2:
        return ""
    rates = ", ".join(f"{p['success_rate']:.0%}" for p in per_seed)
    return f", mean of {len(per_seed)} seeds: {rates}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulation.app.bc_baseline",
                                     description="BC baseline: train on forward demos, evaluate, write JSON.")
    parser.add_argument("--task", required=True, help="tabletop, door, peg or cube")
    parser.add_argument("--obs", choices=("state", "pixels"), default="state", help="observation mode")
    parser.add_argument("--demos", type=Path, required=True, help="directory of demo .npz files")
    parser.add_argument("--config", type=Path, default=None,
                        help="learner TOML whose [network] the BC actor uses (default: the sim profile)")
    parser.add_argument("--out", type=Path, required=True, help="output JSON (bc.json)")
    parser.add_argument("--steps", type=int, default=10_000, help="BC gradient steps")
    parser.add_argument("--batch-size", type=int, default=256, help="demo steps per gradient step")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes")
    parser.add_argument("--eval-seed", type=int, default=10_000, help="episode i resets with this + i")
    parser.add_argument("--seed", type=int, default=0, help="first BC initialisation and sampling seed")
    parser.add_argument("--seeds", type=int, default=1, help="BC actors trained (seeds SEED, SEED+1, ...); "
                        "the baseline is their mean success (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--log-level", default="INFO", help="logging level")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the baseline CLI. Returns 0, or 1 with one line on stderr on a reported error."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    try:
        learner_cfg = LearnerConfig.from_toml(args.config) if args.config else LearnerConfig()
        bc = BCConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                      log_every=max(1, args.steps // 5))
        cfg = BaselineConfig(task=args.task, obs=args.obs, episodes=args.episodes, eval_seed=args.eval_seed, bc=bc,
                             seeds=args.seeds)
        result = run_baseline(cfg, args.demos, learner_cfg.network)
        write_json_atomic(args.out, result)
    except (ValueError, SimulationError, LearnerError, OSError) as e:
        print(f"bc_baseline: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"success_rate": result["success_rate"], "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
