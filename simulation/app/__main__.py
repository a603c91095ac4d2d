"""``resetfree-sim``: watch MEDAL++ learn in simulation, with no hardware and no flags.

With no arguments it practises door closing from state observations, starting from EARL's
own door demonstrations (shipped with the package, as are peg's and tabletop's; cube
generates expert demos), starts a learner and a lock-step simulated runtime as separate
processes, evaluates the learner's forward policy every ``--eval-every`` env steps and
shows progress; Ctrl-C stops everything cleanly and leaves a run that ``--resume RUN_DIR``
continues. ``--bc`` runs only the behaviour-cloning baseline.

    resetfree-sim
    resetfree-sim --task peg --steps 300000 --robots 2
    resetfree-sim --resume runs/20260101-120000
    resetfree-sim --bc --task tabletop

To browse what the robots practised in LeRobot's viewers, export the run (needs the lerobot
extra, pip install 'resetfree[lerobot]'; safe while the run goes on):

    resetfree-demos export-run runs/20260101-120000 practice_lerobot/
"""

from __future__ import annotations

import os

# Headless offscreen rendering for evaluation videos and pixel policies, chosen before
# mujoco is imported (it reads MUJOCO_GL once); a user's own choice is kept.
if not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import argparse  # noqa: E402  (after the rendering backend is chosen)
import asyncio
import json
import logging
import sys
import time
from pathlib import Path

from learner.errors import LearnerError
from simulation.cli import at_least, doc_help, positive_float
from simulation.app.orchestrator import TASKS, Orchestrator, RunSpec
from simulation.app.run_setup import DEFAULT_OBS, DEFAULT_TASK, reset_interval, reset_source
from simulation.tasks.base import RESET_SCHEDULES, SimulationError

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """Returns the ``resetfree-sim`` argument parser."""
    description, epilog = doc_help(__doc__)
    parser = argparse.ArgumentParser(prog="resetfree-sim", description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=TASKS, default=None, help=f"task (default {DEFAULT_TASK})")
    parser.add_argument("--obs", choices=("state", "pixels"), default=None, help=f"observations (default {DEFAULT_OBS})")
    parser.add_argument("--steps", type=at_least(1), default=200_000,
                        help="total env steps, then stop cleanly (default 200000)")
    parser.add_argument("--robots", type=at_least(1), default=1,
                        help="simulated runtimes feeding the learner (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the learner; runtime i gets seed + i")
    parser.add_argument("--run-dir", type=Path, default=None, help="run directory (default runs/<timestamp>)")
    parser.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    parser.add_argument("--profile", choices=("sim", "robot"), default=None, help="learner profile (default sim)")
    parser.add_argument("--config", type=Path, default=None, help="learner TOML layered over profile and preset")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="learner config override, e.g. --set agent.lr=1e-4 (repeatable)")
    parser.add_argument("--bc", action="store_true", help="run only the BC baseline (same demos, same evaluation)")
    parser.add_argument("--demos", type=Path, default=None, help="directory of demo files (default: generate)")
    parser.add_argument("--no-video", action="store_true", help="do not write evaluation videos")
    parser.add_argument("--eval-every", type=at_least(1), default=10_000,
                        help="env steps between evaluations (default 10000)")
    parser.add_argument("--eval-episodes", type=at_least(1), default=10, help="episodes per evaluation (default 10)")
    parser.add_argument("--bc-steps", type=at_least(1), default=10_000, help="BC gradient steps (default 10000)")
    parser.add_argument("--bc-seeds", type=at_least(1), default=None,
                        help="BC actors trained, the baseline being their mean success (default 3 state, 1 pixels)")
    resets = parser.add_mutually_exclusive_group()
    resets.add_argument("--reset-every", type=at_least(0), default=None,
                        help="env steps between environment resets (default: --reset-schedule's; 0: never)")
    resets.add_argument("--reset-schedule", choices=RESET_SCHEDULES, default="paper",
                        help="the task's reset schedule: paper (default: every 10000 steps for tabletop, door "
                             "and peg, as MEDAL++; cube never) or earl (EARL's own: door and tabletop 200000, "
                             "peg 100000). The one used is recorded in RUN_DIR/run.json")
    parser.add_argument("--operator", action="store_true",
                        help="emulate the person who puts the scene back when a backward turn ends where practice "
                             "cannot go on (cube: the cube out of the hand's reach); each is counted as an "
                             "intervention (RUN_DIR/logs/runtime*.log, and the final line's interventions)")
    parser.add_argument("--minutes", type=positive_float, default=None, help="stop cleanly after this many minutes")
    parser.add_argument("--hz", type=positive_float, default=1000.0,
                        help="runtime control rate cap; in lock-step the learner sets the pace (default 1000, "
                             "the runtime's highest)")
    parser.add_argument("--device", default="auto", help="learner torch device: auto, cpu, cuda (default auto)")
    parser.add_argument("--learner-threads", type=at_least(1), default=1, help="learner torch threads (default 1)")
    parser.add_argument("--log-level", default="INFO", help="log level of the children (their logs: RUN_DIR/logs); this process shows warnings")
    return parser


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    """Builds the :class:`RunSpec` from parsed arguments. Raises ValueError on bad values."""
    run_dir = args.resume or args.run_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    return RunSpec(run_dir=run_dir, task=args.task or DEFAULT_TASK, obs=args.obs or DEFAULT_OBS, steps=args.steps,
                   robots=args.robots, seed=args.seed, resume=args.resume is not None, profile=args.profile,
                   config=args.config, overrides=tuple(args.overrides), demos=args.demos,
                   eval_every=args.eval_every, eval_episodes=args.eval_episodes, video=not args.no_video,
                   bc_steps=args.bc_steps, bc_seeds=args.bc_seeds,
                   max_wall_s=args.minutes * 60 if args.minutes else None, hz=args.hz, reset_every=args.reset_every,
                   reset_schedule=args.reset_schedule, operator=args.operator, device=args.device, learner_threads=args.learner_threads,
                   log_level=args.log_level.upper())


