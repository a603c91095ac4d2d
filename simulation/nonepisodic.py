"""EARL's non-episodic protocol as a gymnasium wrapper.

The agent lives in one long episode: :class:`NonEpisodic` never truncates or terminates by
itself, but every ``reset_every`` steps it resets the inner environment and says so in
``info``. By default the interval is the task's ``TaskInfo.reset_interval``: the paper's
schedule, every 10k steps for tabletop, door and peg (MEDAL++; the cube grasp never);
``reset_schedule="earl"`` takes EARL's own (200k steps for tabletop and door, 100k for peg).

How a caller sees a scheduled reset, on the step that completes the interval::

    obs, reward, terminated, truncated, info = env.step(action)
    info["env_reset"]          # True (False on every other step)
    info["final_observation"]  # the observation the action led to, before the reset
    info["final_info"]         # the inner env's info for that step
    obs                        # the first observation after the reset
    reward, info["success"]    # belong to the pre-reset step (the transition just taken)
    terminated, truncated      # whatever the inner env said (False for every TaskEnv)

So the transition to store is ``(previous obs, action, info["final_observation"])`` and the
next transition starts from ``obs`` (a new segment: ``is_first``).
"""

from __future__ import annotations

import logging
from typing import Any

import gymnasium as gym

from simulation.tasks.base import ResetSchedule, TaskInfo

logger = logging.getLogger(__name__)


class NonEpisodic(gym.Wrapper):
    """Resets the wrapped task every ``reset_every`` steps and otherwise never ends.

    Args:
        env: a task environment (``env.unwrapped.info`` is its :class:`TaskInfo`).
        reset_every: steps between scheduled resets; ``None`` takes the task's interval
            under ``reset_schedule`` (which may itself be ``None``: never); ``0`` = never.
        reset_schedule: ``paper`` (``TaskInfo.reset_interval``, the default) or ``earl``
            (``TaskInfo.earl_reset_interval``); used only when ``reset_every`` is None.
        reset_options: options passed to every scheduled reset (default
            ``{"init": "initial"}``, EARL's initial-state distribution).

    Raises:
        ValueError: for a negative ``reset_every`` or an unknown ``reset_schedule``.
    """

    def __init__(self, env: gym.Env, reset_every: int | None = None,
                 reset_options: dict[str, Any] | None = None, *,
                 reset_schedule: ResetSchedule = "paper") -> None:
        super().__init__(env)
        if reset_every is None:
            info: TaskInfo = getattr(env.unwrapped, "info")
            reset_every = info.scheduled_reset_interval(reset_schedule)
        if reset_every is not None and reset_every < 0:
            raise ValueError(f"reset_every: must be >= 0 or None, got {reset_every}")
        self.reset_every: int | None = reset_every or None
        """Steps between scheduled resets; ``None`` when the environment is never reset."""
        self.reset_options: dict[str, Any] = dict(reset_options or {"init": "initial"})
        self.resets = 0
        """Scheduled resets done so far (the initial ``reset()`` is not counted)."""
        self.total_steps = 0
        """Steps taken since construction."""
        self.steps_since_reset = 0
        """Steps taken since the last reset of the inner environment."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        """Resets the inner environment (the start of the one long episode).

        Returns ``(observation, info)``; ``options`` default to :attr:`reset_options`.
        """
        self.steps_since_reset = 0
        return self.env.reset(seed=seed, options=self.reset_options if options is None else options)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        """Steps the inner environment; on a scheduled reset returns the post-reset
        observation (see the module docstring for the exact ``info`` keys)."""
        observation, reward, terminated, truncated, info = self.env.step(action)
        self.total_steps += 1
        self.steps_since_reset += 1
        info = dict(info)
        info["env_reset"] = False
        if self.reset_every is not None and self.steps_since_reset >= self.reset_every:
            final_observation, final_info = observation, dict(info)
            observation, reset_info = self.env.reset(options=self.reset_options)
            self.steps_since_reset = 0
            self.resets += 1
            info.update(env_reset=True, final_observation=final_observation, final_info=final_info,
                        reset_info=reset_info)
            logger.debug("scheduled reset %d after %d steps", self.resets, self.total_steps)
        return observation, float(reward), bool(terminated), bool(truncated), info
