"""Oracle check of the forward critic's action preference on tabletop (issue #16).

    python scripts/critic_oracle.py runs/oracle-tt-s0/ckpt-40100 [more checkpoints] [--every 5]

At tabletop's forward-demo states (every ``--every``-th step of EARL's 12 forward demos) the
actor's loss pulls the action towards what the critic prefers. This checks that preference
against the truth. The tabletop twin is kinematic, so it can be set exactly to a demo state
(``set_from_earl_observation``); from each state two rollouts of ``--horizon`` steps run: the
demo's action then the deployed policy (``tanh`` of the mean), and the policy's own action then
the policy. Each pays EARL's success indicator per step, discounted by γ = 0.99 (truncated at
the horizon), which is what ``scripts/oracle_reward.py --agent forward`` pays the agent. The
critic's side is the ensemble-mean Q of the same two actions.

Prints one JSON line per checkpoint: how often the truth prefers the policy's action, the
demo's, or neither (``true_*``); how often the critic prefers the policy's
(``critic_pi_better``) and agrees with the truth where the truth differs; success within the
horizon after each first action; mean true returns and mean Q; the correlation of Q with the
true return across states. The checkpoints must come from a run with the tabletop preset
(``--set`` overrides are passed on for runs that changed the networks). Blocks (~20 s per
checkpoint on one core).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

import numpy as np
import torch

from learner import checkpoint
from learner.agent import RedqAgent, obs_to_tensors
from learner.trainer import MedalTrainer
from protocol.messages import FORWARD
from simulation.app.practice import load_task_demos, practice_config, state_spec
from simulation.tasks import make

logger = logging.getLogger(__name__)
GAMMA = 0.99
"""The agents' discount (``agent.discount``'s default)."""
TIE = 1e-3
"""Returns closer than this count as equal."""


def deployed_action(agent: RedqAgent, observation: np.ndarray) -> np.ndarray:
    """Returns the deployed policy's action (``tanh`` of the actor's mean) at one observation."""
    with torch.no_grad():
        h = agent.encoder(obs_to_tensors({"state": np.asarray(observation, np.float32)[None]}, agent.obs_spec,
                                         agent.device))
        mean, _ = agent.actor(h)
        return torch.tanh(mean).numpy()[0]


def true_return(env: Any, agent: RedqAgent, state: np.ndarray, first_action: np.ndarray,
                horizon: int) -> tuple[float, bool]:
    """Sets the twin to ``state``, applies ``first_action`` and then the deployed policy for the
    rest of ``horizon`` steps; returns the discounted success return and whether it succeeded."""
    env.unwrapped.set_from_earl_observation(state)
    total, succeeded, action = 0.0, False, first_action
    for t in range(horizon):
        observation, _, _, _, info = env.step(action)
        if info["success"]:
            total += GAMMA ** t
            succeeded = True
        action = deployed_action(agent, observation)
    return total, succeeded


def check(trainer: MedalTrainer, path: str, states: np.ndarray, actions: np.ndarray, env: Any,
          horizon: int) -> dict[str, Any]:
    """Returns the figures of one checkpoint (module docstring)."""
    trainer.load_state_dict(checkpoint.load_checkpoint(path, with_replay=False).state)
    agent = trainer.agents[FORWARD]
    with torch.no_grad():
        h = agent.encoder(obs_to_tensors({"state": states.astype(np.float32)}, agent.obs_spec, agent.device))
        mean, _ = agent.actor(h)
        policy_actions = torch.tanh(mean)
        q_demo = agent.critic(h, torch.as_tensor(actions)).mean(0).reshape(-1).numpy()
        q_pi = agent.critic(h, policy_actions).mean(0).reshape(-1).numpy()
    runs = [(true_return(env, agent, s, a, horizon), true_return(env, agent, s, p, horizon))
            for s, a, p in zip(states, actions, policy_actions.numpy())]
    r_demo = np.array([d[0] for d, _ in runs])
    r_pi = np.array([p[0] for _, p in runs])
    diff, critic = r_pi - r_demo, q_pi - q_demo
    differ = np.abs(diff) > TIE
    agree = float((np.sign(critic[differ]) == np.sign(diff[differ])).mean()) if differ.any() else None
    return {"checkpoint": path, "states": int(len(states)), "horizon": horizon,
            "true_pi_better": float((diff > TIE).mean()), "true_demo_better": float((diff < -TIE).mean()),
            "true_tie": float((~differ).mean()), "critic_pi_better": float((critic > 0).mean()),
            "critic_agrees_where_truth_differs": agree,
            "success_after_demo_action": float(np.mean([d[1] for d, _ in runs])),
            "success_after_pi_action": float(np.mean([p[1] for _, p in runs])),
            "true_return_demo_mean": float(r_demo.mean()), "true_return_pi_mean": float(r_pi.mean()),
            "q_demo_mean": float(q_demo.mean()), "q_pi_mean": float(q_pi.mean()),
            "corr_q_pi_vs_true_return_pi": float(np.corrcoef(q_pi, r_pi)[0, 1]) if r_pi.std() > 0 else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="learner checkpoint directories (ckpt-N) of tabletop runs")
    p.add_argument("--every", type=int, default=5, help="use every N-th forward-demo step (default 5: 256 states)")
    p.add_argument("--horizon", type=int, default=200, help="rollout steps (default 200, tabletop's horizon)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="the run's config overrides over the tabletop preset (repeatable)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    cfg = practice_config("tabletop", seed=0, overrides=args.overrides)
    demos = (load_task_demos("tabletop", "forward"), load_task_demos("tabletop", "backward"))
    trainer = MedalTrainer(cfg, state_spec("tabletop"), demos[0].action_dim, demos, seed=0)
    rows = np.flatnonzero(~demos[0].is_last)[::args.every]
    states = np.asarray(demos[0].observations["state"], np.float64)[rows]
    actions = np.asarray(demos[0].actions, np.float32)[rows]
    env = make("tabletop")
    env.reset(seed=0)
    try:
        for path in args.checkpoints:
            print(json.dumps(check(trainer, path, states, actions, env, args.horizon)), flush=True)
    finally:
        env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
