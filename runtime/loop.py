"""The fixed-rate control loop: observe → policy → shield → act → record, every tick.

One :meth:`ControlLoop.run` coroutine; cancelling it stops the loop and ``robot.stop()``
runs in ``finally``. A tick never waits: camera frames come from ``read_latest``, the robot
state from ``read_state``, the policy runs in ~1–2 ms, recorded steps go to a non-blocking
sink (the outbox). The loop holds the robot (zero motion, gripper unchanged) when paused,
when the sink cannot take data, and whenever the shield's watchdog fires; e-stop calls
``robot.stop()`` at once and sends nothing until :meth:`ControlLoop.resume`.

Recording follows RLDS (:mod:`runtime.recording`): a segment ends at a pause, a hold
without observation, an e-stop, go-home, an environment reset, a goal draw or shutdown.
Reading the devices is :mod:`runtime.sensors`; a simulated robot's resets and goal draws
between ticks are :mod:`runtime.sim_events`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from hardware.interfaces import Camera, HardwareError, Robot
from protocol.messages import AGENTS, LoopStats
from protocol.value_checks import observation_value_error
from runtime.clock import Clock, Tick
from runtime.errors import OutboxError, PolicyError
from runtime.lateness import LateTickProbe
from runtime.policy_slot import PolicySlot
from runtime.recording import BatchBuilder, StepSink
from runtime.schedule import AgentSchedule
from runtime.sensors import observation_of, read_sensors
from runtime.shield import SENSOR_HOLD_REASONS, Shield, ShieldResult
from runtime.sim_events import SimEvents
from runtime.stats import RuntimeStats

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """Behaviour of the control loop."""

    max_frame_age_s: float = 0.2
    """Camera frames older than this are not used (the shield then holds)."""
    batch_steps: int = 16
    """Flush recorded steps to the sink every this many steps…"""
    batch_interval_s: float = 0.5
    """…or when the oldest waiting step is this old."""
    stats_log_interval_s: float = 5.0
    """Interval of the INFO stats line."""
    env_reset_every: int | None = None
    """Simulated robots only: call ``robot.reset_environment()`` every this many recorded steps."""
    draw_goal_each_turn: bool = False
    """Simulated multi-goal tasks only: call ``robot.draw_goal()`` when a forward turn ends, as
    MEDAL's loop draws a goal at every switch to the backward agent. The segment ends there, so
    the turn's last step becomes its closing frame (as at a reset)."""
    operator_resets: bool = False
    """Simulated robots only: when a backward turn ends and ``robot.scene_lost``, reset the
    environment as the person watching a reset-free run would, and count it as an intervention
    (``sim_events.interventions``). The segment ends there, as at a scheduled reset."""
    record: bool = True
    """Record steps to the sink (False: evaluation runs)."""
    prefetch_lead_s: float = 0.010
    """Warm the CPU caches for the acting policy this long before each tick: it runs on the
    previous observation (``PolicySlot.prefetch``; 0 turns it off). Long enough for the
    warm-up passes (≈2–4 ms each here) to end before the tick; skipped when the period is
    under twice the lead."""
    lockstep: bool = False
    """The loop is paced by a lock-step learner (``gate``), not by its clock: late ticks are
    routine (logged at INFO) and the clock's rate is a ceiling."""
    prefetch_passes: int | None = None
    """Warm-up inferences per tick; None: one per 30 ms of period, 1 to 3 (the longer the
    learner had the core, the colder the caches). A pass is skipped when it could run into
    the tick. On this 2-core CPU with a learner running, a 10 Hz tick's inference took 2.8 ms
    after one pass, 1.95 after two, 1.66 back to back; at 50 Hz one pass suffices, and two
    cost 8 overruns in 15,000 ticks."""

    def passes_for(self, period_s: float) -> int:
        """Returns the warm-up passes per tick at ``period_s``."""
        if self.prefetch_passes is not None:
            return self.prefetch_passes
        return min(3, max(1, int(period_s / 0.030)))

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_frame_age_s) and self.max_frame_age_s > 0):
            raise ValueError(f"max_frame_age_s: must be positive, got {self.max_frame_age_s}")
        if self.batch_steps < 1:
            raise ValueError(f"batch_steps: must be positive, got {self.batch_steps}")
        if not self.batch_interval_s > 0:
            raise ValueError(f"batch_interval_s: must be positive, got {self.batch_interval_s}")
        if not self.stats_log_interval_s > 0:
            raise ValueError(f"stats_log_interval_s: must be positive, got {self.stats_log_interval_s}")
        if not (math.isfinite(self.prefetch_lead_s) and self.prefetch_lead_s >= 0):
            raise ValueError(f"prefetch_lead_s: must be >= 0, got {self.prefetch_lead_s}")
        if self.prefetch_passes is not None and self.prefetch_passes < 1:
            raise ValueError(f"prefetch_passes: must be positive, got {self.prefetch_passes}")
        if self.env_reset_every is not None and self.env_reset_every < 1:
            raise ValueError(f"env_reset_every: must be positive or None, got {self.env_reset_every}")


