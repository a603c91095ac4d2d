"""``resetfree-bench cube-ood``: the paper's cube-grasp OOD experiment, end to end, resumable.

MEDAL++'s real-robot headline: from 50 demonstrations, BC and the practised policy both grasp
the cube from in-distribution (ID) starts, but from out-of-distribution (OOD) starts BC
succeeds 20% of the time and the policy practised for ~300k autonomous steps 75%. Here the
simulated cube twin stands in for the Franka, and the same steps a user with a robot takes run
in order, each skipped when its output already exists (so a stopped command, rerun with the
same ``--out``, continues where it stopped):

1. ``OUT/demos/``: 50 forward demos on the ID split and 50 backward demos from the scripted
   experts, through ``resetfree-demos generate``'s own function;
2. ``OUT/bc/seed<S>/``: BC (``learner.bc``, as ``resetfree-eval --policy bc:DEMOS``) per seed,
   evaluated on both splits;
3. ``OUT/practice/seed<S>/``: a ``resetfree-sim`` run per seed (learner + lock-step runtime
   as two processes, the ``robot`` profile, the environment never reset) up to ``--steps``,
   resumed from its checkpoint when stopped; every learner checkpoint (one per
   ``--eval-every`` updates, and one at each stop) is kept as a small forward-policy snapshot
   (``snapshots/step-<N>/``) and evaluated on both splits (``evals/step-<N>.json``);
4. ``interventions.json`` per seed (:mod:`simulation.drills.cube_interventions`);
5. ``OUT/results.json``, ``OUT/results.md`` (split × method × seed, means, the paper's
   numbers) and ``OUT/ood_vs_steps.png``.

Evaluation episode i of every policy starts from the same reset (seed ``EVAL_SEED + i``) with
``simulation.evaluation.evaluate``, so BC and the practised policy face the same starts.

    resetfree-bench cube-ood --out runs/cube-ood
    resetfree-bench cube-ood --out runs/cube-ood-px --obs pixels --device cuda
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from protocol.atomic import write_json_atomic
from simulation.cli import at_least, doc_help, positive_float
from simulation.drills.cube_config import TASK, CubeExperimentConfig, ExperimentError, prepare_out
from simulation.drills.cube_practice import count_run_interventions, run_practice, run_spec
from simulation.drills.cube_results import SPLITS, evaluate_source, markdown, read_json, write_results

logger = logging.getLogger(__name__)


# ============================================================================ 1. demos
def make_demos(cfg: CubeExperimentConfig) -> Path:
    """Writes ``OUT/demos/cube_{forward,backward}.npz`` (kept when there) with
    ``resetfree-demos generate``'s function; returns the directory. Blocks on the experts."""
    from protocol.demos import save_demos
    from simulation.tools.demos_cli import generate

    out = cfg.out / "demos"
    out.mkdir(parents=True, exist_ok=True)
    for direction in ("forward", "backward"):
        path = out / f"{TASK}_{direction}.npz"
        if path.exists():
            continue
        demos = generate(TASK, direction, episodes=cfg.demos, obs=cfg.obs, seed=cfg.demo_seed, split="id")
        save_demos(path, demos)
        logger.info("demos: wrote %s (%d episodes, %d transitions, %d successful)", path, demos.num_episodes,
                    demos.num_transitions, int(np.sum(demos.episode_success)))
    return out


