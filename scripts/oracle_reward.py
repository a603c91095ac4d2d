"""Oracle check of one agent's learnt reward (issue #16): practice with the agent's
discriminator reward replaced by the task's true success signal, to tell a reward problem from
a learning problem.

    python scripts/oracle_reward.py --agent backward --task peg --seed 0 --steps 40000 --out runs/oracle-peg-s0
    python scripts/oracle_reward.py --agent forward --task tabletop --seed 0 --steps 60000 --out runs/oracle-tt-s0

The agent is paid 1 on every step whose next state satisfies the task's own success, 0
otherwise. Backward (the reset): door's handle within 2 cm of its initial position; peg's head
within 5 cm of its start region. Forward: tabletop's EARL criterion, gripper and mug within
0.2 of the goal state the observation carries (gripper home, mug at the goal). Everything else
is the in-process practice loop (:func:`simulation.app.practice.practice`) with the task's preset
and ``--set`` overrides, evaluated as the learning suite does (20 episodes every 10k steps).
The replaced discriminator still trains; nothing reads it. If the agent does not learn even
with this reward, the fault is in how it learns (exploration, its demos), not in its reward.

Prints one JSON line per evaluation: steps, success, and the practice stream's turn counts
(``practice/*_turns*``). Resumes from ``--out`` like a suite run. Blocks for the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

import simulation.app.practice as practice_module
from learner.trainer import MedalTrainer
from protocol.messages import BACKWARD, FORWARD
from simulation.app.practice import EvalPoint, PracticeConfig, load_task_demos, practice, practice_config
from simulation.tasks import door, peg, tabletop

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


def tabletop_success_reward(state: torch.Tensor) -> torch.Tensor:
    """1 where gripper and mug (state[0:4]) are within EARL's threshold of the goal state
    (state[6:10]: gripper home, mug at the goal): tabletop's forward success."""
    distance = torch.linalg.vector_norm(state[:, 0:4] - state[:, 6:10], dim=1)
    return (distance <= tabletop.SUCCESS_THRESHOLD).to(state.dtype)


ORACLES = {("backward", "door"): door_reset_reward, ("backward", "peg"): peg_reset_reward,
           ("forward", "tabletop"): tabletop_success_reward}
"""The true reward of each (agent, task) this check supports, from the state vector."""


def oracle_trainer(agent_name: str, task: str) -> type[MedalTrainer]:
    """Returns a MedalTrainer whose ``agent_name`` agent is paid ``task``'s oracle reward."""
    oracle = ORACLES[(agent_name, task)]
    replaced = FORWARD if agent_name == "forward" else BACKWARD

    class OracleTrainer(MedalTrainer):
        def reward(self, agent: int, next_obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
            if agent == replaced:
                return oracle(next_obs["state"])
            return super().reward(agent, next_obs)

    return OracleTrainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agent", choices=("forward", "backward"), default="backward")
    parser.add_argument("--task", choices=sorted({task for _, task in ORACLES}), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=40_000, help="environment steps (default 40k)")
    parser.add_argument("--out", type=Path, required=True, help="run directory (resumes from it)")
    parser.add_argument("--reset-every", type=int, default=None, metavar="STEPS",
                        help="reset the scene every STEPS steps (400: before every forward turn); "
                             "default: the task's schedule")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="learner override over the task's preset (repeatable)")
    args = parser.parse_args(argv)
    if (args.agent, args.task) not in ORACLES:
        parser.error(f"no {args.agent} oracle for {args.task}; have {sorted(ORACLES)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    config = practice_config(args.task, seed=args.seed, overrides=args.overrides)
    demos = (load_task_demos(args.task, "forward"), load_task_demos(args.task, "backward"))
    pcfg = PracticeConfig(task=args.task, max_env_steps=args.steps, eval_every=10_000, eval_episodes=20,
                          seed=args.seed, run_dir=args.out, reset_every=args.reset_every)

    def report(point: EvalPoint) -> None:
        counts = {k: v for k, v in point.metrics.items() if k.startswith("practice/")}
        print(json.dumps({"steps": point.env_steps, "success": point.success_rate, **counts}), flush=True)

    practice_module.MedalTrainer = oracle_trainer(args.agent, args.task)  # type: ignore[misc]
    practice(config, pcfg, demos, on_eval=report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
