"""``resetfree-bench learning --suite``: the EARL learning benchmark, tasks × seeds, resumable.

Each (task, seed) is one in-process practice run (:func:`simulation.app.practice.practice`: the
learner's whole algorithm in lock-step with a state-mode twin, EARL's own demonstrations,
the task's preset over the ``sim`` profile) in a child process; ``--jobs`` of them run at a
time (two on a 2-core machine). Every run checkpoints at each evaluation and resumes from
its newest checkpoint when the suite is started again with the same ``--out``, so a suite
longer than one sitting is run by repeating the same command. Per task, BC is trained on the
same forward demonstrations with three seeds and evaluated by the same protocol.

The figure of merit, per seed, is the mean of its last three evaluations (20 episodes each,
EARL's deployed-policy protocol); a task's number is the mean over seeds. ``--out`` gets
``results.json``, ``results.md`` (one row per task, every seed shown) and ``suite.png``
(success vs environment steps, mean and min–max band over seeds, the BC line, the paper's
and other methods' reported numbers as marks), written by :mod:`simulation.drills.suite_results`.

    resetfree-bench learning --suite --tasks door tabletop peg --seeds 0 1 2 --steps 300000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from protocol.atomic import write_json_atomic
from simulation.cli import plain
from simulation.drills.suite_results import markdown_table, read_curve, write_results

logger = logging.getLogger(__name__)

EARL_TASKS = ("door", "tabletop", "peg")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SuiteSpec:
    """What the suite runs."""

    out: Path
    """Suite directory: ``<task>/seed<S>/`` per run, ``<task>/bc.json``, results files."""
    tasks: tuple[str, ...] = EARL_TASKS
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 300_000
    """Environment steps per run."""
    eval_every: int = 10_000
    eval_episodes: int = 20
    jobs: int = 2
    """Runs at a time (one core each)."""
    bc_seeds: int = 3
    bc_steps: int = 10_000
    overrides: tuple[str, ...] = ()
    """``section.key=value`` learner overrides for every run (applied over each task's preset)."""
    minutes: float | None = None
    """Stop every run after this many wall-clock minutes (they resume next time)."""
    goal_per_turn: bool = True
    """A new goal at every forward-to-backward switch (MEDAL's loop; ``PracticeConfig.goal_per_turn``);
    False holds the goal drawn at a reset until the next."""
    reset_every: int | None = None
    """Environment steps between scene resets (``PracticeConfig.reset_every``); None: the task's
    schedule (the paper's 10k for the EARL tasks). A diagnostic, not the benchmark: 400 resets the
    scene before every forward turn, as a human would after each forward + backward pair."""

    def __post_init__(self) -> None:
        if self.reset_every is not None and self.reset_every < 1:
            raise ValueError(f"SuiteSpec.reset_every must be >= 1 or None, got {self.reset_every}")


# ============================================================================ one run
def run_one(task: str, seed: int, run_dir: Path, spec: SuiteSpec) -> dict[str, Any]:
    """Runs (or resumes) one practice run to ``spec.steps``; returns its result as a dict. Blocks."""
    import torch

    from simulation.app.practice import PracticeConfig, load_task_demos, practice, practice_config

    torch.set_num_threads(1)
    cfg = practice_config(task, seed=seed, overrides=spec.overrides)
    pcfg = PracticeConfig(task=task, max_env_steps=spec.steps, eval_every=spec.eval_every,
                          eval_episodes=spec.eval_episodes, seed=seed, run_dir=run_dir,
                          max_minutes=spec.minutes, goal_per_turn=spec.goal_per_turn,
                          reset_every=spec.reset_every)
    demos = (load_task_demos(task, "forward"), load_task_demos(task, "backward"))
    stop = []  # SIGTERM/SIGINT (the suite stopping): checkpoint at the next step, then return
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.append(True))
    return practice(cfg, pcfg, demos, should_stop=lambda: bool(stop)).to_dict()