# ============================================================================ 2. BC
def run_bc(cfg: CubeExperimentConfig, demos_dir: Path, seed: int) -> dict[str, Any]:
    """Trains BC (seed ``seed``) on the forward demos as ``resetfree-eval --policy bc:DEMOS``
    does and evaluates it; ``OUT/bc/seed<S>/eval.json`` (kept when there). Blocks."""
    from learner.bc import BCConfig
    from protocol.demos import load_demos
    from simulation.tools.policies import read_policy, train_bc_policy

    out = cfg.out / "bc" / f"seed{seed}"
    done = read_json(out / "eval.json")
    if done is not None:
        return done
    policy_dir = out / "bc-policy"
    if any(policy_dir.glob("ckpt-*")):
        source = read_policy(policy_dir)
    else:
        demos_path = demos_dir / f"{TASK}_forward.npz"
        logger.info("BC seed %d: training %d steps on %s", seed, cfg.bc_steps, demos_path)
        source = train_bc_policy(load_demos(demos_path), policy_dir, net_config=network_config(cfg, seed),
                                 bc_config=BCConfig(steps=cfg.bc_steps, batch_size=cfg.bc_batch_size, seed=seed,
                                                    log_every=max(1, cfg.bc_steps // 10)),
                                 demos_path=str(demos_path))
    result = evaluate_source(source, cfg)
    write_json_atomic(out / "eval.json", result)
    logger.info("BC seed %d: success ID %.0f%%, OOD %.0f%%", seed, 100 * result["id"]["success_rate"],
                100 * result["ood"]["success_rate"])
    return result


def network_config(cfg: CubeExperimentConfig, seed: int) -> Any:
    """Returns the learner's network config of the practice runs (robot profile + overrides),
    which BC shares so both have the same encoder and actor. Raises ValueError."""
    from simulation.app.run_setup import resolve_config

    return resolve_config(run_spec(cfg, seed, resume=False)).network


# ============================================================================ the whole
def run_experiment(cfg: CubeExperimentConfig) -> tuple[dict[str, Any], str]:
    """Runs every step not yet done (module docstring); returns ``(results, reason)``,
    ``reason`` being ``finished``, ``already complete`` or why a practice run stopped.
    Blocks for hours at the defaults. Raises ExperimentError (bad out dir, other settings),
    and what the steps raise (SimulationError, LearnerError, OSError)."""
    if prepare_out(cfg):
        results = read_json(cfg.out / "results.json") or {}
        return results, "already complete"
    demos_dir = make_demos(cfg)
    for seed in cfg.seeds:
        run_bc(cfg, demos_dir, seed)
    reason = "finished"
    for seed in cfg.seeds:
        started = time.monotonic()
        reason = run_practice(cfg, seed)
        count_run_interventions(cfg, seed)
        write_results(cfg)
        logger.info("practice seed %d: %s (%.0f s)", seed, reason, time.monotonic() - started)
        if reason != "finished":
            break
    return write_results(cfg), reason


def parser() -> argparse.ArgumentParser:
    """Returns the ``resetfree-bench cube-ood`` argument parser."""
    description, epilog = doc_help(__doc__)
    p = argparse.ArgumentParser(prog="resetfree-bench cube-ood", description=description, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output directory (rerun with it to continue)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    p.add_argument("--steps", type=at_least(1), default=300_000, help="practice steps per seed (default 300000)")
    p.add_argument("--eval-every", type=at_least(1), default=25_000,
                   help="updates between evaluated checkpoints, ~env steps (default 25000)")
    p.add_argument("--trials", type=at_least(1), default=20, help="trials per split and policy (default 20; "
                   "the paper's count; 100 narrows the error bars)")
    p.add_argument("--obs", choices=("state", "pixels"), default="state", help="observations (default state)")
    p.add_argument("--demos", type=at_least(1), default=50, help="forward and backward demos (default 50)")
    p.add_argument("--bc-steps", type=at_least(1), default=10_000, help="BC gradient steps (default 10000)")
    p.add_argument("--bc-batch-size", type=at_least(1), default=256, help="demo transitions per BC step (default 256)")
    p.add_argument("--no-operator", dest="operator", action="store_false",
                   help="no emulated operator: a cube the backward agent leaves out of reach stays there (the "
                        "default emulates the person of the paper's runs, who put it back, and counts each time)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="learner override over the robot profile (repeatable; recorded, must match on rerun)")
    p.add_argument("--device", default="auto", help="learner torch device: auto, cpu, cuda (default auto)")
    p.add_argument("--display-every", type=positive_float, default=30.0,
                   help="seconds between progress lines of a practice run (default 30)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``resetfree-bench cube-ood``; prints the table and, last, one JSON line. Returns
    0 when complete, 1 on an error, 2 when a practice run stopped early (rerun to continue)."""
    args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from learner.errors import LearnerError
    from simulation.tasks.base import SimulationError

    try:
        cfg = CubeExperimentConfig(out=args.out, seeds=tuple(args.seeds), steps=args.steps,
                                   eval_every=args.eval_every, trials=args.trials, obs=args.obs, demos=args.demos,
                                   bc_steps=args.bc_steps, bc_batch_size=args.bc_batch_size, overrides=tuple(args.overrides), device=args.device,
                                   operator=args.operator,
                                   display_every=args.display_every)
        results, reason = run_experiment(cfg)
    except (ExperimentError, SimulationError, LearnerError, ValueError, OSError) as e:
        print(f"resetfree-bench cube-ood: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: rerun the same command to continue from {args.out}", file=sys.stderr)
        return 2
    print(markdown(results) if results.get("table") else "")
    if reason not in ("finished", "already complete"):
        print(f"stopped ({reason}): rerun the same command to continue from {cfg.out}")
    summary = {"out": str(cfg.out), "reason": reason, "complete": bool(results.get("complete")),
               **{f"{split}_{method}": results["table"][split][method]["mean"]
                  for split in SPLITS for method in ("bc", "practised")}}
    print(json.dumps(summary))
    return 0 if reason in ("finished", "already complete") else 2
