"""What the MEDAL++ trainer takes from the demonstrations.

The demo layout the trainer reads (:class:`DemoData`), the rows of the forward demos that are
VICE's positives (:func:`vice_positive_rows`), an agent's demo replay buffer
(:func:`demo_buffer`, the rows REDQ oversamples and the BC term draws on) and the vector-key
demo states the discriminators standardise their inputs by (:func:`demo_states`).
:class:`learner.trainer.MedalTrainer` builds its demo-derived inputs with these.
"""

import logging
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import torch

from learner.errors import TrainerError
from learner.replay import ReplayBuffer
from protocol.spaces import ObsSpec

logger = logging.getLogger(__name__)


class DemoData(Protocol):
    """Demo arrays in the project's RLDS layout (`protocol.demos.Demos` satisfies it)."""

    observations: Mapping[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    is_first: np.ndarray
    is_last: np.ndarray


def vice_positive_rows(demos: DemoData, goal_frames: int, mode: str) -> np.ndarray:
    """Returns demo rows used as VICE positives (goal observations).

    `reward` mode: rows i+1 where `rewards[i] ≥ 1` and row i is not last (the observation
    the rewarded action reached); `last_frames`: the last `goal_frames` rows of each episode;
    `auto`: `reward` when any such row exists, else `last_frames`.
    """
    rewards = np.asarray(demos.rewards, dtype=np.float64)
    is_last = np.asarray(demos.is_last, dtype=bool)
    reached = np.flatnonzero((rewards[:-1] >= 1.0) & ~is_last[:-1]) + 1
    if mode == "reward" or (mode == "auto" and len(reached)):
        return reached
    ends = np.flatnonzero(is_last)
    starts = np.flatnonzero(np.asarray(demos.is_first, dtype=bool))
    rows = [np.arange(max(s, e - goal_frames + 1), e + 1) for s, e in zip(starts, ends)]
    return np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)


def demo_buffer(sets: list[DemoData], obs_spec: ObsSpec, action_dim: int, gamma: float) -> ReplayBuffer | None:
    """Returns one buffer holding every demo set of `sets` (None when there is none), for
    observations `obs_spec` and actions of `action_dim`, discounting by `gamma`. Raises
    TrainerError when the sets hold no transition."""
    if not sets:
        return None
    n = sum(len(d.actions) for d in sets)
    buf = ReplayBuffer(obs_spec, action_dim, max(n, 2), discount=gamma)
    for demos in sets:
        obs = {k: np.asarray(demos.observations[k]) for k in obs_spec}
        buf.add_steps(obs, np.asarray(demos.actions, np.float32), np.asarray(demos.is_first, bool),
                      np.asarray(demos.is_last, bool))
    if buf.num_transitions() == 0:
        raise TrainerError("a demo set has no transition")
    return buf


def demo_states(demos: tuple[DemoData | None, DemoData | None], obs_spec: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Returns the vector-key observations of all demos (forward and backward), stacked."""
    out: dict[str, torch.Tensor] = {}
    for k in obs_spec:
        parts = [np.asarray(d.observations[k], dtype=np.float32) for d in demos if d is not None]
        if parts and parts[0].ndim == 2:
            out[k] = torch.from_numpy(np.concatenate(parts))
    return out
