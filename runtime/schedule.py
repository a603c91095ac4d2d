"""Forward/backward agent alternation (MEDAL, Sharma et al. 2023, Algorithm 1) and the seed phase.

The forward agent acts for ``switch_every`` steps, then the backward agent for as many,
and so on. Until the first weights for the acting agent have arrived, the step takes a
uniform random action (the seed phase). The learner publishes no weights before its seed
phase — its first ``schedule.seed_frames`` ingested steps — is over, so this one rule makes
exactly those steps random without the runtime knowing the count (docs/architecture.md,
"The seed phase").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from protocol.messages import AGENTS, BACKWARD, FORWARD
from protocol.session import DEFAULT_SWITCH_INTERVAL

logger = logging.getLogger(__name__)



def agent_index(agent: int | str) -> int:
    """Returns 0 (forward) or 1 (backward) for an index or a name; raises ValueError otherwise."""
    if isinstance(agent, str) and agent in AGENTS:
        return AGENTS.index(agent)
    if isinstance(agent, (int, np.integer)) and not isinstance(agent, bool) and int(agent) in (0, 1):
        return int(agent)
    raise ValueError(f"agent: expected 0/1 or 'forward'/'backward', got {agent!r}")


@dataclass(frozen=True, kw_only=True)
class AgentScheduleConfig:
    """Agent alternation and seed-phase settings."""

    switch_every: int = DEFAULT_SWITCH_INTERVAL
    """Steps each agent acts before the other takes over (authors' code: 200)."""
    start_agent: int = FORWARD
    """Agent that acts first (0 forward, 1 backward)."""
    seed_random: bool = True
    """Act uniformly at random while the acting agent has no weights yet."""
    seed: int | None = None
    """Seed of the random actions (None: fresh entropy)."""

    def __post_init__(self) -> None:
        if self.switch_every < 1:
            raise ValueError(f"switch_every: must be positive, got {self.switch_every}")
        if self.start_agent not in (FORWARD, BACKWARD):
            raise ValueError(f"start_agent: must be 0 or 1, got {self.start_agent}")


@dataclass(frozen=True)
class StepPlan:
    """Who acts this step and how."""

    agent: int
    """0 forward, 1 backward; tags the recorded step."""
    random: bool
    """Whether the action is a seed-phase random action (no weights yet)."""


class AgentSchedule:
    """Decides, step by step, which agent acts and whether it acts at random."""

    def __init__(self, config: AgentScheduleConfig, action_low: np.ndarray, action_high: np.ndarray) -> None:
        self.config = config
        self._low = np.asarray(action_low, dtype=np.float64)
        self._high = np.asarray(action_high, dtype=np.float64)
        if self._low.shape != self._high.shape or self._low.ndim != 1:
            raise ValueError("action_low/action_high: need 1-D arrays of one shape")
        if not (np.all(np.isfinite(self._low)) and np.all(np.isfinite(self._high))):
            raise ValueError("action_low/action_high: random actions need finite bounds")
        self._rng = np.random.default_rng(config.seed)
        self._agent = config.start_agent
        self._steps_in_phase = 0
        self.switches = 0
        """Agent changes so far (scheduled and explicit)."""

    @property
    def agent(self) -> int:
        """The agent that acts next (0 forward, 1 backward)."""
        return self._agent

    @property
    def agent_name(self) -> str:
        """``"forward"`` or ``"backward"``."""
        return AGENTS[self._agent]

    @property
    def turn_complete(self) -> bool:
        """Whether the acting agent has taken every step of its turn (the next step switches)."""
        return self._steps_in_phase >= self.config.switch_every

    def next_step(self, has_policy: Callable[[int], bool]) -> StepPlan:
        """Returns the plan for the next step and advances the schedule by one step.

        ``has_policy(agent)`` says whether weights for that agent are loaded.
        """
        if self._steps_in_phase >= self.config.switch_every:
            self._set_agent(1 - self._agent, "scheduled")
        self._steps_in_phase += 1
        random = self.config.seed_random and not has_policy(self._agent)
        return StepPlan(agent=self._agent, random=random)

    def switch_agent(self, agent: int | str | None = None) -> int:
        """Switches to ``agent`` (or to the other one when None) and restarts its phase.

        Returns the new acting agent; raises ValueError for an unknown agent.
        """
        target = 1 - self._agent if agent is None else agent_index(agent)
        self._set_agent(target, "command")
        return self._agent

    def random_action(self) -> np.ndarray:
        """Returns a float32 action drawn uniformly from the action bounds."""
        return self._rng.uniform(self._low, self._high).astype(np.float32)

    def _set_agent(self, agent: int, why: str) -> None:
        if agent != self._agent:
            self.switches += 1
            logger.info("schedule: %s agent takes over (%s)", AGENTS[agent], why)
        self._agent = agent
        self._steps_in_phase = 0
