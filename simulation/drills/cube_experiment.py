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
import asyncio
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from protocol.atomic import write_json_atomic
from simulation.cli import at_least, doc_help, positive_float
from simulation.drills.cube_results import SPLITS, ExperimentError, markdown, read_json, write_results

logger = logging.getLogger(__name__)

TASK = "cube"


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
                "reset": "never"}

    def practice_dir(self, seed: int) -> Path:
        """Returns the run directory of practice seed ``seed``."""
        return self.out / "practice" / f"seed{seed}"

    def run_overrides(self) -> tuple[str, ...]:
        """Returns the learner overrides of a practice run: a checkpoint every ``eval_every``
        updates, then the user's (the task's preset, ``simulation/configs/cube_state.toml``,
        gives the discriminators the state vector in state mode)."""
        return (f"service.checkpoint_every={self.eval_every}", *self.overrides)


# ============================================================================ the out dir
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


# ============================================================================ evaluation
def evaluate_source(source: Any, cfg: CubeExperimentConfig) -> dict[str, Any]:
    """Evaluates a :class:`simulation.tools.policies.PolicySource` on both splits (``cfg.trials``
    episodes each, the shared starts); returns ``{split: EvalResult dict}``. Blocks."""
    from simulation.evaluation import evaluate
    from simulation.app.run_commands import EVAL_SEED

    policy = source.build()

    def act(observation: Any) -> np.ndarray:
        return policy(observation if isinstance(observation, Mapping) else {"state": observation})

    results = {}
    for split in SPLITS:
        result = evaluate(act, TASK, episodes=cfg.trials, obs=cfg.obs, seed=EVAL_SEED, split=split)
        results[split] = {"success_rate": result.success_rate, "successes": result.successes,
                          "first_success": result.first_success, "wall_s": round(result.wall_s, 3)}
    return results


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


# ============================================================================ 3. practice
def run_spec(cfg: CubeExperimentConfig, seed: int, *, resume: bool) -> Any:
    """Returns the ``resetfree-sim`` :class:`RunSpec` of practice seed ``seed``: cube, the
    robot profile, the shared demos, no environment reset (``reset_every=0``: never), no BC
    child (BC is step 2), no videos."""
    from simulation.app.run_setup import RunSpec

    return RunSpec(run_dir=cfg.practice_dir(seed), task=TASK, obs=cfg.obs, steps=cfg.steps, robots=1, seed=seed,
                   resume=resume, profile="robot", overrides=cfg.run_overrides(), demos=cfg.out / "demos",
                   eval_every=cfg.eval_every, eval_episodes=min(10, cfg.trials), video=False, bc=False,
                   reset_every=0, device=cfg.device, display_every=cfg.display_every)


def checkpoint_steps(path: Path) -> int:
    """Returns the env steps a learner checkpoint was saved at (its ``meta.json`` counters).
    Raises OSError/ValueError/KeyError when unreadable."""
    return int(json.loads((path / "meta.json").read_text(encoding="utf-8"))["counters"]["env_steps"])


def snapshot_checkpoints(run_dir: Path) -> list[int]:
    """Keeps the forward policy of every learner checkpoint in ``run_dir`` not yet kept as
    ``snapshots/step-<env steps>/`` (a few MB each; the learner deletes old checkpoints).
    Returns the env steps of the new snapshots. Blocks on disk."""
    from learner.checkpoint import checkpoint_dirs
    from simulation.tools.policies import PolicyLoadError, read_policy, save_policy

    new = []
    for _updates, path in checkpoint_dirs(run_dir):
        try:
            steps = checkpoint_steps(path)
            target = run_dir / "snapshots" / f"step-{steps:08d}"
            if target.exists():
                continue
            source = read_policy(path)
            save_policy(target, source.state_dict, obs_spec=source.obs_spec or {}, net_config=source.net_config,
                        updates=steps, info={"task": TASK, "env_steps": steps, "checkpoint": path.name})
        except (OSError, ValueError, KeyError, PolicyLoadError) as e:  # e.g. deleted while read: next round
            logger.debug("snapshot of %s skipped: %s", path, e)
            continue
        new.append(steps)
        logger.info("practice %s: kept the forward policy at %d env steps", run_dir.name, steps)
    return new


