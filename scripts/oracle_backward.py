"""Oracle check of the backward agent (issue #16): practice with its MEDAL reward replaced by
the task's true reset signal, to tell a reward problem from a learning problem.

    python scripts/oracle_backward.py --task peg --seed 0 --steps 40000 --out runs/oracle-peg-s0 [--set K=V ...]

The backward agent is paid 1 on every step whose next state satisfies the task's own
backward success (door: the handle within 2 cm of its initial position; peg: the peg head
within 5 cm of its start region), 0 otherwise; everything else is the in-process practice
loop (:func:`simulation.practice.practice`) with the task's preset and ``--set`` overrides,
evaluated as the learning suite does (20 episodes every 10k steps). The MEDAL discriminator
still trains; nothing reads it. If the backward agent does not learn to reset even with this
reward, the fault is in how it learns (exploration, its demos), not in its reward.

Prints one JSON line per evaluation: steps, success, and the practice stream's reset counts
(``practice/backward_turns_*``). Resumes from ``--out`` like a suite run. Blocks for the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

import simulation.practice as practice_module
from learner.trainer import MedalTrainer
from protocol.messages import BACKWARD
from simulation.practice import EvalPoint, PracticeConfig, load_task_demos, practice, practice_config
from simulation.tasks import door, peg

logger = logging.getLogger(__name__)


def door_reset_reward(state: torch.Tensor) -> torch.Tensor:
    """1 where the handle (state[4:7]) is within door's success threshold of its initial position."""
    handle = state[:, 4:7]
    target = torch.as_tensor(door.INITIAL_HANDLE, dtype=state.dtype)
    return (torch.linalg.vector_norm(handle - target, dim=1) <= door.SUCCESS_THRESHOLD).to(state.dtype)


def peg_reset_reward(state: torch.Tensor) -> torch.Tensor:
    """1 where the peg head (state[4:7]) is within peg's success threshold of its start region."""
    head = state[:, 4:7]
    low = torch.as_tensor(peg.PEG_LOW + peg.HEAD_OFFSET, dtype=state.dtype)
    high = torch.as_tensor(peg.PEG_HIGH + peg.HEAD_OFFSET, dtype=state.dtype)
    distance = torch.linalg.vector_norm(head - torch.clamp(head, low, high), dim=1)
    return (distance <= peg.SUCCESS_THRESHOLD).to(state.dtype)


ORACLES = {"door": door_reset_reward, "peg": peg_reset_reward}
"""The reset reward of each task this check supports, from the state vector."""


def oracle_trainer(task: str) -> type[MedalTrainer]:
    """Returns a MedalTrainer whose backward reward is ``task``'s oracle."""
    oracle = ORACLES[task]

    class OracleBackwardTrainer(MedalTrainer):
        def reward(self, agent: int, next_obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
            if agent == BACKWARD:
                return oracle(next_obs["state"])
            return super().reward(agent, next_obs)

    return OracleBackwardTrainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(ORACLES), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=40_000, help="environment steps (default 40k)")
    parser.add_argument("--out", type=Path, required=True, help="run directory (resumes from it)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="learner override over the task's preset (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    config = practice_config(args.task, seed=args.seed, overrides=args.overrides)
    demos = (load_task_demos(args.task, "forward"), load_task_demos(args.task, "backward"))
    pcfg = PracticeConfig(task=args.task, max_env_steps=args.steps, eval_every=10_000, eval_episodes=20,
                          seed=args.seed, run_dir=args.out)

    def report(point: EvalPoint) -> None:
        counts = {k: v for k, v in point.metrics.items() if k.startswith("practice/backward_turns")}
        print(json.dumps({"steps": point.env_steps, "success": point.success_rate, **counts}), flush=True)

    practice_module.MedalTrainer = oracle_trainer(args.task)  # type: ignore[misc]
    practice(config, pcfg, demos, on_eval=report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
