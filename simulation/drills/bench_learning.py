"""``resetfree-bench learning``: the full ``resetfree-sim`` pipeline for M minutes.

The same code path as ``resetfree-sim`` (:class:`simulation.app.orchestrator.Orchestrator`):
expert demos, the BC baseline, a learner process, lock-step runtime processes and
deployed-policy evaluations; after M minutes it stops cleanly, evaluates the final
published forward policy and prints, as its last line, one JSON object with ``env_steps``,
``updates``, ``wall_s``, ``success_final``, ``success_best``, ``bc_success`` (the mean over
the BC seeds; each seed's in ``bc_success_seeds``), ``resets``, ``reset_interval`` and
``reset_source`` (the schedule: ``paper`` by default, ``--reset-schedule earl``) and ``device``.

    resetfree-bench learning --task door --obs state --minutes 60

``resetfree-bench learning --suite [--tasks ...] [--seeds ...] [--steps N]`` runs the EARL
learning suite instead (:mod:`simulation.drills.bench_suite`).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from simulation.cli import doc_help
from simulation.app.orchestrator import TASKS, Orchestrator, RunSpec
from simulation.app.progress import ProgressDisplay
from simulation.app.run_setup import DEFAULT_TASK, UNBOUNDED_STEPS, reset_interval, reset_source
from simulation.tasks.base import RESET_SCHEDULES

logger = logging.getLogger(__name__)


def device_name(requested: str) -> str:
    """Returns what the learner trains on for ``requested`` (``auto``/``cpu``/``cuda[:N]``):
    ``cpu``, or ``cuda:N (<GPU name>)``."""
    import torch

    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return "cpu"
    index = int(requested.split(":")[1]) if ":" in requested else 0
    if not torch.cuda.is_available():
        return f"{requested} (unavailable)"
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resetfree-bench learning", description=doc_help(__doc__)[0])
    parser.add_argument("--task", choices=TASKS, default=DEFAULT_TASK, help=f"task (default {DEFAULT_TASK}, as resetfree-sim)")
    parser.add_argument("--obs", choices=("state", "pixels"), default="state", help="observations (default state)")
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock minutes of learning (default 10)")
    parser.add_argument("--steps", type=int, default=UNBOUNDED_STEPS, help="stop earlier at this many env steps")
    parser.add_argument("--robots", type=int, default=1, help="simulated runtimes (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed")
    parser.add_argument("--run-dir", type=Path, default=None, help="run directory (default runs/bench-<timestamp>)")
    parser.add_argument("--eval-every", type=int, default=10_000, help="env steps between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=10, help="episodes per evaluation")
    parser.add_argument("--bc-steps", type=int, default=10_000, help="BC baseline gradient steps")
    parser.add_argument("--bc-seeds", type=int, default=None,
                        help="BC actors trained, the baseline being their mean (default 3 state, 1 pixels)")
    parser.add_argument("--demos", type=Path, default=None,
                        help="directory of demo files (default: generate with the scripted experts)")
    parser.add_argument("--config", type=Path, default=None, help="learner TOML over profile and preset")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="learner config override (repeatable)")
    parser.add_argument("--device", default="auto", help="learner device: auto, cpu, cuda (default auto)")
    parser.add_argument("--reset-schedule", choices=RESET_SCHEDULES, default="paper",
                        help="environment reset schedule, as resetfree-sim: paper (10000 steps, default) or earl")
    parser.add_argument("--video", action="store_true", help="write evaluation videos (off by default here)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def main(argv: list[str]) -> int:
    """Runs the benchmark; prints the JSON result last. Returns 0 when the run was clean, else 1.

    ``--suite`` runs the EARL suite instead (tasks × seeds, resumable: :mod:`simulation.drills.bench_suite`)."""
    if "--suite" in argv:
        from simulation.drills import bench_suite

        return bench_suite.main([a for a in argv if a != "--suite"])
    args = _parser().parse_args(argv)
    run_dir = args.run_dir or Path("runs") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    spec = RunSpec(run_dir=run_dir, task=args.task, obs=args.obs, steps=args.steps, robots=args.robots,
                   seed=args.seed, config=args.config, overrides=tuple(args.overrides), eval_every=args.eval_every,
                   eval_episodes=args.eval_episodes, video=args.video, bc_steps=args.bc_steps, bc_seeds=args.bc_seeds,
                   demos=args.demos, reset_schedule=args.reset_schedule,
                   max_wall_s=args.minutes * 60.0, device=args.device, log_level="WARNING")
    display = ProgressDisplay(io.StringIO() if args.quiet else sys.stderr, interval=10.0, tty=False)
    outcome = asyncio.run(Orchestrator(spec, display).run())
    result: dict[str, Any] = {
        "benchmark": "learning", "task": args.task, "obs": args.obs, "minutes": args.minutes,
        "env_steps": outcome.env_steps, "updates": outcome.updates, "wall_s": round(outcome.wall_s, 1),
        "steps_per_s": round(outcome.env_steps / outcome.wall_s, 2) if outcome.wall_s > 0 else 0.0,
        "success_final": outcome.success_final, "success_best": outcome.success_best,
        "bc_success": outcome.bc_success, "bc_success_seeds": outcome.bc_success_seeds, "resets": outcome.resets,
        "reset_interval": reset_interval(spec), "reset_source": reset_source(spec), "device": device_name(args.device),
        "reason": outcome.reason, "ok": outcome.ok, "run_dir": str(run_dir),
    }
    print(json.dumps(result))
    return 0 if outcome.ok else 1
