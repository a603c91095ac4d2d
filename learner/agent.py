"""The REDQ agent on a DrQ-v2 encoder, with MEDAL++'s behaviour-cloning regulariser.

One :meth:`RedqAgent.update` is DrQ-v2's recipe with REDQ's critic (Chen et al., 2021):
augment → encode (obs with grad, next_obs under ``no_grad``) → critic update against the
minimum over a random subset of ``num_min_target`` target critics → actor update on the
*detached* features (the actor never trains the encoder) with the BC term on the batch's
demo rows → Polyak averaging of the target critics.

Speed (measured by ``resetfree-bench learner`` on the project's 2-core AMX CPU): the encoder
dominates. The conv trunk runs under bfloat16 autocast (``AgentConfig.encoder_bf16``; oneDNN
uses AMX) and glibc's malloc is told to keep freed activations (:func:`tune_cpu_allocator`)
instead of unmapping ~100 MB each step; each roughly halves the update time.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import logging
import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from learner.agent_config import AgentConfig  # re-exported: callers import it from here
from learner.augment import RandomShift
from learner.batch import Batch
from learner.critic import CriticEnsemble
from learner.networks import Actor, Encoder, NetworkConfig, PolicyNetwork, is_image, native_bf16, uses_state_trunk
from learner.proposal import choose, load_proposal
from protocol.spaces import ObsSpec

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def tune_cpu_allocator() -> bool:
    """Stops glibc malloc from returning large blocks to the OS after each free.

    A pixel update allocates and frees ~100 MB of activations per step; by default glibc
    serves each from a fresh ``mmap`` and unmaps it on free (page faults every step).
    Disabling mmap allocations and trimming keeps that memory in the heap for reuse —
    measured 1.7× on the fp32 batch-256 pixel update (``resetfree-bench learner``). Fresh
    heap memory stays lazily committed (a large ``np.zeros`` costs no RSS until touched),
    but freed blocks below 1 GiB stay in the process. Process-wide; call once at learner
    start-up. Returns whether the settings were applied (False off glibc). Does not block.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**30))
    except (OSError, AttributeError) as e:
        logger.warning("mallopt unavailable (%s); keeping the default allocator settings", e)
        return False
    logger.info("glibc malloc tuned: mmap off, trim threshold 1 GiB (applied=%s)", ok)
    return ok


@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Turns off parameter gradients of ``module`` for the block (saves their weight grads)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


_ACTED_WINDOW = 1000
"""Actions per ``proposal/acted_fraction`` figure (a lock-step loop acts once per update)."""


