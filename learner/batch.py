"""The training batch every sampler returns and every agent consumes."""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import Tensor

logger = logging.getLogger(__name__)


@dataclasses.dataclass(kw_only=True)
class Batch:
    """A batch of transitions ``(obs, action, next_obs)``; rewards are computed at sampling time.

    Images are ``uint8 (B, C, H, W)`` and vectors ``float32 (B, D)``.
    """

    obs: dict[str, Tensor]
    """Observation at time t, by key."""
    action: Tensor
    """Action taken at t, ``float32 (B, A)`` in [-1, 1]."""
    next_obs: dict[str, Tensor]
    """Observation at t+1, by key."""
    discount: Tensor
    """``float32 (B,)``: γ, or 0 at a true terminal (none in the non-episodic setting)."""
    is_demo: Tensor
    """``bool (B,)``: whether the row came from the demonstration buffer."""

    def __post_init__(self) -> None:
        n = self.action.shape[0]
        for name, value in (("discount", self.discount), ("is_demo", self.is_demo)):
            if value.shape != (n,):
                raise ValueError(f"Batch.{name} must have shape ({n},), got {tuple(value.shape)}")
        for field, obs in (("obs", self.obs), ("next_obs", self.next_obs)):
            for key, value in obs.items():
                if value.shape[0] != n:
                    raise ValueError(f"Batch.{field}[{key!r}] has {value.shape[0]} rows, expected {n}")

    def __len__(self) -> int:
        return int(self.action.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Returns a copy on ``device`` (dtypes kept: images stay uint8 until the encoder)."""
        def move(t: Tensor) -> Tensor:
            return t.to(device, non_blocking=non_blocking)

        return Batch(
            obs={k: move(v) for k, v in self.obs.items()},
            action=move(self.action),
            next_obs={k: move(v) for k, v in self.next_obs.items()},
            discount=move(self.discount),
            is_demo=move(self.is_demo),
        )

    @property
    def demo_fraction(self) -> float:
        """Returns the fraction of rows that came from demonstrations."""
        return float(self.is_demo.float().mean()) if len(self) else 0.0
