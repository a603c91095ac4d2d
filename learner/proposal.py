"""The imitation proposal of IBRL (Hu et al. 2023): a frozen BC policy beside the actor.

:class:`learner.agent.RedqAgent` holds one when ``AgentConfig.bc_proposal`` is set (the forward
agent): it acts with the actor's action or the proposal's, whichever its critics rate higher,
and bootstraps its TD target the same way, so its critic learns what falling back on BC is
worth and practice can use BC's action wherever the critic does not prefer its own. Here: the
proposal's training (:func:`train_proposal`, the BC baseline's loss on the forward demos),
loading (:func:`load_proposal`) and the choice (:func:`choose`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import Tensor

from learner.bc import BCConfig, train_bc
from learner.critic import CriticEnsemble
from learner.demo_inputs import DemoData
from learner.networks import NetworkConfig, PolicyNetwork, build_actor
from protocol.spaces import ObsSpec

logger = logging.getLogger(__name__)


def train_proposal(demos: DemoData, obs_spec: ObsSpec, net_cfg: NetworkConfig, *, steps: int, seed: int,
                   device: torch.device) -> dict[str, Tensor]:
    """Returns the weights of a BC policy trained on ``demos`` (``steps`` gradient steps, the BC
    baseline's squared error, ``seed``). Torch's global RNG is left as it was. Blocks."""
    logger.info("BC proposal: training on %d demo steps (%d gradient steps)", len(demos.actions), steps)
    with torch.random.fork_rng(devices=[]):
        return train_bc(demos.observations, demos.actions, demos.is_last, obs_spec, net_cfg,
                        BCConfig(steps=steps, seed=seed, log_every=max(1, steps // 4)), device)


def load_proposal(weights: Mapping[str, Tensor], obs_spec: ObsSpec, action_dim: int, net_cfg: NetworkConfig,
                  device: torch.device) -> PolicyNetwork:
    """Returns the frozen policy (``build_actor`` layout, eval mode, no gradients) of ``weights``."""
    policy = build_actor(obs_spec, action_dim, net_cfg).to(device)
    policy.load_state_dict(weights)
    policy.requires_grad_(False)
    return policy.eval()


def choose(critic: CriticEnsemble, proposal: PolicyNetwork, h: Tensor, obs: Mapping[str, Tensor], action: Tensor,
           members: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Returns ``(action (B, A), chose the proposal (B,) bool, its Q (B,))``: per row, ``action``
    (the actor's) or the proposal's at ``obs``, whichever ``critic`` rates higher by the minimum
    over ``members`` (all by default: pessimistic where the actor's action is off the data), and
    that minimum for the chosen action. ``h`` are ``obs``'s features for the critic. No gradient."""
    with torch.no_grad():
        proposed = proposal(obs).to(action.dtype)
        q_actor = critic(h, action, members).min(dim=0).values
        q_proposal = critic(h, proposed, members).min(dim=0).values
        chose = q_proposal > q_actor
        return torch.where(chose.unsqueeze(-1), proposed, action), chose, torch.maximum(q_actor, q_proposal)
