"""Deploy a BC-proposal checkpoint under several arbitration rules (issue #16, tabletop).

    python scripts/proposal_arbitration.py runs/tt-ibrl/seed0/ckpt-40004 [more checkpoints] [--task tabletop]

A run with ``agent.bc_proposal=true`` keeps a frozen BC policy beside the forward actor; its
deployed policy takes, at each step, whichever of the two actions the critics' minimum rates
higher (``learner.proposal.choose``). This evaluates the same checkpoint, offline, with the
choice made other ways, to tell whether the critics' choice carries information:

- ``critics_min``: the agent's own rule (what the practice loop's evaluation measured);
- ``actor`` / ``proposal``: one of the two alone;
- ``critics_mean``: the ensemble means compared;
- ``unanimous``: the actor's action only where every critic rates it above the proposal's;
- ``margin_1``: the same, by more than 1.

Prints one JSON line per checkpoint: each rule's success over ``--episodes`` deployed
episodes (EARL's evaluation: the task's initial states, success at any step) and the share of
steps at which it took the proposal's action. The checkpoints must come from runs of the task's
preset with ``agent.bc_proposal=true`` (other ``--set`` overrides are passed on). Blocks (~10 s
per rule and checkpoint on one core).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from learner import checkpoint
from learner.agent import RedqAgent, obs_to_tensors
from learner.trainer import MedalTrainer
from protocol.messages import FORWARD
from simulation.app.practice import actor_policy, load_task_demos, practice_config, state_spec
from simulation.evaluation import evaluate

Rule = Callable[[Tensor, Tensor], bool]
"""``(Q of the actor's action (E,), Q of the proposal's (E,)) -> take the proposal's``."""

RULES: dict[str, Rule] = {
    "critics_min": lambda qa, qp: bool(qp.min() > qa.min()),
    "actor": lambda qa, qp: False,
    "proposal": lambda qa, qp: True,
    "critics_mean": lambda qa, qp: bool(qp.mean() > qa.mean()),
    "unanimous": lambda qa, qp: bool((qp >= qa).any()),
    "margin_1": lambda qa, qp: bool((qa - qp).min() < 1.0),
}


def deploy(agent: RedqAgent, rule: Rule) -> tuple[Callable[[dict[str, np.ndarray]], np.ndarray], list[bool]]:
    """Returns ``(policy, took)``: the deployed policy under ``rule`` and the list it appends,
    per step, whether it took the proposal's action."""
    assert agent.proposal is not None
    took: list[bool] = []

    def act(observation: dict[str, np.ndarray]) -> np.ndarray:
        obs = {k: v[None] for k, v in obs_to_tensors(observation, agent.obs_spec, agent.device).items()}
        with torch.no_grad():
            h = agent.encoder(obs)
            mine, theirs = torch.tanh(agent.actor(h)[0]), agent.proposal(obs)
            use = rule(agent.critic(h, mine)[:, 0], agent.critic(h, theirs)[:, 0])
        took.append(use)
        return (theirs if use else mine)[0].numpy()

    return act, took


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="learner checkpoint directories (ckpt-N) of bc_proposal runs")
    p.add_argument("--task", default="tabletop", help="the runs' task (default tabletop)")
    p.add_argument("--episodes", type=int, default=20, help="evaluation episodes per rule (default 20)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="the runs' other config overrides over the task's preset (repeatable)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    cfg = practice_config(args.task, seed=0, overrides=["agent.bc_proposal=true", *args.overrides])
    demos = (load_task_demos(args.task, "forward"), load_task_demos(args.task, "backward"))
    trainer = MedalTrainer(cfg, state_spec(args.task), demos[0].action_dim, demos, seed=0)
    for path in args.checkpoints:
        trainer.load_state_dict(checkpoint.load_checkpoint(path, with_replay=False).state)
        agent = trainer.agents[FORWARD]
        if agent.proposal is None:
            raise SystemExit(f"{path}: the forward agent holds no BC proposal (not a bc_proposal run?)")
        out: dict[str, object] = {"checkpoint": str(path)}
        for name, rule in RULES.items():
            act, took = deploy(agent, rule)
            result = evaluate(actor_policy(act), args.task, episodes=args.episodes, seed=10_000)
            out[name] = {"success": result.success_rate, "proposal_share": round(float(np.mean(took)), 3)}
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