def reset_text(spec: RunSpec) -> str:
    """Returns the run's reset schedule in words, e.g. ``every 10,000 steps (paper)``."""
    every = reset_interval(spec)
    return f"{'never' if every is None else f'every {every:,} steps'} ({reset_source(spec)})"


def run_bc_only(spec: RunSpec) -> int:
    """``--bc``: trains and evaluates only the BC baseline into ``RUN_DIR/bc.json``; returns 0/1."""
    from learner.bc import BCConfig
    from protocol.atomic import write_json_atomic
    from simulation.app.bc_baseline import BaselineConfig, bc_seeds_text, run_baseline
    from simulation.app.orchestrator import EVAL_SEED, prepare_demos, resolve_config
    from simulation.app.run_setup import bc_seed_count

    spec.run_dir.mkdir(parents=True, exist_ok=True)
    cfg = resolve_config(spec)
    demos = prepare_demos(spec)
    baseline = BaselineConfig(task=spec.task, obs=spec.obs, episodes=spec.eval_episodes, eval_seed=EVAL_SEED,
                              bc=BCConfig(steps=spec.bc_steps, seed=spec.seed, log_every=max(1, spec.bc_steps // 10)),
                              seeds=bc_seed_count(spec))
    result = run_baseline(baseline, demos, cfg.network)
    write_json_atomic(spec.run_dir / "bc.json", result)
    print(f"BC baseline on {spec.task}/{spec.obs}: success {result['success_rate']:.0%} "
          f"({result['episodes']} episodes{bc_seeds_text(result)}) -> {spec.run_dir / 'bc.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs ``resetfree-sim``. Returns 0 on a clean run (finished or stopped by Ctrl-C),
    1 when a child failed or the setup was refused (the reason printed)."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    # The progress line is this process's interface: its own logs show only warnings unless
    # DEBUG is asked for; --log-level goes to the children (their logs are in RUN_DIR/logs).
    own_level = "DEBUG" if args.log_level.upper() == "DEBUG" else "WARNING"
    logging.basicConfig(level=own_level if not args.bc else args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        spec = spec_from_args(args)
        if args.bc:
            return run_bc_only(spec)
        orchestrator = Orchestrator(spec)
    except (ValueError, SimulationError, LearnerError, OSError) as e:
        print(f"resetfree-sim: error: {e}", file=sys.stderr)
        return 1
    print(f"run directory: {orchestrator.spec.run_dir}  (resume with --resume {orchestrator.spec.run_dir})")
    print(f"environment resets: {reset_text(orchestrator.spec)}")
    outcome = asyncio.run(orchestrator.run())
    print(json.dumps(outcome.to_dict()))
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
