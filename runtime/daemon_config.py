"""The settings the daemon derives from its :class:`~runtime.config.RuntimeConfig` for the parts
it assembles: the shield's limits, the control clock, the loop, the policy slot, the wire's
observation space."""

from __future__ import annotations

import dataclasses

from hardware.interfaces import Camera, Robot
from protocol.spaces import ArraySpec
from runtime.clock import ClockConfig
from runtime.config import LOCKSTEP_LAG_BATCHES, RuntimeConfig
from runtime.loop import LoopConfig
from runtime.policy_slot import PolicySlotConfig
from runtime.robots import RobotFacts, lockstep_shield_config, shield_config
from runtime.shield import ShieldConfig



def shield_settings(config: RuntimeConfig, robot: Robot, facts: RobotFacts) -> ShieldConfig:
    """Returns the shield's limits: the robot's own (``runtime.robots.shield_config``), and for
    a simulated robot in lock-step no holds for timing — no deadline-miss hold and no state or
    frame age limit. There the simulation only advances when the loop acts, the loop waits for
    the learner before ticks, and a hold would only record a zero action instead of the
    seed-phase random action or the policy's. A real robot keeps every watchdog, lock-step or not."""
    limits = shield_config(robot, facts, config.loop.hz)
    if not (config.loop.lockstep and facts.kind == "sim"):
        return limits
    return lockstep_shield_config(limits)


def clock_settings(config: RuntimeConfig) -> ClockConfig:
    """Returns the control clock's settings: ``loop.hz``, and in lock-step no spinning
    before deadlines (``spin_margin_s = 0``: the wait is one sleep). The spin buys sub-ms
    tick precision, which lock-step has no use for — the learner sets its pace — and at the
    fast rates lock-step runs at (``resetfree-sim``: 500, now 1000 Hz) it burned up to half
    of every period on a core the learner needs."""
    if config.loop.lockstep:
        return ClockConfig(rate_hz=config.loop.hz, spin_margin_s=0.0)
    return ClockConfig(rate_hz=config.loop.hz)


def loop_settings(config: RuntimeConfig, limits: ShieldConfig, facts: RobotFacts) -> LoopConfig:
    """Returns the control loop's config: the ``[loop]`` section's batching, warm-up and
    lock-step, the shield's frame age, and the robot's resets and goal draws (its facts)."""
    loop = config.loop
    return LoopConfig(max_frame_age_s=limits.max_frame_age_s, batch_steps=loop.batch_steps,
                      env_reset_every=facts.reset_interval, draw_goal_each_turn=facts.goal_per_turn,
                      operator_resets=facts.operator,
                      prefetch_lead_s=loop.prefetch_lead_s, prefetch_passes=loop.prefetch_passes,
                      lockstep=loop.lockstep)


def policy_settings(config: RuntimeConfig) -> PolicySlotConfig:
    """Returns the policy slot's config: the ``[policy]`` section, its exploration noise seeded
    with the top-level ``seed`` unless ``policy.seed`` is set."""
    if config.policy.seed is not None:
        return config.policy
    return dataclasses.replace(config.policy, seed=config.seed)


def observation_spaces(robot: Robot, cameras: list[Camera]) -> dict[str, ArraySpec]:
    """Returns the wire observation space: one spec per camera image plus the robot's arrays."""
    space = {c.name: c.image_spec.unbounded() for c in cameras}
    space.update({name: s.unbounded() for name, s in robot.state_spec.items()})
    return space


__all__ = ["LOCKSTEP_LAG_BATCHES", "clock_settings", "loop_settings", "observation_spaces",
           "policy_settings", "shield_settings"]