def run_bc(task: str, out: Path, spec: SuiteSpec) -> dict[str, Any]:
    """Trains and evaluates BC with ``spec.bc_seeds`` seeds on the task's forward demos;
    writes and returns ``bc.json``'s content. Blocks."""
    import torch

    from learner.bc import BCConfig
    from simulation.app.practice import bc_baseline, load_task_demos, practice_config

    torch.set_num_threads(1)
    net = practice_config(task, seed=0, overrides=spec.overrides).network
    fwd = load_task_demos(task, "forward")
    seeds = []
    for s in range(spec.bc_seeds):
        result = bc_baseline(task, fwd, net, BCConfig(steps=spec.bc_steps, seed=s), episodes=spec.eval_episodes)
        seeds.append(result.success_rate)
        logger.info("BC %s seed %d: %.2f", task, s, result.success_rate)
    record = {"task": task, "success_seeds": seeds, "success": sum(seeds) / len(seeds),
              "steps": spec.bc_steps, "episodes": spec.eval_episodes, "demos": fwd.num_episodes}
    write_json_atomic(out, record)
    return record


# ============================================================================ the suite
def pending(spec: SuiteSpec) -> list[tuple[str, Any]]:
    """Returns the jobs still to run: ``("bc", task)`` and ``("run", (task, seed))``."""
    jobs: list[tuple[str, Any]] = []
    for task in spec.tasks:
        if not (spec.out / task / "bc.json").is_file():
            jobs.append(("bc", task))
    for seed in spec.seeds:
        for task in spec.tasks:
            points = read_curve(spec.out / task / f"seed{seed}")
            if not points or points[-1]["env_steps"] < spec.steps:
                jobs.append(("run", (task, seed)))
    return jobs


def _child_argv(kind: str, what: Any, spec: SuiteSpec) -> list[str]:
    argv = [sys.executable, "-m", "simulation.drills.bench_suite", "--out", str(spec.out), "--steps", str(spec.steps),
            "--eval-every", str(spec.eval_every), "--eval-episodes", str(spec.eval_episodes),
            "--bc-seeds", str(spec.bc_seeds), "--bc-steps", str(spec.bc_steps)]
    for item in spec.overrides:
        argv += ["--set", item]
    if spec.minutes is not None:
        argv += ["--minutes", str(spec.minutes)]
    if not spec.goal_per_turn:
        argv.append("--fixed-goal")
    if spec.reset_every is not None:
        argv += ["--reset-every", str(spec.reset_every)]
    if kind == "bc":
        return argv + ["--child-bc", what]
    task, seed = what
    return argv + ["--child-run", task, str(seed)]


