"""Steps 3 and 4 of ``resetfree-bench cube-ood`` (:mod:`simulation.drills.cube_experiment`): the
practice runs. Each seed is a ``resetfree-sim`` run (:func:`run_spec`) in
``OUT/practice/seed<S>/``, resumed from its checkpoint when stopped; the forward policy of every
learner checkpoint is kept as ``snapshots/step-<N>/`` while it runs and evaluated on both splits
into ``evals/step-<N>.json``; its interventions are counted from its ingest journal into
``interventions.json`` (:mod:`simulation.drills.cube_interventions`)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from protocol.atomic import write_json_atomic
from simulation.drills.cube_config import TASK, CubeExperimentConfig
from simulation.drills.cube_results import evaluate_source, read_json

logger = logging.getLogger(__name__)


def run_spec(cfg: CubeExperimentConfig, seed: int, *, resume: bool) -> Any:
    """Returns the ``resetfree-sim`` :class:`RunSpec` of practice seed ``seed``: cube, the
    robot profile, the shared demos, no environment reset (``reset_every=0``: never), no BC
    child (BC is step 2), no videos."""
    from simulation.app.run_setup import RunSpec

    return RunSpec(run_dir=cfg.practice_dir(seed), task=TASK, obs=cfg.obs, steps=cfg.steps, robots=1, seed=seed,
                   resume=resume, profile="robot", overrides=cfg.run_overrides(), demos=cfg.out / "demos",
                   eval_every=cfg.eval_every, eval_episodes=min(10, cfg.trials), video=False, bc=False,
                   reset_every=0, operator=cfg.operator, device=cfg.device, display_every=cfg.display_every)


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


def switch_interval(run_dir: Path) -> int:
    """Returns the steps per agent turn of a practice run (its learner config's
    ``switch.interval``, which the orchestrator gives the runtime). Raises OSError, ValueError
    or KeyError when ``RUN_DIR/config.json`` is missing or lacks it."""
    return int(json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["config"]["switch"]["interval"])


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
        turn = switch_interval(run_dir) if cfg.operator else None
        report = journal_interventions(run_dir, obs=cfg.obs, seed=seed, operator_turn=turn).to_dict()
    except (InterventionError, OSError, ValueError, KeyError) as e:
        logger.error("interventions of seed %d not counted: %s", seed, e)
        return None
    write_json_atomic(path, {"env_steps": steps, **report})
    logger.info("practice seed %d: %d interventions (%d of %d backward turns ended out of reach)", seed,
                report["interventions"], report["failed_turns"], report["turns"])
    return {"env_steps": steps, **report}
