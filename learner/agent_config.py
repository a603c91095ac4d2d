"""The REDQ agents' optimisation settings (the ``[agent]`` config section).

:class:`AgentConfig`: learning rate, discount, Polyak rate, batch size, the update-to-data
ratio, each role's entropy temperature (initial α, learnt or not, target entropy, the cap),
the exploration-noise clip, augmentation, the encoder's bf16 autocast, the critic's gradient
clip, the behaviour-cloning regulariser's form, the actor's Q scaling, the critic's
conservative term and the forward agent's BC proposal. :class:`learner.agent.RedqAgent` reads it (and re-exports it, so
``from learner.agent import AgentConfig`` keeps working).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Literal

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """REDQ/DrQ-v2 optimisation settings (paper Table 1 defaults)."""

    lr: float = 3e-4
    """Adam learning rate of encoder, critics, actor (and temperature)."""
    gamma: float = 0.99
    """Discount factor γ."""
    tau: float = 0.005
    """Polyak rate of the target critics."""
    batch_size: int = 256
    """Transitions per update (agent + demo rows)."""
    update_to_data: int = 1
    """Critic updates per environment step (REDQ's G; paper: 1)."""
    forward_temperature: float = 0.0
    """The forward agent's entropy bonus α at start (paper and the authors' code: 0, no bonus)."""
    forward_learn_temperature: bool = False
    """Tune the forward agent's α towards its target entropy (needs α > 0)."""
    forward_target_entropy: float = -1.0
    """The forward agent's target entropy per action dimension (SAC: −1, i.e. −|A|)."""
    backward_temperature: float = 1.0
    """The backward agent's α at start (the authors' code: 1.0)."""
    backward_learn_temperature: bool = True
    """Tune the backward agent's α (the authors' code: ``train_alpha: true``)."""
    backward_target_entropy: float = 0.5
    """The backward agent's target entropy per action dimension (the authors' ``auto_large``:
    +|A|/2, a broad policy that undoes the task in many ways)."""
    max_temperature: float = 1.0
    """Cap of a learnt α. Uncapped, α follows the critic's scale: a backward α that reached
    10.8 with Q at 9.5k drove the policy to uniform noise (docs/learning.md)."""
    stddev_clip: float | None = 0.3
    """Clip of the pre-tanh exploration noise in target and actor-update samples (DrQ-v2).

    Used only while the agent's entropy bonus is off (its temperature is 0). With α > 0 a
    clipped sample hides the std from the Q term (a clipped noise has no gradient), so the
    entropy term alone acts on it and drives the std to ``log_std_max`` (practice turns into
    uniform random actions); SAC's unclipped sample is used instead."""
    augment_pad: int = 4
    """Random-shift padding in pixels (DrQ-v2: 4)."""
    encoder_bf16: bool = True
    """Run the encoder under bfloat16 autocast in updates (fp32 master weights) where the device
    computes bf16 natively (``learner.networks.native_bf16``: CUDA, AMX / AVX512-BF16 CPUs);
    elsewhere it runs in float32, since emulated bf16 is ~6x slower. False: float32 always."""
    critic_grad_clip: float | None = None
    """Max global grad norm of encoder + critics; None disables clipping."""
    bc_form: Literal["log_likelihood", "mse", "beta_nll"] = "log_likelihood"
    """The BC regulariser, ``(1 − λ)·L_RL + λ·L_BC`` on a separate batch of demo transitions.
    ``log_likelihood`` (the authors' code): ``L_BC = −log π(a_d|s_d)``; it pulls the mean and
    shrinks the std where the demos act. ``mse``: ``L_BC = ‖tanh μ(s_d) − a_d‖²``, the deployed
    mean action's error (the BC baseline's loss). Measured on tabletop (docs/learning.md): the
    log-likelihood settles with σ at its maximum on the 6% of demo rows that release the mug
    (saturated ±1 grasp labels), so the mean never learns to let go; the squared error does.
    ``beta_nll``: the log-likelihood with each dimension's term weighted by ``sg(σ^(2β))``
    (Seitzer et al. 2022, β-NLL, ``bc_beta``): it holds the std up as the log-likelihood does, its
    pull on the mean scales as ``1/σ^(2−2β)`` (β = 0: the log-likelihood's ``1/σ²``, β = 1: the
    squared error of the pre-tanh mean), and a row with a large σ no longer stops the mean from
    learning (offline on tabletop, β = 0.5: 1.00 at 10k steps, where the log-likelihood gives 0.00)."""
    bc_beta: float = 0.5
    """β of the ``beta_nll`` BC form, in [0, 1]."""
    q_scale: float | None = None
    """TD3+BC's normalisation of the actor's Q term: ``q_scale / mean|Q|`` (batch, no grad)
    multiplies ``α log π − Q``, so the BC term keeps its weight as |Q| grows (TD3+BC: 2.5).
    None: the plain ``α log π − Q`` (paper)."""

    conservative_weight: float = 0.0
    """Weight ``c`` of a conservative term in the critic loss (CQL's, Kumar et al. 2020, with
    the policy's own actions): ``c · Σ_i mean_B [Q_i(s, π(s)) − Q_i(s, a)]``, the actions of
    the batch against the current policy's at the same states. It pushes down the critic's
    preference for the policy's actions over those in the data, the bias measured on tabletop
    (the critic rated the policy's action above the demo's at 93–98% of demo states, where the
    task's truth favours it at ~20%; docs/learning.md). 0: off (paper)."""

    bc_proposal: bool = False
    """The imitation proposal of IBRL (Hu et al. 2023), for the forward agent: a BC policy,
    trained on the forward demos when practice starts (``bc_proposal_steps``, the BC baseline's
    loss and network) and frozen, proposes an action beside the actor's. The agent acts with
    the one its critics rate higher (the ensemble's minimum, pessimistic where the actor's
    action is off the data) and bootstraps its TD target from the better of the two, so the
    critic learns the value of falling back on BC. The deployed policy is the same choice with
    the actor's mean action. A deviation from MEDAL++ (docs/learning.md); needs the forward
    agent's entropy bonus off (``forward_temperature`` 0) and the in-process practice loop:
    the runtime deploys the actor alone. False: off (paper)."""
    bc_proposal_steps: int = 10_000
    """Gradient steps of the proposal's BC training (the BC baseline's count)."""

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"AgentConfig.lr must be > 0, got {self.lr}")
        if not 0 <= self.gamma <= 1:
            raise ValueError(f"AgentConfig.gamma must be in [0, 1], got {self.gamma}")
        if not 0 < self.tau <= 1:
            raise ValueError(f"AgentConfig.tau must be in (0, 1], got {self.tau}")
        for name in ("batch_size", "update_to_data", "bc_proposal_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"AgentConfig.{name} must be a positive int, got {value!r}")
        for role in ("forward", "backward"):
            init = getattr(self, f"{role}_temperature")
            if not 0 <= init <= self.max_temperature:
                raise ValueError(f"AgentConfig.{role}_temperature must be in [0, max_temperature], got {init}")
            if getattr(self, f"{role}_learn_temperature") and init <= 0:
                raise ValueError(f"AgentConfig.{role}_temperature must be > 0 when {role}_learn_temperature")
        if not self.max_temperature > 0:
            raise ValueError(f"AgentConfig.max_temperature must be > 0, got {self.max_temperature}")

        if self.stddev_clip is not None and self.stddev_clip <= 0:
            raise ValueError(f"AgentConfig.stddev_clip must be > 0 or None, got {self.stddev_clip}")
        if self.augment_pad < 0:
            raise ValueError(f"AgentConfig.augment_pad must be >= 0, got {self.augment_pad}")
        if self.critic_grad_clip is not None and self.critic_grad_clip <= 0:
            raise ValueError("AgentConfig.critic_grad_clip must be > 0 or None")
        if self.bc_form not in ("log_likelihood", "mse", "beta_nll"):
            raise ValueError(f"AgentConfig.bc_form must be log_likelihood, mse or beta_nll, got {self.bc_form!r}")
        if not 0 <= self.bc_beta <= 1:
            raise ValueError(f"AgentConfig.bc_beta must be in [0, 1], got {self.bc_beta}")
        if not self.conservative_weight >= 0:
            raise ValueError(f"AgentConfig.conservative_weight must be >= 0, got {self.conservative_weight}")
        if self.bc_proposal and self.forward_temperature > 0:
            raise ValueError("AgentConfig.bc_proposal needs forward_temperature 0 (the proposal has no entropy term)")
        if self.q_scale is not None and not self.q_scale > 0:
            raise ValueError(f"AgentConfig.q_scale must be > 0 or None, got {self.q_scale}")

    def temperature(self, role: str) -> tuple[float, bool, float]:
        """Returns ``(initial α, learnt, target entropy per action dim)`` of agent ``role``
        (``forward`` or ``backward``); ValueError for another role."""
        if role not in ("forward", "backward"):
            raise ValueError(f"role must be 'forward' or 'backward', got {role!r}")
        return (getattr(self, f"{role}_temperature"), getattr(self, f"{role}_learn_temperature"),
                getattr(self, f"{role}_target_entropy"))
