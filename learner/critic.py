"""REDQ's critic ensemble (learner only: the runtime runs the actor, never a critic).

**The ensemble is one module**: weights carry a leading critic dimension and the members run
as one batched matmul (``torch.baddbmm``) instead of a Python loop, measured on the 2-core CPU
this project targets (see ``learner/bench.py``). :class:`EnsembleLinear` is that layer,
:class:`EnsembleTrunk` each member's own Linear → LayerNorm → tanh (state mode), and
:class:`CriticEnsemble` the ``Q_i(h, a)`` of :class:`learner.agent.RedqAgent`, on the features
of :class:`learner.networks.Encoder`.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from learner.networks import NetworkConfig

logger = logging.getLogger(__name__)


class EnsembleLinear(nn.Module):
    """``E`` independent linear layers evaluated as one batched matmul.

    Input ``(B, in)`` (shared by all members) or ``(E, B, in)``; output ``(E, B, out)``.
    """

    def __init__(self, ensemble: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(ensemble, 1, out_dim))
        for i in range(ensemble):  # orthogonal per member, as nn.Linear under weight_init
            nn.init.orthogonal_(self.weight.data[i].T)

    def forward(self, x: Tensor, members: Tensor | None = None) -> Tensor:
        """Returns ``(E', B, out)``; ``members`` (indices) selects a subset of the ensemble."""
        weight, bias = self.weight, self.bias
        if members is not None:
            weight, bias = weight[members], bias[members]
        if x.dim() == 2:
            # Shared input: one (B, in) @ (in, E*out) matmul beats E separate ones.
            e, i, o = weight.shape
            flat = weight.permute(1, 0, 2).reshape(i, e * o)
            out = x @ flat  # (B, E*out)
            return out.view(x.shape[0], e, o).transpose(0, 1) + bias
        return torch.baddbmm(bias, x, weight)


class EnsembleTrunk(nn.Module):
    """Each member's own Linear → LayerNorm → tanh of a shared input: ``(B, in) -> (E, B, F)``."""

    def __init__(self, ensemble: int, in_dim: int, feature_dim: int) -> None:
        super().__init__()
        self.linear = EnsembleLinear(ensemble, in_dim, feature_dim)
        self.norm_weight = nn.Parameter(torch.ones(ensemble, 1, feature_dim))
        self.norm_bias = nn.Parameter(torch.zeros(ensemble, 1, feature_dim))

    def forward(self, x: Tensor, members: Tensor | None = None) -> Tensor:
        """Returns ``(E', B, F)`` features of the selected members."""
        weight, bias = self.norm_weight, self.norm_bias
        if members is not None:
            weight, bias = weight[members], bias[members]
        y = self.linear(x, members)
        y = F.layer_norm(y, y.shape[-1:]) * weight + bias
        return torch.tanh(y)

    def member(self, i: int, x: Tensor) -> Tensor:
        """Member ``i``'s features ``(B, F)`` computed on their own (reference for tests)."""
        y = x @ self.linear.weight[i] + self.linear.bias[i]
        return torch.tanh(F.layer_norm(y, y.shape[-1:]) * self.norm_weight[i] + self.norm_bias[i])


class CriticEnsemble(nn.Module):
    """REDQ's ensemble of Q functions ``Q_i(h, a)``, one batched module; ``forward -> (E, B)``.

    ``trunk``: each member maps ``h`` through its own Linear → LayerNorm → tanh to
    ``feature_dim`` before the action joins (the authors' ``Qnet``; state mode)."""

    def __init__(self, repr_dim: int, action_dim: int, cfg: NetworkConfig, *, trunk: bool = False) -> None:
        super().__init__()
        self.num_critics = cfg.num_critics
        self.trunk = EnsembleTrunk(cfg.num_critics, repr_dim, cfg.feature_dim) if trunk else None
        in_dim = cfg.feature_dim if trunk else repr_dim
        self.l1 = EnsembleLinear(cfg.num_critics, in_dim + action_dim, cfg.hidden_dim)
        self.l2 = EnsembleLinear(cfg.num_critics, cfg.hidden_dim, cfg.hidden_dim)
        self.l3 = EnsembleLinear(cfg.num_critics, cfg.hidden_dim, 1)

    def forward(self, h: Tensor, a: Tensor, members: Tensor | None = None) -> Tensor:
        """Returns Q values ``(E, B)`` (or ``(len(members), B)`` for a subset of critics)."""
        if self.trunk is not None:
            f = self.trunk(h, members)  # (E', B, F)
            x = torch.cat([f, a.unsqueeze(0).expand(f.shape[0], *a.shape)], dim=-1)
        else:
            x = torch.cat([h, a], dim=-1)
        x = F.relu(self.l1(x, members))
        x = F.relu(self.l2(x, members))
        return self.l3(x, members).squeeze(-1)

    def member(self, i: int, h: Tensor, a: Tensor) -> Tensor:
        """Returns critic ``i``'s Q values ``(B,)`` computed on its own (reference for tests)."""
        x = torch.cat([self.trunk.member(i, h) if self.trunk is not None else h, a], dim=-1)
        for layer, act in ((self.l1, True), (self.l2, True), (self.l3, False)):
            x = x @ layer.weight[i] + layer.bias[i]
            x = F.relu(x) if act else x
        return x.squeeze(-1)
