"""AgentSchedule: forward/backward alternation every N steps, explicit switches, seed phase."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.messages import BACKWARD, FORWARD
from runtime.schedule import AgentSchedule, AgentScheduleConfig, agent_index

LOW, HIGH = np.array([-1.0, -0.5]), np.array([1.0, 0.5])


def test_alternates_every_n_steps() -> None:
    schedule = AgentSchedule(AgentScheduleConfig(switch_every=3, seed=0), LOW, HIGH)
    agents = [schedule.next_step(lambda a: True).agent for _ in range(10)]
    assert agents == [0, 0, 0, 1, 1, 1, 0, 0, 0, 1]
    assert schedule.switches == 3


def test_seed_phase_until_the_acting_agent_has_weights() -> None:
    schedule = AgentSchedule(AgentScheduleConfig(switch_every=2, seed=1), LOW, HIGH)
    loaded: set[int] = set()
    plans = [schedule.next_step(loaded.__contains__) for _ in range(2)]
    assert all(p.random for p in plans)
    loaded.add(FORWARD)  # forward weights arrive; backward still seeds
    plans = [schedule.next_step(loaded.__contains__) for _ in range(4)]
    assert [(p.agent, p.random) for p in plans] == [(1, True), (1, True), (0, False), (0, False)]
    actions = np.stack([schedule.random_action() for _ in range(200)])
    assert actions.dtype == np.float32 and np.all(actions >= LOW) and np.all(actions <= HIGH)
    assert actions[:, 0].std() > 0.3  # uniform, not constant


def test_seed_random_off_never_plans_random() -> None:
    schedule = AgentSchedule(AgentScheduleConfig(seed_random=False), LOW, HIGH)
    assert not schedule.next_step(lambda a: False).random


def test_explicit_switch_restarts_the_phase() -> None:
    schedule = AgentSchedule(AgentScheduleConfig(switch_every=3), LOW, HIGH)
    schedule.next_step(lambda a: True)
    schedule.next_step(lambda a: True)
    assert schedule.switch_agent("backward") == BACKWARD
    agents = [schedule.next_step(lambda a: True).agent for _ in range(4)]
    assert agents == [1, 1, 1, 0]
    assert schedule.switch_agent() == BACKWARD and schedule.agent_name == "backward"
    with pytest.raises(ValueError, match="agent"):
        schedule.switch_agent("sideways")
    assert agent_index(np.int64(1)) == 1
    with pytest.raises(ValueError):
        agent_index(True)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="switch_every"):
        AgentScheduleConfig(switch_every=0)
    with pytest.raises(ValueError, match="start_agent"):
        AgentScheduleConfig(start_agent=2)
