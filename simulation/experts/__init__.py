"""Scripted experts: for every task a forward policy (do the task) and a backward policy
(undo it), used to generate demonstrations and as sanity baselines.

An expert may read privileged simulator state through the environment it is given (it is a
script, not a learned policy). Each task module ``simulation.experts.<task>`` defines
``FORWARD`` and ``BACKWARD`` classes implementing :class:`Expert`.
"""

from __future__ import annotations

import abc
import importlib
from typing import Any, Literal

import numpy as np

from simulation.tasks.base import TaskEnv

Direction = Literal["forward", "backward"]


class Expert(abc.ABC):
    """A scripted policy for one task and direction."""

    def __init__(self, noise: float = 0.0, seed: int | None = None) -> None:
        if noise < 0:
            raise ValueError(f"noise: must be >= 0, got {noise}")
        self.noise = noise
        self.rng = np.random.default_rng(seed)

    def reset(self, env: TaskEnv) -> None:
        """Called after every environment reset (or when taking over mid-episode)."""

    @abc.abstractmethod
    def _act(self, env: TaskEnv) -> np.ndarray:
        """Returns the noiseless action for the current simulator state, in ``[-1, 1]``."""

    def act(self, env: TaskEnv, observation: Any = None) -> np.ndarray:
        """Returns the next action (with Gaussian noise of scale ``noise``), ``float32``."""
        action = np.asarray(self._act(env), dtype=np.float64)
        if self.noise > 0:
            action = action + self.rng.normal(0.0, self.noise, action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    @abc.abstractmethod
    def done(self, env: TaskEnv) -> bool:
        """Returns whether this expert's goal is reached in the current state."""


def get_expert(task: str, direction: Direction, *, noise: float = 0.0, seed: int | None = None) -> Expert:
    """Returns the scripted expert for ``task`` and ``direction``.

    Raises:
        ValueError: for an unknown task or direction.
    """
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction: must be 'forward' or 'backward', got {direction!r}")
    try:
        module = importlib.import_module(f"simulation.experts.{task}")
    except ModuleNotFoundError as e:
        raise ValueError(f"task: no experts for {task!r}") from e
    return getattr(module, direction.upper())(noise=noise, seed=seed)