class ControlLoop:
    """Runs the robot at the clock's rate; see the module docstring.

    Size: the tick, the operator's commands (pause, e-stop, go-home, agent switch) and the
    statistics share one hold state, one recording segment and one set of counters, all on the
    event loop; reading the devices (:mod:`runtime.sensors`) and a simulated robot's resets and
    goal draws (:mod:`runtime.sim_events`) are modules of their own.
    """

    def __init__(
        self,
        *,
        robot: Robot,
        cameras: Sequence[Camera],
        policy: PolicySlot,
        shield: Shield,
        schedule: AgentSchedule,
        clock: Clock,
        sink: StepSink | None,
        config: LoopConfig | None = None,
        gate: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``gate`` (optional) is awaited before every tick — lock-step simulation waits there
        for the learner; after a gate that held the loop past a deadline the tick starts at
        once, on a fresh grid. Raises ValueError when ``config`` asks for environment resets or
        goal draws and ``robot`` is not a :class:`~hardware.interfaces.SimulatedRobot`."""
        self.config = config or LoopConfig()
        self.robot, self.cameras, self.policy = robot, list(cameras), policy
        self.shield, self.schedule, self.clock, self.sink = shield, schedule, clock, sink
        self._gate = gate
        self._builder = BatchBuilder()
        self.sim_events = SimEvents(robot=robot, schedule=schedule, clock=clock, end_segment=self._builder.end_segment,
                                    reset_every=self.config.env_reset_every,
                                    draw_goal_each_turn=self.config.draw_goal_each_turn,
                                    operator_resets=self.config.operator_resets)
        """Environment resets and goal draws between ticks (simulated robots only)."""
        self._paused = False
        self._estopped = False
        self._homing = False
        self._blocked = False
        self.steps = 0
        self.held_ticks = 0
        self.send_errors = 0
        self.last_result: ShieldResult | None = None
        self._last_stats_log = time.monotonic()
        self._last_observation: dict[str, np.ndarray] | None = None
        """The newest complete observation (the policy's cache warm-up input)."""
        self.lateness = LateTickProbe(log_level=logging.INFO if self.config.lockstep else logging.WARNING)
        """Explains, logs and counts late ticks."""

    # ------------------------------------------------------------------ commands
    def pause(self) -> None:
        """Holds the robot and stops recording until :meth:`resume`."""
        self._paused = True
        logger.info("loop: paused")

    def resume(self) -> None:
        """Leaves pause and e-stop; the next step starts a new segment."""
        if self._estopped:
            logger.warning("loop: e-stop released by resume")
        self._paused = self._estopped = False
        logger.info("loop: resumed")

    def estop(self, shutdown: str | None = None) -> None:
        """Stops the robot at once (``robot.stop()``) and sends nothing until :meth:`resume`.

        ``shutdown`` names a requested stop of the runtime (``SIGINT``: Ctrl-C): the robot stops
        just the same, but that is routine, logged at INFO; an e-stop command is a WARNING."""
        already = self._estopped
        self._estopped = True
        self._builder.end_segment()
        self.robot.stop()
        if shutdown is not None:
            if not already:
                logger.info("loop: robot stopped (%s)", shutdown)
        else:
            logger.warning("loop: E-STOP")

    def switch_agent(self, agent: int | str | None = None) -> int:
        """Switches the acting agent (None: the other one); returns the new one."""
        self._builder.end_segment()
        return self.schedule.switch_agent(agent)

    async def go_home(self) -> None:
        """Runs ``robot.home()`` in a thread while the loop holds; returns when the robot is home.

        Blocks the caller (not the loop) for the motion; a second call while homing returns at once.
        """
        if self._homing:
            return
        self._homing = True
        self._builder.end_segment()
        try:
            await asyncio.to_thread(self.robot.home)
        finally:
            self._homing = False

    @property
    def estopped(self) -> bool:
        """Whether the loop is e-stopped (until :meth:`resume`)."""
        return self._estopped

    @property
    def holding(self) -> bool:
        """Whether the loop currently holds instead of acting."""
        return self._paused or self._estopped or self._homing or self._blocked

    # ------------------------------------------------------------------ run
    async def run(self) -> None:
        """Ticks until cancelled; ``robot.stop()`` and a final flush run in ``finally``."""
        if self.config.lockstep:
            logger.info("loop: starting lock-stepped with the learner (at most %.0f Hz) with %d camera(s)",
                        self.clock.config.rate_hz, len(self.cameras))
        else:
            logger.info("loop: starting at %.1f Hz with %d camera(s)", self.clock.config.rate_hz, len(self.cameras))
        try:
            while True:
                if self._gate is not None:
                    await self._await_gate()
                await self._prefetch()
                tick = await self.clock.wait_next()
                if tick.late:
                    self.lateness.late(tick.lateness)
                self.tick(tick)
                if self.sim_events.reset_due():
                    await self.sim_events.reset_environment(self.steps)
                if self.sim_events.goal_due():
                    await self.sim_events.draw_goal()
                if self.sim_events.intervention_due():
                    await self.sim_events.intervene(self.steps)
                self._maybe_log_stats()
                self.lateness.mark()
        finally:
            self.lateness.close()
            self.robot.stop()
            self._builder.end_segment()
            self._flush(force=True)
            logger.info("loop: stopped after %d steps", self.steps)

    async def _prefetch(self) -> None:
        lead = self.config.prefetch_lead_s
        if lead <= 0 or self.clock.period < 2 * lead or self.holding:
            return
        if not await self.clock.wait_lead(lead):
            return
        margin = self.clock.config.spin_margin_s
        for _ in range(self.config.passes_for(self.clock.period)):
            with self.lateness.warmup():  # times the pass, once
                self.policy.prefetch(self.schedule.agent, self._last_observation)
            remaining = self.clock.time_to_next()
            if remaining is None or remaining < self.lateness.last_pass_s + margin:  # another pass could make the tick late
                break

    def tick(self, tick: Tick) -> None:
        """One control step (public for tests and benchmarks). Never blocks; never raises for
        device, policy or sink trouble (they are logged, counted and the robot is held)."""
        reading = read_sensors(self.robot, self.cameras,                # 1. observe
                               self.config.max_frame_age_s)
        if self._estopped or self._homing:
            self._builder.end_segment()
            return
        hold_reason = self._hold_reason()
        observation = observation_of(reading, self.cameras)
        if observation is not None and observation_value_error(observation):
            # a NaN/inf sensor reading is a watchdog event (a hold), never a recorded step
            observation, hold_reason = None, hold_reason or "observation_invalid"
        if observation is not None:
            self._last_observation = observation
        if hold_reason is not None:                                     # 2. hold on command
            result, agent = self.shield.hold(hold_reason), self.schedule.agent
        else:
            agent, action = self._decide(observation)                   # 3. policy / seed
            result = self.shield.filter(action, reading.state, reading.now,   # 4. shield
                                        reading.ages, tick.late)
        self.last_result = result
        self.held_ticks += result.held
        applied = self._send(result)                                    # 5. act
        sensor_hold = result.held and not SENSOR_HOLD_REASONS.isdisjoint(result.reasons)  # stale/missing: no sample
        if hold_reason is None and observation is not None and self.config.record and not sensor_hold:
            timestamp = reading.state.timestamp if reading.state is not None else reading.now
            self._builder.add(observation, applied, agent, timestamp)   # 6. record
            self.steps += 1
            self.sim_events.step_recorded()
        else:
            self._builder.end_segment()
        self._flush(force=False)                                        # 7. flush

    # ------------------------------------------------------------------ tick steps
    def _hold_reason(self) -> str | None:
        if self._paused:
            return "paused"
        self._blocked = self.config.record and self.sink is not None and not self.sink.accepting
        return "sink_blocked" if self._blocked else None

    def _decide(self, observation: dict[str, np.ndarray] | None) -> tuple[int, np.ndarray | None]:
        if observation is None:
            return self.schedule.agent, None
        plan = self.schedule.next_step(self.policy.has_policy)
        if plan.random:
            return plan.agent, self.schedule.random_action()
        try:
            return plan.agent, self.policy.act(plan.agent, observation)
        except PolicyError as e:
            logger.error("loop: %s; holding", e)
            return plan.agent, None

    def _send(self, result: ShieldResult) -> np.ndarray:
        try:
            applied = self.robot.send_action(result.command)
        except HardwareError as e:
            self.send_errors += 1
            logger.error("loop: send_action failed (%d so far): %s", self.send_errors, e)
            return result.command
        if not isinstance(applied, np.ndarray) or applied.shape != result.command.shape \
                or not np.all(np.isfinite(applied)):
            return result.command
        return self.shield.clip_to_action_space(applied)  # in float32, inside the bounds exactly

    def _flush(self, *, force: bool) -> None:
        if self.sink is None or not self.config.record:
            return
        if not force and not self._builder.ready(self.config.batch_steps, self.config.batch_interval_s):
            return
        if not self.sink.accepting:
            return  # steps wait in the builder (bounded: recording stops while blocked)
        batch = self._builder.take(self.sink.session_id, self.sink.next_seq)
        if batch is None:
            return
        try:
            self.sink.put_steps(batch)
        except OutboxError as e:
            logger.error("loop: sink refused %d steps: %s", batch.size, e)

    # ------------------------------------------------------------------ around ticks
    async def _await_gate(self) -> None:
        assert self._gate is not None
        await self._gate()
        deadline = self.clock.next_deadline
        if deadline is not None and time.perf_counter() > deadline:
            # The gate held the loop past the next deadline, so the last tick is more than a
            # period ago: tick at once on a fresh grid (waiting another period after a
            # lock-step wait for the learner only idled both processes).
            self.clock.rebase(due_now=True)

    @property
    def next_step_seq(self) -> int:
        """Seq the next recorded step will get (the sink's next seq plus steps not yet flushed)."""
        return (self.sink.next_seq if self.sink is not None else 0) + self._builder.buffered

    def stats(self) -> RuntimeStats:
        """Returns the current statistics (for heartbeats, status and logs)."""
        p50, p99, worst = self.clock.jitter_ms()
        inference = self.policy.inference_s
        loop = LoopStats(
            steps=self.steps, loop_hz=self.clock.achieved_hz(), jitter_p50_ms=p50, jitter_p99_ms=p99,
            jitter_max_ms=worst, overruns=self.clock.overruns,
            inference_p50_ms=inference.percentile(50) * 1e3,
            queue_depth=self.sink.depth if self.sink is not None else 0,
            spilled_bytes=self.sink.spilled_bytes if self.sink is not None else 0,
            agent=AGENTS[self.schedule.agent], paused=self.holding)
        return RuntimeStats(
            loop=loop, ticks=self.clock.ticks, skipped_ticks=self.clock.skipped,
            inference_p99_ms=inference.percentile(99) * 1e3, held_ticks=self.held_ticks,
            shield=self.shield.counters.snapshot(), policy=self.policy.counters(),
            late=self.lateness.counts(),
        )

    def _maybe_log_stats(self) -> None:
        now = time.monotonic()
        if now - self._last_stats_log < self.config.stats_log_interval_s:
            return
        self._last_stats_log = now
        s = self.stats().loop
        logger.info("loop: %d steps, %.1f Hz, jitter p50/p99/max %.3f/%.3f/%.3f ms, %d overruns, "
                    "inference p50 %.2f ms, queue %d, spilled %d B, agent %s%s",
                    s.steps, s.loop_hz, s.jitter_p50_ms, s.jitter_p99_ms, s.jitter_max_ms, s.overruns,
                    s.inference_p50_ms, s.queue_depth, s.spilled_bytes, s.agent, " (holding)" if s.paused else "")