def practised_steps(run_dir: Path) -> int:
    """Returns the env steps of the newest snapshot of ``run_dir`` (0: none)."""
    names = [p.name for p in (run_dir / "snapshots").glob("step-*")]
    return max((int(n.split("-")[1]) for n in names), default=0)


async def _practise(orchestrator: Any, run_dir: Path, poll_s: float = 5.0) -> Any:
    """Runs the orchestrator while keeping snapshots of its checkpoints as they appear."""

    async def watch() -> None:
        while True:
            await asyncio.sleep(poll_s)
            await asyncio.to_thread(snapshot_checkpoints, run_dir)

    async with asyncio.TaskGroup() as group:
        watcher = group.create_task(watch())
        try:
            outcome = await orchestrator.run()
        finally:
            watcher.cancel()
    await asyncio.to_thread(snapshot_checkpoints, run_dir)
    return outcome


def run_practice(cfg: CubeExperimentConfig, seed: int) -> str:
    """Practises seed ``seed`` up to ``cfg.steps`` (resuming its run directory), keeps the
    snapshots and evaluates each not yet evaluated. Returns ``finished`` or the reason the
    run stopped early (``interrupted``, ``failed: …``). Blocks for the whole run."""
    from simulation.app.orchestrator import Orchestrator
    from simulation.app.progress import ProgressDisplay

    run_dir = cfg.practice_dir(seed)
    reason = "finished"
    snapshot_checkpoints(run_dir)
    if practised_steps(run_dir) < cfg.steps:
        resume = (run_dir / "run.json").is_file()
        logger.info("practice seed %d: %s to %d env steps in %s", seed, "resuming" if resume else "starting",
                    cfg.steps, run_dir)
        orchestrator = Orchestrator(run_spec(cfg, seed, resume=resume),
                                    display=ProgressDisplay(interval=cfg.display_every))
        outcome = asyncio.run(_practise(orchestrator, run_dir))
        logger.info("practice seed %d: %s at %d env steps (%.0f s)", seed, outcome.reason, outcome.env_steps,
                    outcome.wall_s)
        reason = outcome.reason
    evaluate_snapshots(cfg, run_dir)
    return reason


def evaluate_snapshots(cfg: CubeExperimentConfig, run_dir: Path) -> None:
    """Evaluates every snapshot of ``run_dir`` without ``evals/step-<N>.json``. Blocks."""
    from simulation.tools.policies import read_policy

    for snapshot in sorted((run_dir / "snapshots").glob("step-*")):
        target = run_dir / "evals" / f"{snapshot.name}.json"
        if target.exists():
            continue
        result = evaluate_source(read_policy(snapshot), cfg)
        write_json_atomic(target, {"env_steps": int(snapshot.name.split("-")[1]), **result})
        logger.info("practice %s @ %s: success ID %.0f%%, OOD %.0f%%", run_dir.name, snapshot.name,
                    100 * result["id"]["success_rate"], 100 * result["ood"]["success_rate"])


def count_run_interventions(cfg: CubeExperimentConfig, seed: int) -> dict[str, Any] | None:
    """Counts seed ``seed``'s interventions into ``interventions.json`` (recounted when the
    journal grew); returns them, None when the run has no journal yet. Blocks."""
    from simulation.drills.cube_interventions import InterventionError, journal_interventions

    run_dir = cfg.practice_dir(seed)
    if not (run_dir / "journal").is_dir():
        return None
    steps = practised_steps(run_dir)
    path = run_dir / "interventions.json"
    saved = read_json(path)
    if saved is not None and saved.get("env_steps") == steps:
        return saved
    try:
        report = journal_interventions(run_dir, obs=cfg.obs, seed=seed).to_dict()
    except InterventionError as e:
        logger.error("interventions of seed %d not counted: %s", seed, e)
        return None
    write_json_atomic(path, {"env_steps": steps, **report})
    logger.info("practice seed %d: %d interventions (%d of %d backward turns ended out of reach)", seed,
                report["interventions"], report["failed_turns"], report["turns"])
    return {"env_steps": steps, **report}


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
