"""The runtime daemon (``resetfree-runtime``): robot + control loop + uplink in one asyncio process.

One event loop, one ``TaskGroup``: the :class:`~runtime.loop.ControlLoop` on absolute
deadlines; the uplink (:class:`protocol.transport.UplinkClient`: hello with the robot's
spaces and the :class:`protocol.session.SessionSettings` hash, heartbeats with
``LoopStats``, reconnects); the sender (outbox → uplink, in seq order, only what is on
disk); the inbox (acks → ``Outbox.on_ack``, a reconnect's welcome → ``Outbox.rewind``,
learner commands); the weights subscriber (→ ``PolicySlot.offer``, verified off the loop);
the control server (status, pause, resume, estop, switch_agent, go_home); a supervisor
(stop signals, ``--max-steps``, periodic log line).

Stopping: SIGINT/SIGTERM → ``robot.stop()`` at once (a requested stop, logged at INFO; not
an e-stop), the loop ends its segment and flushes to the outbox, the outbox finishes writing to the spill log, sockets close, exit 0.
``--max-steps N`` → the loop stops before step N+1, the daemon waits (bounded) for the acks,
exit 0. A refused welcome → exit 2 with the learner's reason. Any crash → ``robot.stop()``
in ``finally``, exit 1.

The seed phase: the loop acts uniformly at random while it holds no weights for the acting
agent (``runtime.schedule``), and the learner publishes none until its seed phase
(``schedule.seed_frames`` ingested steps) is over — so the runtime needs no count of its
own and the two cannot disagree. ``status.detail["seed_phase"]`` is true while the acting
agent has no weights, i.e. while this runtime still acts at random.

Lock-step (``--lockstep``, simulation): before the tick that records seq ``t`` the loop waits
until the learner's ``Ack.trained_through ≥ t − lag`` (``--lockstep-lag``, default two uplink
batches) and until no weights blob is being verified. Two batches let the loop record and send
batch *k + 1* while the learner trains on batch *k* (with one, the two processes took turns).
Deterministic: which steps the learner has trained on when each step is taken (to within the
lag), and that every blob that had *arrived* is active.
Not deterministic: whether a blob the learner published has crossed the socket by then
(ZeroMQ timing), hence which weights version acts on a given step; random seed-phase actions
and the simulation are seeded, so with no weights the run repeats exactly. A simulated robot
in lock-step is frozen between steps, so the shield's timing watchdog does not hold there
(:func:`shield_settings`): a late tick, or a state or frame as old as the learner's last
wait, would otherwise record a zero action in place of the random or policy action.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hardware.interfaces import Camera, CameraStatus, HardwareError, Robot
from protocol.atomic import write_json_atomic
from protocol.errors import HandshakeError, PeerTimeout
from protocol.keys import client_keys, server_keys
from protocol.messages import AGENTS, Ack, ArraySpec, Command, Hello, LoopStats, Status, Welcome
from protocol.session import DEFAULT_SWITCH_INTERVAL, SessionSettings
from protocol.transport import (
    BATCH_REFUSED, ConnectionState, ControlServer, ControlServerConfig, HandshakeRefused, UplinkClient,
    UplinkClientConfig, WeightsSubscriber, WeightsSubscriberConfig, start_zero_copy_collector, weights_limits,
)
from runtime.clock import Clock, ClockConfig
from runtime.errors import RuntimeFault
from runtime.isolation import (IsolationConfig, collect_young, lower_other_threads, lower_thread_priority,
                               ordinary_priority, settle_gc)
from runtime.loop import ControlLoop, LoopConfig
from runtime.outbox import Outbox, OutboxConfig
from runtime.policy_slot import PolicySlot, PolicySlotConfig
from protocol.transport.common import handshake_figures
from runtime.quarantine import Quarantine
from runtime.robots import LOCKSTEP_SENSOR_AGE_S, RobotFacts, lockstep_shield_config, shield_config
from runtime.schedule import AgentSchedule, AgentScheduleConfig
from runtime.shield import Shield, ShieldConfig
from runtime.spill import SpillConfig, SpillLog

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_CRASH, EXIT_REFUSED = 0, 1, 2


class LearnerRefused(RuntimeFault):
    """The learner answered the hello with ``accepted=False``; the message holds its reason."""


class _Shutdown(Exception):
    """Raised by the supervisor to end the task group."""


@dataclass(frozen=True, kw_only=True)
class DaemonConfig:
    """Everything ``resetfree-runtime`` is told on its command line."""

    robot: str
    """``sim:TASK`` or ``franka`` (for logs and ``hello.robot``)."""
    learner: str = "tcp://127.0.0.1:5555"
    """The learner's uplink endpoint."""
    spill_dir: Path
    """Spill log, session state and ``endpoints.json``."""
    control_bind: str = "tcp://127.0.0.1:5558"
    """Control server endpoint (port 0: a free port, written to ``SPILL_DIR/endpoints.json``)."""
    hz: float = 10.0
    """Control rate."""
    lockstep: bool = False
    """Wait for the learner's training before each tick (simulation)."""
    switch_every: int = DEFAULT_SWITCH_INTERVAL
    """Steps per agent before the other takes over (sent hashed in ``hello``)."""
    max_steps: int | None = None
    """Stop cleanly after this many recorded steps (None: run until signalled)."""
    seed: int | None = None
    """Seed of the seed-phase random actions."""
    keys_dir: Path | None = None
    """CURVE keys directory (``resetfree-keys generate``); None: plaintext loopback."""
    batch_steps: int = 16
    """Steps per uplink batch."""
    lockstep_lag: int | None = None
    """Lock-step: how many steps the loop may run ahead of the learner's ``trained_through``
    (None: :data:`LOCKSTEP_LAG_BATCHES` batches). At least ``batch_steps``; with two batches
    the loop records the next batch while the learner trains on the previous one."""
    ack_wait_s: float = 10.0
    """``--max-steps``: how long to wait for the final acks."""
    connect_retry_s: float = 2.0
    """Pause between hello attempts while the learner is not up."""
    hello_timeout_s: float = 5.0
    """Deadline for one welcome."""
    peer_timeout_s: float = 5.0
    """Learner silent this long ⇒ reconnect (steps spill meanwhile)."""
    status_log_interval_s: float = 10.0
    """Interval of the daemon's INFO line."""
    isolation: IsolationConfig = IsolationConfig()
    """Affinity, priority, GC and thread levers."""
    policy: PolicySlotConfig = PolicySlotConfig()
    """Policy slot: blob limits and the conv trunk's inference dtype."""
    prefetch_lead_s: float = LoopConfig.prefetch_lead_s
    """Warm the caches for the acting policy this long before each tick (0: off; `LoopConfig`)."""
    prefetch_passes: int | None = LoopConfig.prefetch_passes
    """Warm-up inferences before each tick; None: by the period (`LoopConfig.prefetch_passes`)."""
    gc_every_ticks: int = 50
    """``gc_mode == "manual"``: collect generation 0 after every this many ticks."""

    def __post_init__(self) -> None:
        if not 0 < self.hz <= 1000:
            raise ValueError(f"hz: must be in (0, 1000], got {self.hz}")
        if self.switch_every < 1:
            raise ValueError(f"switch_every: must be positive, got {self.switch_every}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps: must be positive or None, got {self.max_steps}")
        if self.batch_steps < 1:
            raise ValueError(f"batch_steps: must be positive, got {self.batch_steps}")
        for name in ("ack_wait_s", "connect_retry_s", "hello_timeout_s", "peer_timeout_s",
                     "status_log_interval_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.gc_every_ticks < 1:
            raise ValueError(f"gc_every_ticks: must be positive, got {self.gc_every_ticks}")
        if self.lockstep_lag is not None and self.lockstep_lag < self.batch_steps:
            raise ValueError(f"lockstep_lag: must be at least batch_steps ({self.batch_steps}), got "
                             f"{self.lockstep_lag} (the learner only sees whole batches)")

    @property
    def lag(self) -> int:
        """Lock-step: steps the loop may run ahead of ``trained_through`` (``lockstep_lag``)."""
        return self.lockstep_lag if self.lockstep_lag is not None else LOCKSTEP_LAG_BATCHES * self.batch_steps

    @property
    def session_settings(self) -> SessionSettings:
        """The settings shared with the learner (hashed into ``hello.config_hash``)."""
        return SessionSettings(switch_interval=self.switch_every)


LOCKSTEP_LAG_BATCHES = 2
"""Default lock-step lag in uplink batches: two batches let the loop record (and send) batch
*k + 1* while the learner trains on batch *k*, so the two processes work at once; one batch
(the earlier rule) left one of them idle at every moment."""

def shield_settings(config: DaemonConfig, robot: Robot, facts: RobotFacts) -> ShieldConfig:
    """Returns the shield's limits: the robot's own (``runtime.robots.shield_config``), and for
    a simulated robot in lock-step no holds for timing — no deadline-miss hold and no state or
    frame age limit. There the simulation only advances when the loop acts, the loop waits for
    the learner before ticks, and a hold would only record a zero action instead of the
    seed-phase random action or the policy's. A real robot keeps every watchdog, lock-step or not."""
    limits = shield_config(robot, facts, config.hz)
    if not (config.lockstep and facts.kind == "sim"):
        return limits
    return lockstep_shield_config(limits)


def clock_settings(config: DaemonConfig) -> ClockConfig:
    """Returns the control clock's settings: ``config.hz``, and in lock-step no spinning
    before deadlines (``spin_margin_s = 0``: the wait is one sleep). The spin buys sub-ms
    tick precision, which lock-step has no use for — the learner sets its pace — and at the
    fast rates lock-step runs at (``resetfree-sim``: 500, now 1000 Hz) it burned up to half
    of every period on a core the learner needs."""
    if config.lockstep:
        return ClockConfig(rate_hz=config.hz, spin_margin_s=0.0)
    return ClockConfig(rate_hz=config.hz)


_WILDCARD_HOSTS = ("0.0.0.0", "*", "::", "[::]")

_WELCOME_PATIENCE_S = 30.0
"""How long a missing welcome is routine (INFO) before it becomes a WARNING: a learner
started at the same time loads its demos and builds its networks first."""


def reachable_endpoint(advertised: str, learner: str) -> str:
    """Returns the weights endpoint to connect to: the learner's advertised one, with a
    wildcard bind address (``tcp://0.0.0.0:5556``) replaced by the host this runtime reaches
    the learner at (from ``--learner``), which is the host a remote robot PC can route to."""
    scheme, _, rest = advertised.partition("://")
    host, sep, port = rest.rpartition(":")
    if scheme != "tcp" or not sep or host not in _WILDCARD_HOSTS:
        return advertised
    learner_host = learner.partition("://")[2].rpartition(":")[0]
    return f"tcp://{learner_host}:{port}" if learner_host else advertised


def observation_spaces(robot: Robot, cameras: list[Camera]) -> dict[str, ArraySpec]:
    """Returns the wire observation space: one spec per camera image plus the robot's arrays."""
    space = {c.name: ArraySpec(dtype=c.image_spec.dtype, shape=tuple(c.image_spec.shape)) for c in cameras}
    space.update({name: ArraySpec(dtype=s.dtype, shape=tuple(s.shape)) for name, s in robot.state_spec.items()})
    return space


class RuntimeDaemon:
    """See the module docstring. ``exit_code = await RuntimeDaemon(...).run()``."""

    def __init__(self, config: DaemonConfig, robot: Robot, cameras: list[Camera], facts: RobotFacts) -> None:
        self.config = config
        self.robot, self.cameras, self.facts = robot, list(cameras), facts
        self.outbox: Outbox | None = None
        self.policy: PolicySlot | None = None
        self.loop: ControlLoop | None = None
        self.client: UplinkClient | None = None
        self.welcome: Welcome | None = None
        self.control_endpoint: str | None = None
        self.control: ControlServer | None = None
        self.trained_through = 0
        self.weights_active_at: dict[str, float] = {}
        """Agent → ``time.time()`` when its newest weights became active (for benchmarks)."""
        self._space = observation_spaces(robot, self.cameras)
        self._stop = asyncio.Event()
        self._finished = asyncio.Event()
        self._progress = asyncio.Event()
        self._swapping = False
        self._weights_endpoint = ""
        self._tg: asyncio.TaskGroup | None = None
        self._ticks_since_gc = 0
        self.quarantine = Quarantine(Path(config.spill_dir) / "quarantine")
        """Batches the learner refused (``runtime.quarantine``)."""
        self._subscribers: list[WeightsSubscriber] = []
        """Every weights subscriber of this run (one per learner endpoint), for their counts."""

    # ------------------------------------------------------------------ entry
    async def run(self) -> int:
        """Runs until stopped; returns the exit code (0 clean, 2 refused). Blocks.

        Raises whatever crashed the daemon (the caller maps it to exit 1); the robot is
        stopped and the outbox flushed to disk in every case.
        """
        code = EXIT_OK
        # asyncio.to_thread workers (device connection, weight hashing, ...) and the device
        # threads they start run one FIFO level below the loop (`lower_thread_priority`)
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(thread_name_prefix="runtime-worker", initializer=lower_thread_priority))
        try:
            await self._start()
            await self._serve()
        except LearnerRefused as e:
            logger.error("runtime: %s", e)
            code = EXIT_REFUSED
        except ExceptionGroup as group:
            refused, rest = group.split(LearnerRefused)
            if rest is not None:
                _, rest = rest.split(_Shutdown)
            if refused is not None:
                logger.error("runtime: %s", refused.exceptions[0])
                code = EXIT_REFUSED
            if rest is not None:
                raise rest from None
        finally:
            await self._cleanup()
        return code

    def request_stop(self, reason: str) -> None:
        """Stops the robot at once and asks the daemon to shut down (signal handlers call it).

        A requested stop is routine (INFO). A second request while stopping (Ctrl-C reaches a
        process group's every member, and a parent forwards its own stop) stops the robot again
        and logs nothing more."""
        if not self._stop.is_set():
            logger.info("runtime: stopping (%s)", reason)
        if self.loop is not None:
            self.loop.estop(shutdown=reason)
        else:
            self.robot.stop()
        self._stop.set()

    # ------------------------------------------------------------------ start-up
    async def _start(self) -> None:
        spill = await asyncio.to_thread(SpillLog.open, SpillConfig(directory=self.config.spill_dir))
        self.outbox = Outbox(spill, OutboxConfig())
        self.outbox.start()
        await asyncio.to_thread(self._connect_devices)
        self.client = UplinkClient(self._uplink_config(), self._hello, stats=self._loop_stats)
        self.welcome = await self._first_welcome()
        self._weights_endpoint = reachable_endpoint(self.welcome.weights_endpoint, self.config.learner)
        obs_spec = {name: (tuple(s.shape), s.dtype) for name, s in self._space.items()}
        with ordinary_priority():  # ~1 s of CPU: not as real-time work (see ordinary_priority)
            self.policy = PolicySlot.for_actor(obs_spec, self.robot.action_spec.shape[0], self.welcome.net_config,
                                               self.config.policy)
        self.outbox.rewind(self.welcome.resume_seq)
        self.outbox.set_connected(True)
        self.trained_through = self.welcome.resume_seq
        self.loop = self._build_loop()

    def _connect_devices(self) -> None:
        self.robot.connect()
        for camera in self.cameras:
            if camera.status != CameraStatus.STREAMING:
                camera.connect()

    def _uplink_config(self) -> UplinkClientConfig:
        keys = client_keys(self.config.keys_dir) if self.config.keys_dir else None
        return UplinkClientConfig(endpoint=self.config.learner, hello_timeout_s=self.config.hello_timeout_s,
                                  peer_timeout_s=self.config.peer_timeout_s, keys=keys)

    def _hello(self) -> Hello:
        assert self.outbox is not None
        spec = self.robot.action_spec
        return Hello(session_id=self.outbox.session_id, robot=self.facts.kind, task=self.facts.task,
                     observation_space=dict(self._space),
                     action_space=ArraySpec(dtype=spec.dtype, shape=tuple(spec.shape)),
                     config_hash=self.config.session_settings.config_hash(), next_seq=self.outbox.next_seq,
                     oldest_seq=min(self.outbox.oldest_seq, self.outbox.next_seq))

    async def _first_welcome(self) -> Welcome:
        """Says hello until the learner answers; raises LearnerRefused on a refusal."""
        assert self.client is not None
        started = time.monotonic()
        while True:
            try:
                welcome = await self.client.connect()  # bounded by hello_timeout_s
            except HandshakeRefused as e:
                raise LearnerRefused(f"learner at {self.config.learner} refused this runtime: {e}") from e
            except (PeerTimeout, HandshakeError) as e:
                # a learner started at the same time takes a while: a person need act only later
                waited = time.monotonic() - started
                level = logging.INFO if waited < _WELCOME_PATIENCE_S else logging.WARNING
                logger.log(level, "runtime: no welcome yet after %.0f s (%s); retrying in %.1f s", waited, e,
                           self.config.connect_retry_s)
                await asyncio.sleep(self.config.connect_retry_s)
                continue
            logger.info("runtime: welcomed by %s (session %s, resume at seq %d, weights at %s)",
                        self.config.learner, welcome.session_id, welcome.resume_seq, welcome.weights_endpoint)
            return welcome

    def _build_loop(self) -> ControlLoop:
        assert self.outbox is not None and self.policy is not None
        spec = self.robot.action_spec
        schedule = AgentSchedule(AgentScheduleConfig(switch_every=self.config.switch_every, seed=self.config.seed),
                                 spec.low_array(), spec.high_array())
        limits = shield_settings(self.config, self.robot, self.facts)
        shield = Shield(limits)
        loop_config = LoopConfig(max_frame_age_s=limits.max_frame_age_s, batch_steps=self.config.batch_steps,
                                 env_reset_every=self.facts.reset_interval,
                                 draw_goal_each_turn=self.facts.goal_per_turn,
                                 prefetch_lead_s=self.config.prefetch_lead_s,
                                 prefetch_passes=self.config.prefetch_passes, lockstep=self.config.lockstep)
        return ControlLoop(robot=self.robot, cameras=self.cameras, policy=self.policy, shield=shield,
                           schedule=schedule, clock=Clock(clock_settings(self.config)), sink=self.outbox,
                           config=loop_config, gate=self._gate)

    # ------------------------------------------------------------------ running
    async def _serve(self) -> None:
        assert self.client is not None and self.loop is not None
        control = ControlServer(ControlServerConfig(endpoint=self.config.control_bind, role="runtime",
                                                    keys=server_keys(self.config.keys_dir, "runtime")
                                                    if self.config.keys_dir else None), self._on_command)
        self.control = control
        self.control_endpoint = await control.start()
        self._write_endpoints()
        # pyzmq's zero-copy collector would otherwise start on the loop's first large send, at
        # the loop's FIFO level, with its own I/O thread; start it now and lower every helper.
        start_zero_copy_collector()
        lowered = lower_other_threads()
        if lowered:
            logger.info("isolation: %d helper thread(s) moved one FIFO level below the loop", lowered)
        settle_gc(self.config.isolation.gc_mode)
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                loop_task = tg.create_task(self.loop.run(), name="control-loop")
                tg.create_task(self._run_uplink(), name="uplink")
                tg.create_task(self._send_loop(), name="sender")
                tg.create_task(self._inbox_loop(), name="inbox")
                tg.create_task(self._weights_loop(), name="weights")
                tg.create_task(control.run(), name="control")
                tg.create_task(self._supervise(loop_task), name="supervisor")
        finally:
            control.close()

    async def _run_uplink(self) -> None:
        assert self.client is not None
        try:
            await self.client.run()
        except HandshakeRefused as e:
            raise LearnerRefused(f"learner at {self.config.learner} refused this runtime: {e}") from e

    async def _gate(self) -> None:
        """Awaited before every tick: stops at ``--max-steps``, waits for the learner in lock-step,
        and collects young objects in ``manual`` GC mode (right after a tick, off its path)."""
        assert self.loop is not None
        if self.config.isolation.gc_mode == "manual":
            self._ticks_since_gc += 1
            if self._ticks_since_gc >= self.config.gc_every_ticks:
                self._ticks_since_gc = 0
                collect_young()
        if self.config.max_steps is not None and self.loop.steps >= self.config.max_steps:
            self._finished.set()
            await asyncio.Event().wait()  # the supervisor cancels the loop
        if self.config.lockstep:
            await self._await_learner()

    async def _await_learner(self) -> None:
        """Lock-step: returns once the learner has trained through ``next step − lag`` (so the
        loop never runs more than ``lag`` steps ahead of it) and no weights blob is being verified."""
        assert self.loop is not None
        target = self.loop.next_step_seq - self.config.lag
        waited = time.monotonic()
        while self.trained_through < target or self._swapping:
            self._progress.clear()
            try:
                async with asyncio.timeout(1.0):
                    await self._progress.wait()
            except TimeoutError:
                if time.monotonic() - waited > 10.0:
                    logger.info("runtime: lock-step: waiting for the learner (trained through %d, need %d)",
                                self.trained_through, target)
                    waited = time.monotonic()

    async def _send_loop(self) -> None:
        """Sends written batches in seq order; a rewind makes a batch in hand stale."""
        assert self.outbox is not None and self.client is not None
        lost = self.outbox.lost_steps
        while True:
            try:
                async with asyncio.timeout(1.0):
                    out = await self.outbox.next_batch()
            except TimeoutError:
                continue
            if self.outbox.lost_steps != lost:
                # The learner waits for the skipped seqs and would never see them; when they
                # are the oldest unacked, a fresh hello declares them (docs/protocol.md).
                lost = self.outbox.lost_steps
                if self.outbox.head_lost:
                    self.client.reconnect()
            while out.generation == self.outbox.generation and not self.client.send(out.batch):
                await asyncio.sleep(0.005)  # disconnected or at the HWM: the rewind or room will come

    async def _inbox_loop(self) -> None:
        assert self.outbox is not None and self.client is not None
        while True:
            self.outbox.set_connected(self.client.state == ConnectionState.CONNECTED)
            msg = await self.client.recv(timeout=0.1)
            if isinstance(msg, Ack):
                self.outbox.on_ack(msg.seq)
                if self.outbox.head_lost:
                    self.client.reconnect()  # the new hello's oldest_seq declares the hole
                self.trained_through = max(self.trained_through, msg.trained_through)
                self._progress.set()
            elif isinstance(msg, Welcome):
                logger.info("runtime: reconnected; learner resumes at seq %d", msg.resume_seq)
                self.welcome = msg
                self.outbox.rewind(msg.resume_seq)
                self._weights_endpoint = reachable_endpoint(msg.weights_endpoint, self.config.learner)
            elif isinstance(msg, Command):
                self.client.send(await self._on_command(msg))
            elif isinstance(msg, Status) and msg.state == BATCH_REFUSED:
                # before the ack that follows it releases the steps (docs/protocol.md, "Refused batches")
                await self.quarantine.take(self.outbox, msg)

    async def _weights_loop(self) -> None:
        """Receives weights (reconnecting when a welcome names a new endpoint) and offers them."""
        assert self.policy is not None
        keys = client_keys(self.config.keys_dir) if self.config.keys_dir else None
        while True:
            endpoint = self._weights_endpoint
            # sized for this policy's blob: the defaults stop at 32 MiB frames, and libzmq drops
            # a bigger one silently (the robot profile's pixel policy is 82 MiB)
            subscriber = WeightsSubscriber(WeightsSubscriberConfig(endpoint=endpoint, keys=keys,
                                                                   limits=weights_limits(self.policy.layout)))
            self._subscribers.append(subscriber)  # its counts stay in the status after it closes
            subscriber.connect()
            try:
                while endpoint == self._weights_endpoint:
                    try:
                        async with asyncio.timeout(0.5):
                            weights = await subscriber.recv()
                    except TimeoutError:
                        continue
                    self._swapping = True
                    try:
                        result = await self.policy.offer(weights)
                    finally:
                        self._swapping = False
                        self._progress.set()
                    if result.accepted:
                        self.weights_active_at[weights.agent] = time.time()
                    else:  # a refused blob must not make the learner's next good one look stale
                        subscriber.refused(weights)
            finally:
                subscriber.close()

    async def _supervise(self, loop_task: asyncio.Task[None]) -> None:
        """Waits for a stop signal or ``--max-steps``; logs a status line meanwhile."""
        assert self.outbox is not None
        last_log = time.monotonic()
        while not (self._stop.is_set() or self._finished.is_set() or loop_task.done()):
            try:
                async with asyncio.timeout(0.2):
                    await self._stop.wait()
            except TimeoutError:
                pass
            if time.monotonic() - last_log >= self.config.status_log_interval_s:
                last_log = time.monotonic()
                logger.info("runtime: %s", " ".join(f"{k}={_for_people(v)}" for k, v in self._status_detail().items()
                                                    if k in _LOGGED))
        loop_task.cancel()
        try:
            await loop_task  # its finally ends the segment and flushes into the outbox
        except asyncio.CancelledError:
            if not loop_task.cancelled():
                raise
        if self._finished.is_set() and not self._stop.is_set():
            await self._drain_acks()
        raise _Shutdown()

    async def _drain_acks(self) -> None:
        assert self.outbox is not None
        try:
            async with asyncio.timeout(self.config.ack_wait_s):
                while self.outbox.acked_seq < self.outbox.next_seq:
                    await asyncio.sleep(0.02)
            logger.info("runtime: %d steps done, all acked", self.outbox.next_seq)
        except TimeoutError:
            logger.warning("runtime: %d steps not acked within %.1f s; they stay in the spill log",
                           self.outbox.next_seq - self.outbox.acked_seq, self.config.ack_wait_s)

    # ------------------------------------------------------------------ control
    async def _on_command(self, cmd: Command) -> Status:
        """Carries out one control command; returns its Status (never blocks on motion)."""
        assert self.loop is not None
        ok, message = True, cmd.kind
        if cmd.kind == "pause":
            self.loop.pause()
        elif cmd.kind == "resume":
            self.loop.resume()
        elif cmd.kind == "estop":
            self.loop.estop()
        elif cmd.kind == "switch_agent":
            message = f"{AGENTS[self.loop.switch_agent(cmd.agent)]} agent acts"
        elif cmd.kind == "go_home":
            if self._tg is None:
                ok, message = False, "not running"
            else:
                self._tg.create_task(self._go_home(), name="go-home")
                message = "homing started"
        return Status(request_id=cmd.request_id, role="runtime", state=self._state(),
                      detail=self._status_detail(), ok=ok, message=message)

    async def _go_home(self) -> None:
        assert self.loop is not None
        try:
            await self.loop.go_home()
            logger.info("runtime: robot is home")
        except HardwareError as e:
            logger.error("runtime: go_home failed: %s", e)

    def _state(self) -> str:
        assert self.loop is not None
        if self.loop.estopped:
            return "estopped"
        return "holding" if self.loop.holding else "running"

    def _loop_stats(self) -> LoopStats | None:
        return None if self.loop is None else self.loop.stats().loop

    def _status_detail(self) -> dict[str, Any]:
        assert self.loop is not None and self.outbox is not None and self.policy is not None
        stats = self.loop.stats()
        agent = self.loop.schedule.agent
        version = self.policy.version(agent)
        detail: dict[str, Any] = stats.detail()
        # Every rejection is counted (issue 17): the subscribers' (malformed, checksum) and the slot's.
        weights = {k: sum(s.figures()[k] for s in self._subscribers) for k in WeightsSubscriber.FIGURES}
        control_malformed = self.control.malformed_count if self.control is not None else 0
        detail.update({f"weights_{k}": v for k, v in weights.items()}, **self.quarantine.figures(),
                      **handshake_figures(),
                      weights_policy_rejected=self.policy.rejected,
                      control_accepted=self.control.accepted_count if self.control is not None else 0,
                      control_malformed=control_malformed,
                      failed_replies=self.control.failed_replies if self.control is not None else 0)
        detail.update(
            agent=AGENTS[agent], seed_phase=not self.policy.has_policy(agent),
            acked_seq=self.outbox.acked_seq, next_seq=self.outbox.next_seq, oldest_seq=self.outbox.oldest_seq,
            unwritten_steps=self.outbox.unwritten_steps, lost_steps=self.outbox.lost_steps,
            weights_version=-1 if version is None else version, env_resets=self.loop.env_resets,
            trained_through=self.trained_through, session_id=self.outbox.session_id,
            connected=self.client is not None and self.client.state == ConnectionState.CONNECTED,
            weights_rejected=self.policy.rejected + weights["malformed"] + weights["checksum_failures"],
            weights_accepted=self.policy.accepted,
            weights_connection=self._subscribers[-1].connection if self._subscribers else "not connected",
            weights_endpoint=self._weights_endpoint,
            malformed_rejected=control_malformed + weights["malformed"] + self.quarantine.malformed
            + (self.client.malformed_count if self.client is not None else 0),
        )
        for name in AGENTS:
            v = self.policy.version(AGENTS.index(name))
            detail[f"weights_version_{name}"] = -1 if v is None else v
            detail[f"weights_active_at_{name}"] = self.weights_active_at.get(name, 0.0)
        return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in detail.items()}

    def _write_endpoints(self) -> None:
        path = Path(self.config.spill_dir) / "endpoints.json"
        write_json_atomic(path, {"control": self.control_endpoint, "learner": self.config.learner, "pid": os.getpid()})
        logger.info("runtime: control server at %s (written to %s)", self.control_endpoint, path)

    # ------------------------------------------------------------------ shutdown
    async def _cleanup(self) -> None:
        """Stops the robot, finishes the spill writes and closes everything. Never raises."""
        try:
            self.robot.stop()
        except HardwareError as e:
            logger.error("runtime: robot.stop() failed: %s", e)
        if self.client is not None:
            self.client.close()
        if self.outbox is not None:
            await asyncio.to_thread(self.outbox.close)
        if self.policy is not None:
            self.policy.close()
        for device in (*self.cameras, self.robot):
            try:
                await asyncio.to_thread(device.disconnect)
            except HardwareError as e:
                logger.error("runtime: disconnecting %s failed: %s", device.name, e)
        logger.info("runtime: stopped")


_LOGGED = ("steps", "agent", "seed_phase", "acked_seq", "queue_depth", "spilled_bytes", "overruns",
           "jitter_p99_ms", "inference_p50_ms", "weights_version", "weights_connection", "env_resets", "connected")


def _for_people(value: Any) -> Any:
    """A status value as a log line shows it: floats to 3 significant digits (``status`` and
    the JSON keep full precision)."""
    return f"{value:.3g}" if isinstance(value, float) else value


def install_signal_handlers(daemon: RuntimeDaemon) -> None:
    """Routes SIGINT/SIGTERM to :meth:`RuntimeDaemon.request_stop` (call inside the event loop)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, daemon.request_stop, signal.Signals(sig).name)


__all__ = ["DaemonConfig", "EXIT_CRASH", "EXIT_OK", "EXIT_REFUSED", "LOCKSTEP_LAG_BATCHES", "LOCKSTEP_SENSOR_AGE_S",
           "LearnerRefused", "RuntimeDaemon", "clock_settings", "install_signal_handlers", "observation_spaces",
           "shield_settings"]
