"""The trainer's schedule (the ``[schedule]`` config section): when things train.

:class:`ScheduleConfig` holds the seed frames, the behaviour-cloning weight λ and its linear
decay per agent (:meth:`ScheduleConfig.bc_weight`), which agents have the BC term and which
demos the backward agent's demo buffer holds, how VICE's positives are chosen, the forward
reward's form, and the snapshot interval of the non-finite safety net. :class:`learner.trainer.MedalTrainer` reads it.
"""

import logging
from dataclasses import dataclass
from typing import Literal

from learner.rewards import VICE_REWARD_FORMS
from protocol.messages import BACKWARD, FORWARD

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    """When things train: seed frames, BC decay, VICE positives, reward form, safety nets."""

    seed_frames: int = 10_000
    """Environment steps of uniform random actions before any update (paper: 10k sim, 2k robot);
    they go into both agents' buffers, as in the authors' code."""
    bc_weight_start: float = 1.0
    """BC weight λ until `bc_decay_start` (paper robot and the authors' code: 1.0)."""
    bc_weight_end: float = 0.0
    """BC weight after the decay (paper robot: 0; the authors' sim code: 0.1)."""
    bc_weight_end_backward: float | None = None
    """The backward agent's λ after the decay when it has a BC term; None: `bc_weight_end`
    (the authors' Franka config ends it at 0.25, the forward agent's at 0.1)."""
    bc_decay_start: int = 0
    """Environment step at which λ starts to decay (the authors' sim code: 10k, the end of their seed frames)."""
    bc_decay_steps: int = 10_000
    """Environment steps over which λ decays linearly to `bc_weight_end` (paper robot: the first
    10k; the authors' sim code: 40k, from 10k to 50k)."""
    bc_agents: tuple[int, ...] = (FORWARD, BACKWARD)
    """Agents with the BC term (the authors' sim code: forward only)."""
    bc_batch_size: int = 256
    """Demo transitions in the separate BC batch of the `log_likelihood` form (the authors: a full batch)."""
    backward_demos: Literal["both", "backward"] = "both"
    """What the backward agent's demo buffer holds: `both` forward and backward demos (the
    authors' code), or `backward` demos only."""
    goal_frames: int = 10
    """H_goal: VICE positives are the last `goal_frames` observations of each forward demo episode."""
    vice_positives: Literal["auto", "last_frames", "reward"] = "last_frames"
    """`last_frames` (the paper): the last `goal_frames` frames of every forward demo; `reward`:
    observations reached with reward ≥ 1 (the authors' code; one frame per EARL door demo);
    `auto`: `reward` when demos carry such rewards, else last frames."""
    vice_reward_form: str = "neg_log_one_minus_d"
    """Forward reward: `log_d` = log σ(D) or `neg_log_one_minus_d` = −log(1 − σ(D)) (paper)."""
    snapshot_every: int = 1000
    """Agent updates between in-memory snapshots restored after a non-finite update."""

    def __post_init__(self) -> None:
        for name in ("seed_frames",):
            if getattr(self, name) < 0:
                raise ValueError(f"ScheduleConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not isinstance(self.bc_decay_start, int) or self.bc_decay_start < 0:
            raise ValueError(f"ScheduleConfig.bc_decay_start must be an int >= 0, got {self.bc_decay_start!r}")
        if self.backward_demos not in ("both", "backward"):
            raise ValueError(f"ScheduleConfig.backward_demos must be both or backward, got {self.backward_demos!r}")
        for name in ("bc_decay_steps", "goal_frames", "snapshot_every", "bc_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ScheduleConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("bc_weight_start", "bc_weight_end", "bc_weight_end_backward"):
            if (getattr(self, name) or 0.0) < 0:
                raise ValueError(f"ScheduleConfig.{name} must be >= 0, got {getattr(self, name)}")
        object.__setattr__(self, "bc_agents", tuple(self.bc_agents))
        if not set(self.bc_agents) <= {FORWARD, BACKWARD}:
            raise ValueError(f"ScheduleConfig.bc_agents must be within (0, 1), got {self.bc_agents}")
        if self.vice_positives not in ("auto", "last_frames", "reward"):
            raise ValueError(f"ScheduleConfig.vice_positives unknown: {self.vice_positives!r}")
        if self.vice_reward_form not in VICE_REWARD_FORMS:
            raise ValueError(f"ScheduleConfig.vice_reward_form must be one of {VICE_REWARD_FORMS}")

    def bc_weight(self, env_step: int, agent: int = FORWARD) -> float:
        """Returns ``agent``'s λ at environment step `env_step`: `bc_weight_start` until
        `bc_decay_start`, then linear to its end value (`bc_weight_end`, or for the backward
        agent `bc_weight_end_backward` when set) over `bc_decay_steps` (the authors' `linear_offset`)."""
        end = self.bc_weight_end
        if agent == BACKWARD and self.bc_weight_end_backward is not None:
            end = self.bc_weight_end_backward
        frac = min(max(env_step - self.bc_decay_start, 0) / self.bc_decay_steps, 1.0)
        return self.bc_weight_start + (end - self.bc_weight_start) * frac