class RedqAgent:
    """REDQ actor-critic on a DrQ-v2 encoder; owns its networks and optimisers.

    Size: one responsibility, REDQ's update (critic, actor, temperature, target critics) on
    networks and optimisers that every step uses and :meth:`state_dict` saves together; its
    config (:mod:`learner.agent_config`) and networks (:mod:`learner.networks`,
    :mod:`learner.critic`) are modules of their own.

    ``encoder`` may be passed in to share one (e.g. with a discriminator); the agent then
    trains it with its critic loss like its own. ``role`` (``forward``/``backward``) picks the
    agent's entropy settings from :class:`AgentConfig`.
    """

    def __init__(
        self,
        obs_spec: ObsSpec,
        action_dim: int,
        agent_cfg: AgentConfig,
        net_cfg: NetworkConfig,
        device: torch.device | str = "cpu",
        encoder: Encoder | None = None,
        *,
        role: str = "forward",
    ) -> None:
        self.cfg = agent_cfg
        self.role = role
        init_alpha, self.learn_alpha, target_per_dim = agent_cfg.temperature(role)
        self.net_cfg = net_cfg
        self.device = torch.device(device)
        self.obs_spec = dict(obs_spec)
        self.action_dim = action_dim
        self.encoder = (encoder if encoder is not None else Encoder(obs_spec, net_cfg)).to(self.device)
        if self.encoder.image_keys:
            self.encoder.to(memory_format=torch.channels_last)
        self._bf16 = bool(agent_cfg.encoder_bf16 and self.encoder.image_keys and native_bf16(self.device))
        if agent_cfg.encoder_bf16 and self.encoder.image_keys and not self._bf16:
            logger.info("agent: %s has no native bfloat16; the encoder trains in float32", self.device)
        rd = self.encoder.repr_dim
        trunk = uses_state_trunk(self.encoder, net_cfg)
        self.actor = Actor(rd, action_dim, net_cfg, trunk=trunk).to(self.device)
        self.critic = CriticEnsemble(rd, action_dim, net_cfg, trunk=trunk).to(self.device)
        self.critic_target = CriticEnsemble(rd, action_dim, net_cfg, trunk=trunk).to(self.device)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.policy = PolicyNetwork(self.encoder, self.actor)
        self.augment = RandomShift(agent_cfg.augment_pad)
        self.critic_opt = torch.optim.Adam(
            [*self.encoder.parameters(), *self.critic.parameters()], lr=agent_cfg.lr, fused=True
        )
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=agent_cfg.lr, fused=True)
        self._alpha_off = init_alpha == 0
        self.log_alpha = torch.tensor(math.log(max(init_alpha, 1e-30)), device=self.device,
                                      requires_grad=self.learn_alpha)
        self._log_alpha_max = math.log(agent_cfg.max_temperature)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=agent_cfg.lr)
        self.target_entropy = target_per_dim * float(action_dim)
        self.reward_abs_max = 0.0
        """Largest |reward| seen in an update: ``q/bound`` is this over ``1 − γ``."""
        self.proposal: PolicyNetwork | None = None
        """The frozen BC policy whose action competes with the actor's (``AgentConfig.bc_proposal``;
        :meth:`set_proposal`), or None."""
        self._acted = [0, 0]  # [proposal chosen, actions taken] since the last acted_fraction figure
        self._target_chose: float | None = None  # the proposal's share of the last TD target's actions

    @property
    def alpha(self) -> Tensor:
        """Current entropy temperature (0 when the bonus is off)."""
        if self._alpha_off:
            return torch.zeros((), device=self.device)
        return self.log_alpha.detach().exp()

    @property
    def noise_clip(self) -> float | None:
        """Noise clip for target and actor samples: ``stddev_clip`` without entropy bonus, else None."""
        return self.cfg.stddev_clip if self._alpha_off else None

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._bf16)

    # ------------------------------------------------------------------ acting
    def act(self, obs: Mapping[str, np.ndarray], *, explore: bool) -> np.ndarray:
        """Returns an action in [-1, 1]: ``(A,)`` for one observation, ``(B, A)`` for a batch.

        ``explore`` samples from the tanh-Gaussian; otherwise the mean action. With a proposal
        (:meth:`set_proposal`) each row is that or the proposal's action, whichever the critics
        rate higher. Blocks for one forward pass.
        """
        single = self._is_single(obs)
        tensors = obs_to_tensors(obs, self.obs_spec, self.device)
        if single:
            tensors = {k: v.unsqueeze(0) for k, v in tensors.items()}
        with torch.no_grad():
            h = self.encoder(tensors)
            sampled, _, mean_action = self.actor.sample(h)
            action = sampled if explore else mean_action
            if self.proposal is not None:
                action, chose, _ = choose(self.critic, self.proposal, h, tensors, action)
                if explore:  # practice's actions, not an evaluation's
                    self._acted[0] += int(chose.sum())
                    self._acted[1] += int(chose.numel())
        out = action.float().cpu().numpy()
        return out[0] if single else out

    def set_proposal(self, weights: Mapping[str, Tensor]) -> None:
        """Sets the frozen BC policy (``build_actor`` tensors) whose action competes with the
        actor's in :meth:`act` and in the TD target (:mod:`learner.proposal`)."""
        self.proposal = load_proposal(weights, self.obs_spec, self.action_dim, self.net_cfg, self.device)

    def _is_single(self, obs: Mapping[str, np.ndarray]) -> bool:
        key = next(iter(self.obs_spec))
        shape = self.obs_spec[key][0]
        return np.ndim(obs[key]) == len(shape)

    # ------------------------------------------------------------------ learning
    def update(
        self, batch: Batch, reward: Tensor, *, bc_weight: float, step: int, update_actor: bool = True,
        demo_batch: Batch | None = None,
    ) -> dict[str, float]:
        """One REDQ update; returns metrics (``losses/*``, ``values/*``, ``q/*``, ``charts/*``).

        ``reward`` is ``(B,)``, computed by the caller at sampling time. ``update_actor=False``
        runs the critic step only (for ``update_to_data`` > 1). ``demo_batch`` is the separate
        demo batch of the ``log_likelihood`` BC form (ignored by ``mse``, which uses the demo
        rows of ``batch``). Blocks for the whole update.
        """
        batch = batch.to(self.device)
        reward = reward.to(self.device, torch.float32)
        # 1. augment (images only, on uint8)
        obs = self.augment(batch.obs)
        next_obs = self.augment(batch.next_obs)
        # 2. encode: obs with grad (critic trains the encoder), next_obs without
        with self._autocast():
            h = self.encoder(obs).float()
            with torch.no_grad():
                h_next = self.encoder(next_obs).float()
        metrics = self.update_critic(h, batch.action, reward, batch.discount, h_next, next_obs=next_obs)
        if self.proposal is not None and self._acted[1] >= _ACTED_WINDOW:
            metrics["proposal/acted_fraction"] = self._acted[0] / self._acted[1]
            self._acted = [0, 0]
        # 3. the actor sees detached features: it never trains the encoder (DrQ-v2)
        if update_actor:
            demo = None
            if demo_batch is not None and bc_weight > 0:
                demo_batch = demo_batch.to(self.device)
                with torch.no_grad(), self._autocast():  # the BC term never trains the encoder
                    demo = (self.encoder(self.augment(demo_batch.obs)).float(), demo_batch.action)
            metrics.update(self.update_actor(h.detach(), bc_weight, demo=demo))
        # 4. targets
        self.soft_update_targets()
        metrics["charts/step"] = float(step)
        return metrics

    def target_q(self, h_next: Tensor, reward: Tensor, discount: Tensor,
                 next_obs: Mapping[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Returns ``(target (B,), members used)``: REDQ's min over a random critic subset.

        With a proposal (:meth:`set_proposal`) and ``next_obs``, the next action is the
        actor's or the proposal's, whichever that subset's min rates higher (IBRL's bootstrap);
        the entropy term is off then (``AgentConfig.bc_proposal`` needs α = 0)."""
        with torch.no_grad():
            action, log_prob, _ = self.actor.sample(h_next, noise_clip=self.noise_clip)
            members = torch.randperm(self.net_cfg.num_critics, device=self.device)[
                : self.net_cfg.num_min_target
            ]
            if self.proposal is not None and next_obs is not None:  # α = 0 here: no entropy term
                _, chose, q_next = choose(self.critic_target, self.proposal, h_next, next_obs, action, members)
                self._target_chose = float(chose.float().mean())
            else:
                q_next = self.critic_target(h_next, action, members).min(dim=0).values
                q_next = q_next - self.alpha * log_prob
            return reward + discount * q_next, members

    def update_critic(
        self, h: Tensor, action: Tensor, reward: Tensor, discount: Tensor, h_next: Tensor,
        next_obs: Mapping[str, Tensor] | None = None,
    ) -> dict[str, float]:
        """Critic (and encoder) step on every ensemble member; returns its metrics.
        ``next_obs``: the raw next observations, for the proposal's bootstrap (:meth:`target_q`)."""
        self._target_chose = None
        target, _ = self.target_q(h_next, reward, discount, next_obs)
        q = self.critic(h, action)  # (E, B)
        self._q_data = q.detach().mean(dim=0)  # Q(s, a_data), for q/overestimation
        self.reward_abs_max = max(self.reward_abs_max, float(reward.abs().max()))
        # Sum over members of each member's MSE: every critic regresses to the same target.
        loss = (q - target.unsqueeze(0)).pow(2).mean(dim=1).sum()
        conservative = None
        if self.cfg.conservative_weight > 0:
            with torch.no_grad():
                policy_action, _, _ = self.actor.sample(h.detach(), noise_clip=self.noise_clip)
            conservative = (self.critic(h, policy_action) - q).mean(dim=1).sum()
            loss = loss + self.cfg.conservative_weight * conservative
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.critic_grad_clip is not None:
            nn.utils.clip_grad_norm_(
                [*self.encoder.parameters(), *self.critic.parameters()], self.cfg.critic_grad_clip
            )
        self.critic_opt.step()
        metrics = {} if conservative is None else {"losses/conservative": float(conservative.detach())}
        if self._target_chose is not None:
            metrics["proposal/target_fraction"] = self._target_chose
        return metrics | {
            "losses/critic": float(loss.detach()),
            "values/q_mean": float(q.detach().mean()),
            "values/target_mean": float(target.mean()),
            "values/reward_mean": float(reward.mean()),
            "q/abs_max": float(q.detach().abs().max()),
            "q/bound": self.reward_abs_max / max(1.0 - self.cfg.gamma, 1e-6),
        }

    def actor_loss(
        self, h: Tensor, bc_weight: float, demo: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Returns ``(loss, metrics)``: the RL term ``α log π − mean_i Q_i`` with the BC term.

        With ``demo`` = demo features and actions: ``(1 − λ)·L_RL + λ·L_BC``, ``L_BC`` the mean
        over the demo batch of ``−log π(a_d | s_d)`` (``log_likelihood``), ``‖tanh(μ(s_d)) −
        a_d‖²`` (``mse``) or the β-weighted log-likelihood (``beta_nll``). Without demo data the RL term keeps its full weight.
        """
        action, log_prob, _ = self.actor.sample(h, noise_clip=self.noise_clip)
        q = self.critic(h, action).mean(dim=0)  # REDQ: the policy ascends the ensemble mean
        policy_loss = (self.alpha * log_prob - q).mean()
        if self.cfg.q_scale is not None:  # TD3+BC: the Q term in units of its own magnitude
            policy_loss = policy_loss * (self.cfg.q_scale / q.detach().abs().mean().clamp_min(1e-6))
        zero = torch.zeros((), device=h.device)
        if demo is None:
            bc, weight = zero, 0.0
        elif self.cfg.bc_form == "log_likelihood":
            bc, weight = -self.actor.log_prob(*demo).mean(), bc_weight
        elif self.cfg.bc_form == "beta_nll":
            bc, weight = self.actor.beta_nll(*demo, beta=self.cfg.bc_beta).mean(), bc_weight
        else:
            demo_h, demo_a = demo
            bc, weight = (torch.tanh(self.actor(demo_h)[0]) - demo_a).pow(2).sum(-1).mean(), bc_weight
        loss = (1.0 - weight) * policy_loss + weight * bc
        metrics = {
            "losses/actor": float(policy_loss.detach()),
            "losses/bc": float(bc.detach()),
            "charts/bc_weight": float(bc_weight),
            "charts/entropy": float(-log_prob.detach().mean()),
            "_log_prob": float(log_prob.detach().mean()),
        }
        q_data = getattr(self, "_q_data", None)
        if q_data is not None and q_data.shape == q.shape:
            metrics["q/overestimation"] = float(q.detach().mean() - q_data.mean())
        return loss, metrics

    def update_actor(
        self, h: Tensor, bc_weight: float, demo: tuple[Tensor, Tensor] | None = None,
    ) -> dict[str, float]:
        """Actor (and temperature) step on detached features ``h``; returns its metrics."""
        with _frozen(self.critic):  # the actor's loss must not train (or grad) the critics
            loss, metrics = self.actor_loss(h, bc_weight, demo)
            self.actor_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.actor_opt.step()
        log_prob = metrics.pop("_log_prob")
        if self.learn_alpha:
            alpha_loss = -(self.log_alpha * (log_prob + self.target_entropy))
            self.alpha_opt.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_opt.step()
            with torch.no_grad():
                self.log_alpha.clamp_(max=self._log_alpha_max)
            metrics["losses/alpha"] = float(alpha_loss.detach())
        metrics["charts/alpha"] = float(self.alpha)
        metrics["charts/target_entropy"] = self.target_entropy
        return metrics

    def soft_update_targets(self) -> None:
        """Polyak: ``θ' ← (1 − τ) θ' + τ θ`` for every target critic parameter."""
        with torch.no_grad():
            torch._foreach_lerp_(
                list(self.critic_target.parameters()), list(self.critic.parameters()), self.cfg.tau
            )

    # ------------------------------------------------------------------ state
    def policy_state_dict(self) -> dict[str, Tensor]:
        """Returns CPU copies of the policy tensors, named as ``build_actor(...).state_dict()``."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.policy.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        """Returns networks, target critics, optimisers, temperature and the proposal, if any
        (nested state dicts)."""
        return {
            "encoder": self.encoder.state_dict(),
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "alpha_opt": self.alpha_opt.state_dict(),
            "reward_abs_max": torch.tensor(self.reward_abs_max, dtype=torch.float64),
        } | ({} if self.proposal is None else {"proposal": self.proposal.state_dict()})

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Loads :meth:`state_dict` output in place; raises KeyError/RuntimeError on mismatch."""
        self.encoder.load_state_dict(state["encoder"])
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        # deepcopy: Optimizer.load_state_dict keeps same-device tensors by reference, which
        # would tie this agent's Adam moments to the source's.
        self.critic_opt.load_state_dict(copy.deepcopy(state["critic_opt"]))
        self.actor_opt.load_state_dict(copy.deepcopy(state["actor_opt"]))
        with torch.no_grad():
            self.log_alpha.copy_(torch.as_tensor(state["log_alpha"]))
        self.alpha_opt.load_state_dict(copy.deepcopy(state["alpha_opt"]))
        self.reward_abs_max = float(state["reward_abs_max"])
        if "proposal" in state:
            self.set_proposal(state["proposal"])


def obs_to_tensors(obs: Mapping[str, np.ndarray], obs_spec: ObsSpec, device: torch.device) -> dict[str, Tensor]:
    """Returns ``obs`` as tensors on ``device`` (images keep uint8, vectors become float32)."""
    out: dict[str, Tensor] = {}
    for key, (shape, dtype) in obs_spec.items():
        t = torch.as_tensor(np.asarray(obs[key]), device=device)
        out[key] = t if is_image(shape, dtype) else t.float()
    return out