def run_suite(spec: SuiteSpec) -> dict[str, Any]:
    """Runs every pending job, ``spec.jobs`` at a time, then writes the results. Blocks.

    SIGINT/SIGTERM stop the children (each keeps its last checkpoint) and still write the
    results of what exists. Returns the results dict.
    """
    spec.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(spec.out / "suite.json", {**dataclasses.asdict(spec), "out": str(spec.out)})
    queue = pending(spec)
    running: dict[subprocess.Popen[bytes], str] = {}
    stop = False

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stop
        stop = True
        logger.info("suite: %s, stopping the runs (they resume from their checkpoints)", signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    logger.info("suite: %d jobs pending, %d at a time, in %s", len(queue), spec.jobs, spec.out)
    failed: list[str] = []
    try:
        while (queue or running) and not stop:
            while queue and len(running) < spec.jobs:
                kind, what = queue.pop(0)
                name = f"{kind} {what}"
                log_dir = spec.out / "logs"
                log_dir.mkdir(exist_ok=True)
                log = open(log_dir / (name.replace(" ", "_").replace("(", "").replace(")", "").replace("'", "")
                                      .replace(",", "") + ".log"), "ab")
                env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
                proc = subprocess.Popen(_child_argv(kind, what, spec), stdout=log, stderr=subprocess.STDOUT, env=env)
                log.close()
                running[proc] = name
                logger.info("suite: started %s (pid %d)", name, proc.pid)
            time.sleep(1.0)
            for proc in [p for p in running if p.poll() is not None]:
                name = running.pop(proc)
                if proc.returncode != 0:
                    failed.append(name)
                    logger.error("suite: %s exited with %d (see %s/logs)", name, proc.returncode, spec.out)
                else:
                    logger.info("suite: %s done", name)
            _log_progress(spec)
    finally:
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        for proc in running:
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
        for s, handler in previous.items():
            signal.signal(s, handler)
    results = write_results(spec)
    results["failed"] = failed
    return results


_last_progress = [0.0]


def _log_progress(spec: SuiteSpec, every_s: float = 60.0) -> None:
    if time.monotonic() - _last_progress[0] < every_s:
        return
    _last_progress[0] = time.monotonic()
    parts = []
    for task in spec.tasks:
        for seed in spec.seeds:
            points = read_curve(spec.out / task / f"seed{seed}")
            if points:
                parts.append(f"{task}/{seed} {points[-1]['env_steps'] // 1000}k:{points[-1]['success_rate']:.2f}")
    logger.info("suite: %s", ", ".join(parts) or "no evaluation yet")


# ============================================================================ CLI
def parser() -> argparse.ArgumentParser:
    """The suite's command line (also reached as ``resetfree-bench learning --suite``)."""
    p = argparse.ArgumentParser(prog="resetfree-bench learning --suite", description=plain(__doc__.split("\n\n")[0]))
    p.add_argument("--out", type=Path, default=Path("runs/suite"), help="suite directory (default runs/suite)")
    p.add_argument("--tasks", nargs="+", choices=EARL_TASKS, default=list(EARL_TASKS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300_000, help="environment steps per run (default 300k)")
    p.add_argument("--eval-every", type=int, default=10_000)
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2: one per core)")
    p.add_argument("--bc-seeds", type=int, default=3)
    p.add_argument("--bc-steps", type=int, default=10_000)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="learner override for every run, over each task's preset (repeatable)")
    p.add_argument("--minutes", type=float, default=None, help="stop each run after M minutes (it resumes later)")
    p.add_argument("--fixed-goal", action="store_true",
                   help="hold the goal drawn at a reset until the next (default: a new goal every forward turn, as MEDAL)")
    p.add_argument("--reset-every", type=int, default=None, metavar="N",
                   help="reset the scene every N steps (a diagnostic; default: the task's schedule, 10k)")
    p.add_argument("--results-only", action="store_true", help="only (re)write the results of what exists")
    p.add_argument("--child-run", nargs=2, metavar=("TASK", "SEED"), help=argparse.SUPPRESS)
    p.add_argument("--child-bc", metavar="TASK", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the suite (or one child job); prints the results JSON as its last line."""
    args = parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = SuiteSpec(out=args.out, tasks=tuple(args.tasks), seeds=tuple(args.seeds), steps=args.steps,
                     eval_every=args.eval_every, eval_episodes=args.eval_episodes, jobs=args.jobs,
                     bc_seeds=args.bc_seeds, bc_steps=args.bc_steps, overrides=tuple(args.overrides),
                     minutes=args.minutes, goal_per_turn=not args.fixed_goal, reset_every=args.reset_every)
    if args.child_run:
        task, seed = args.child_run[0], int(args.child_run[1])
        result = run_one(task, seed, spec.out / task / f"seed{seed}", spec)
        print(json.dumps({k: v for k, v in result.items() if k != "curve"}), flush=True)
        return 0
    if args.child_bc:
        print(json.dumps(run_bc(args.child_bc, spec.out / args.child_bc / "bc.json", spec)), flush=True)
        return 0
    results = write_results(spec) if args.results_only else run_suite(spec)
    print(markdown_table(results), flush=True)
    print(json.dumps({task: {"mean": t["mean"], "bc": t["bc"]["success"] if t["bc"] else None}
                      for task, t in results["tasks"].items()}), flush=True)
    return 1 if results.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
