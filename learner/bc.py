"""Behaviour-cloning baseline: the same encoder + actor, trained on demos alone.

Used by the BC-vs-autonomous comparison: the result is a state dict that
``learner.networks.build_actor`` loads, so the runtime and the evaluator run it exactly like
an RL policy. The loss is the squared error of the mean action ``tanh(μ(s))`` to the demo
action (the same form as the agent's BC regulariser); unlike the agent, BC trains the
encoder with this loss, since it has no critic. Images get the same random shift.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from learner.augment import RandomShift
from learner.errors import LearnerError
from learner.networks import NetworkConfig, PolicyNetwork, as_network_config, build_actor, is_image
from protocol.spaces import ObsSpec
from protocol.demos import Demos

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BCConfig:
    """Behaviour-cloning optimisation settings."""

    steps: int = 10_000
    """Gradient steps."""
    batch_size: int = 256
    """Demo steps per gradient step."""
    lr: float = 3e-4
    """Adam learning rate."""
    augment_pad: int = 4
    """Random-shift padding in pixels (0 disables augmentation)."""
    seed: int = 0
    """Seed of initialisation and sampling."""
    log_every: int = 1000
    """Log the loss every this many steps."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"BCConfig.{name} must be a positive int, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"BCConfig.lr must be > 0, got {self.lr}")
        if self.augment_pad < 0:
            raise ValueError(f"BCConfig.augment_pad must be >= 0, got {self.augment_pad}")


class BCPolicy:
    """A :class:`PolicyNetwork` with its optimiser, trained by squared-error regression."""

    def __init__(
        self,
        obs_spec: ObsSpec,
        action_dim: int,
        net_config: NetworkConfig | Mapping[str, object],
        cfg: BCConfig,
        device: torch.device | str = "cpu",
    ) -> None:
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.obs_spec = dict(obs_spec)
        self.device = torch.device(device)
        self.policy: PolicyNetwork = build_actor(obs_spec, action_dim, as_network_config(net_config)).to(self.device)
        self.augment = RandomShift(cfg.augment_pad)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr)

    def loss(self, obs: Mapping[str, Tensor], action: Tensor) -> Tensor:
        """Returns the mean over rows of ``‖tanh(μ(s)) − a‖²`` (summed over action dims)."""
        return (self.policy(obs) - action).pow(2).sum(-1).mean()

    def step(self, obs: Mapping[str, Tensor], action: Tensor) -> float:
        """One augmented gradient step; returns the loss. Blocks for the step."""
        obs = self.augment({k: v.to(self.device) for k, v in obs.items()})
        loss = self.loss(obs, action.to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def state_dict(self) -> dict[str, Tensor]:
        """Returns CPU copies of the policy tensors (``build_actor``-compatible names)."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.policy.state_dict().items()}


def train_bc(
    observations: Mapping[str, np.ndarray],
    actions: np.ndarray,
    is_last: np.ndarray,
    obs_spec: ObsSpec,
    net_config: NetworkConfig | Mapping[str, object],
    cfg: BCConfig,
    device: torch.device | str = "cpu",
) -> dict[str, Tensor]:
    """Trains BC on demo steps whose action is real (``is_last`` rows are padding, skipped).

    Returns a state dict for ``build_actor(obs_spec, actions.shape[1], net_config)``.
    Raises LearnerError when there is no trainable step or the arrays disagree. Blocks for
    the whole training run.
    """
    actions = np.asarray(actions, dtype=np.float32)
    is_last = np.asarray(is_last, dtype=bool)
    n = actions.shape[0]
    if actions.ndim != 2 or is_last.shape != (n,):
        raise LearnerError(f"train_bc: actions {actions.shape} / is_last {is_last.shape} disagree")
    for key in obs_spec:
        if key not in observations or len(observations[key]) != n:
            raise LearnerError(f"train_bc: observations[{key!r}] missing or not {n} rows")
    rows = np.flatnonzero(~is_last)
    if rows.size == 0:
        raise LearnerError("train_bc: no demo step with a real action")
    bc = BCPolicy(obs_spec, actions.shape[1], net_config, cfg, device)
    tensors = {
        k: torch.as_tensor(np.asarray(observations[k])) if is_image(*obs_spec[k])
        else torch.as_tensor(np.asarray(observations[k], dtype=np.float32))
        for k in obs_spec
    }
    action_t = torch.as_tensor(actions)
    rng = np.random.default_rng(cfg.seed)
    for step in range(1, cfg.steps + 1):
        idx = torch.as_tensor(rng.choice(rows, size=cfg.batch_size, replace=True))
        loss = bc.step({k: v[idx] for k, v in tensors.items()}, action_t[idx])
        if step % cfg.log_every == 0 or step == cfg.steps:
            logger.info("bc step %d/%d loss %.5f", step, cfg.steps, loss)
    return bc.state_dict()


def train_bc_from_demos(
    demos: Demos,
    obs_spec: ObsSpec,
    net_config: NetworkConfig | Mapping[str, object],
    cfg: BCConfig,
    device: torch.device | str = "cpu",
) -> dict[str, Tensor]:
    """:func:`train_bc` on a :class:`protocol.demos.Demos` set; returns the policy state dict."""
    return train_bc(demos.observations, demos.actions, demos.is_last, obs_spec, net_config, cfg, device)
