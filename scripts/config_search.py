"""Config search for the state-based learning benchmark (issue #7).

Subcommands (each prints one JSON object per result line; run one at a time, nice'd):

    python scripts/config_search.py speed  [--hidden 256 1024] [--critics 2 5 10]
        REDQ update speed (state mode) per network size: how many updates fit in 60 min.
    python scripts/config_search.py bc     --task tabletop [--episodes N] [--steps S]
        BC on the forward demos, evaluated like practice runs.
    python scripts/config_search.py run    --task tabletop [--config FILE] [--set K=V ...]
                                           [--minutes M] [--max-steps N] [--eval-every N]
        One in-process MEDAL++ practice run (`simulation.app.practice.practice`).

`--out FILE` appends every JSON line to FILE as well (the notes in docs/learning.md come
from such files).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from learner.agent import AgentConfig, RedqAgent
from learner.batch import Batch
from learner.bc import BCConfig
from learner.config import LearnerConfig, profile
from learner.networks import NetworkConfig
from simulation.app.practice import PracticeConfig, bc_baseline, load_task_demos, practice

logger = logging.getLogger(__name__)


_SHOWN = {"q_mean", "reward_mean", "bc", "actor", "entropy", "alpha", "loss", "accuracy", "logits_pos",
          "logits_neg", "critic"}


def _emit(record: dict[str, Any], out: Path | None) -> None:
    line = json.dumps(record, sort_keys=True)
    print(line, flush=True)
    if out is not None:
        with open(out, "a") as f:
            f.write(line + "\n")


def cmd_speed(args: argparse.Namespace) -> None:
    """Times agent updates on random state batches for each (hidden, critics) pair."""
    dim, act_dim = 12, 3
    spec = {"state": ((dim,), "float32")}
    for hidden in args.hidden:
        for critics in args.critics:
            net = NetworkConfig(hidden_dim=hidden, num_critics=critics, num_min_target=min(2, critics))
            agent = RedqAgent(spec, act_dim, AgentConfig(batch_size=args.batch), net)
            b = args.batch
            batch = Batch(obs={"state": torch.randn(b, dim)}, action=torch.rand(b, act_dim) * 2 - 1,
                          next_obs={"state": torch.randn(b, dim)}, discount=torch.full((b,), 0.99),
                          is_demo=torch.zeros(b, dtype=torch.bool))
            reward = torch.randn(b)
            for i in range(10):
                agent.update(batch, reward, bc_weight=1.0, step=i, update_actor=True)
            started = time.perf_counter()
            for i in range(args.updates):
                agent.update(batch, reward, bc_weight=1.0, step=i, update_actor=True)
            per_s = args.updates / (time.perf_counter() - started)
            _emit({"kind": "speed", "hidden": hidden, "critics": critics, "batch": b,
                   "updates_per_s": round(per_s, 1), "updates_per_60min": int(per_s * 3600)}, args.out)


def cmd_bc(args: argparse.Namespace) -> None:
    """BC baseline on the forward demos (same evaluation protocol as practice runs)."""
    fwd = load_task_demos(args.task, "forward", source=args.demos, episodes=args.episodes)
    net = NetworkConfig(hidden_dim=args.hidden)
    for seed in args.seeds:
        started = time.perf_counter()
        result = bc_baseline(args.task, fwd, net, BCConfig(steps=args.steps, augment_pad=0, seed=seed),
                             episodes=args.eval_episodes)
        _emit({"kind": "bc", "task": args.task, "demos": args.demos, "demo_episodes": fwd.num_episodes,
               "steps": args.steps, "hidden": args.hidden, "seed": seed, "success": result.success_rate,
               "wall_s": round(time.perf_counter() - started, 1)}, args.out)


def cmd_run(args: argparse.Namespace) -> None:
    """One practice run; emits each evaluation and a summary line."""
    cfg = profile("sim")
    if args.config is not None:
        cfg = LearnerConfig.from_toml(args.config, base=cfg)
    cfg = cfg.with_overrides(args.overrides)
    fwd = load_task_demos(args.task, "forward", source=args.demos, episodes=args.episodes)
    bwd = load_task_demos(args.task, "backward", source=args.demos, episodes=args.episodes)
    pcfg = PracticeConfig(task=args.task, max_env_steps=args.max_steps, max_minutes=args.minutes,
                          eval_every=args.eval_every, eval_episodes=args.eval_episodes, seed=args.seed,
                          reset_every=args.reset_every, reset_schedule=args.reset_schedule)
    tag = {"label": args.label, "task": args.task, "config": str(args.config) if args.config else None,
           "set": args.overrides, "seed": args.seed,
           "reset_every": args.reset_every, "reset_interval": pcfg.reset_interval,
           "reset_source": "flag" if args.reset_every is not None else args.reset_schedule,
           "demo_episodes": args.episodes}

    def on_eval(point: Any) -> None:
        _emit({"kind": "eval", **tag, "env_steps": point.env_steps, "updates": point.updates,
               "minutes": round(point.train_minutes, 2), "success": point.success_rate,
               "metrics": {k: round(v, 3) for k, v in point.metrics.items() if k.split("/")[-1] in _SHOWN}}, args.out)

    result = practice(cfg, pcfg, (fwd, bwd), on_eval=on_eval)
    _emit({"kind": "summary", **tag, "final": result.final_success, "best": result.best_success,
           "env_steps": result.env_steps, "updates": result.updates,
           "train_minutes": round(result.train_minutes, 2), "eval_minutes": round(result.eval_minutes, 2),
           "stream_successes": result.forward_successes,
           "curve": [[p.env_steps, round(p.train_minutes, 1), p.success_rate] for p in result.curve]}, args.out)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="also append JSON lines to this file")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: shared 2-core CPU)")
    parser.add_argument("--log-level", default="WARNING", help="logging level")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("speed", help="REDQ update speed in state mode")
    sp.add_argument("--hidden", type=int, nargs="+", default=[256, 1024], help="hidden widths")
    sp.add_argument("--critics", type=int, nargs="+", default=[2, 5, 10], help="critic counts")
    sp.add_argument("--batch", type=int, default=256, help="batch size")
    sp.add_argument("--updates", type=int, default=200, help="timed updates per setting")
    for name, help_ in (("bc", "behaviour-cloning baseline"), ("run", "one practice run")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--task", default="tabletop", help="tabletop | door | peg")
        p.add_argument("--demos", default="earl", help="earl | expert | a demo file")
        p.add_argument("--episodes", type=int, default=None, help="demo episodes kept (default: all)")
        p.add_argument("--eval-episodes", type=int, default=20, help="evaluation episodes")
    bc = sub.choices["bc"]
    bc.add_argument("--steps", type=int, default=3000, help="BC gradient steps")
    bc.add_argument("--hidden", type=int, default=256, help="hidden width")
    bc.add_argument("--seeds", type=int, nargs="+", default=[0], help="BC seeds")
    run = sub.choices["run"]
    run.add_argument("--config", type=Path, default=None, help="TOML preset over the sim profile")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="learner override (repeatable)")
    run.add_argument("--minutes", type=float, default=None, help="training wall-clock budget")
    run.add_argument("--max-steps", type=int, default=1_000_000, help="environment step budget")
    run.add_argument("--eval-every", type=int, default=5000, help="steps between evaluations")
    resets = run.add_mutually_exclusive_group()
    resets.add_argument("--reset-every", type=int, default=None,
                        help="steps between env resets (default: --reset-schedule's; 0: never)")
    resets.add_argument("--reset-schedule", choices=("paper", "earl"), default="paper",
                        help="the task's reset schedule: paper (10000 steps, the default) or earl (EARL's own)")
    run.add_argument("--seed", type=int, default=0, help="run seed")
    run.add_argument("--label", default="", help="free-text tag in the output")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one subcommand; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    np.set_printoptions(precision=3)
    {"speed": cmd_speed, "bc": cmd_bc, "run": cmd_run}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
