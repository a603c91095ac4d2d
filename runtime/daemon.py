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
(:func:`runtime.daemon_config.shield_settings`): a late tick, or a state or frame as old as the learner's last
wait, would otherwise record a zero action in place of the random or policy action.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hardware.interfaces import Camera, CameraStatus, HardwareError, Robot
from protocol.atomic import write_json_atomic
from protocol.keys import server_keys
from protocol.messages import AGENTS, Command, Hello, LoopStats, Status
from protocol.transport import ControlServer, ControlServerConfig, start_zero_copy_collector
from runtime.clock import Clock
from protocol.spaces import obs_spec_of
from runtime.config import RuntimeConfig
from runtime.daemon_config import (clock_settings, loop_settings, observation_spaces, policy_settings,
                                    shield_settings)
from runtime.isolation import collect_young, lower_other_threads, lower_thread_priority, ordinary_priority, settle_gc
from runtime.learner_link import LearnerLink, LearnerRefused
from runtime.loop import ControlLoop
from runtime.outbox import Outbox
from runtime.policy_slot import PolicySlot
from runtime.quarantine import Quarantine
from runtime.robots import RobotFacts
from runtime.schedule import AgentSchedule, AgentScheduleConfig
from runtime.shield import Shield
from runtime.spill import SpillConfig, SpillLog
from runtime.status import status_detail, status_line

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_CRASH, EXIT_REFUSED = 0, 1, 2


class _Shutdown(Exception):
    """Raised by the supervisor to end the task group."""


class RuntimeDaemon:
    """See the module docstring. ``exit_code = await RuntimeDaemon(...).run()``.

    Size: one responsibility, assembling and supervising the process, whose start-up order, task
    group, stop events, control commands and clean-up all share one state (the devices, outbox,
    policy slot, loop and link it builds and tears down in order); the learner connection is
    :class:`LearnerLink`'s, the status fields :mod:`runtime.status`'s and the settings
    :mod:`runtime.daemon_config`'s."""

    def __init__(self, config: RuntimeConfig, robot: Robot, cameras: list[Camera], facts: RobotFacts) -> None:
        self.config = config
        self.robot, self.cameras, self.facts = robot, list(cameras), facts
        self.outbox: Outbox | None = None
        self.policy: PolicySlot | None = None
        self.loop: ControlLoop | None = None
        self.link: LearnerLink | None = None
        self.control_endpoint: str | None = None
        self.control: ControlServer | None = None
        self._space = observation_spaces(robot, self.cameras)
        self._stop = asyncio.Event()
        self._finished = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._ticks_since_gc = 0
        self.quarantine = Quarantine(config.spill_dir / "quarantine")
        """Batches the learner refused (``runtime.quarantine``)."""

    @property
    def trained_through(self) -> int:
        """The learner's newest ``trained_through`` (0 before the first welcome)."""
        return 0 if self.link is None else self.link.trained_through

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
        spill = await asyncio.to_thread(SpillLog.open, SpillConfig(directory=self.config.spill_dir,
                                                                   max_bytes=self.config.process.spill_max_bytes))
        self.outbox = Outbox(spill, self.config.outbox)
        self.outbox.start()
        await asyncio.to_thread(self._connect_devices)
        self.link = LearnerLink(self.config.link, self.outbox, self.quarantine, hello=self._hello,
                                stats=self._loop_stats)
        welcome = await self.link.connect()
        obs_spec = obs_spec_of(self._space)
        with ordinary_priority():  # ~1 s of CPU: not as real-time work (see ordinary_priority)
            self.policy = PolicySlot.for_actor(obs_spec, self.robot.action_spec.shape[0], welcome.net_config,
                                               policy_settings(self.config))
        self.outbox.rewind(welcome.resume_seq)
        self.loop = self._build_loop()

    def _connect_devices(self) -> None:
        self.robot.connect()
        for camera in self.cameras:
            if camera.status != CameraStatus.STREAMING:
                camera.connect()

    def _hello(self) -> Hello:
        assert self.outbox is not None
        spec = self.robot.action_spec
        return Hello(session_id=self.outbox.session_id, robot=self.facts.kind, task=self.facts.task,
                     observation_space=dict(self._space),
                     action_space=spec.unbounded(),
                     config_hash=self.config.session_settings.config_hash(), next_seq=self.outbox.next_seq,
                     oldest_seq=min(self.outbox.oldest_seq, self.outbox.next_seq))

    def _build_loop(self) -> ControlLoop:
        assert self.outbox is not None and self.policy is not None
        spec = self.robot.action_spec
        turns = AgentScheduleConfig(switch_every=self.config.loop.switch_every, seed=self.config.seed)
        schedule = AgentSchedule(turns, spec.low_array(), spec.high_array())
        limits = shield_settings(self.config, self.robot, self.facts)
        shield = Shield(limits)
        loop_config = loop_settings(self.config, limits, self.facts)
        return ControlLoop(robot=self.robot, cameras=self.cameras, policy=self.policy, shield=shield,
                           schedule=schedule, clock=Clock(clock_settings(self.config)), sink=self.outbox,
                           config=loop_config, gate=self._gate)

    # ------------------------------------------------------------------ running
    async def _serve(self) -> None:
        assert self.link is not None and self.loop is not None and self.policy is not None
        control = ControlServer(ControlServerConfig(endpoint=self.config.process.control_bind, role="runtime",
                                                    keys=server_keys(self.config.link.keys_dir, "runtime")
                                                    if self.config.link.keys_dir else None), self._on_command)
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
                tg.create_task(self.link.run_uplink(), name="uplink")
                tg.create_task(self.link.send_loop(), name="sender")
                tg.create_task(self.link.inbox_loop(self._on_command), name="inbox")
                tg.create_task(self.link.weights_loop(self.policy), name="weights")
                tg.create_task(control.run(), name="control")
                tg.create_task(self._supervise(loop_task), name="supervisor")
        finally:
            control.close()

    async def _gate(self) -> None:
        """Awaited before every tick: stops at ``--max-steps``, waits for the learner in lock-step,
        and collects young objects in ``manual`` GC mode (right after a tick, off its path)."""
        assert self.loop is not None
        if self.config.isolation.gc_mode == "manual":
            self._ticks_since_gc += 1
            if self._ticks_since_gc >= self.config.isolation.gc_every_ticks:
                self._ticks_since_gc = 0
                collect_young()
        if self.config.loop.max_steps is not None and self.loop.steps >= self.config.loop.max_steps:
            self._finished.set()
            await asyncio.Event().wait()  # the supervisor cancels the loop
        if self.config.loop.lockstep:
            await self._await_learner()

    async def _await_learner(self) -> None:
        """Lock-step: returns once the learner has trained through ``next step − lag`` (so the
        loop never runs more than ``lag`` steps ahead of it) and no weights blob is being verified."""
        assert self.loop is not None and self.link is not None
        await self.link.await_learner(self.loop.next_step_seq - self.config.loop.lag)

    async def _supervise(self, loop_task: asyncio.Task[None]) -> None:
        """Waits for a stop signal or ``--max-steps``; logs a status line meanwhile."""
        assert self.link is not None
        ends = {asyncio.ensure_future(self._stop.wait()), asyncio.ensure_future(self._finished.wait()), loop_task}
        try:
            while not any(f.done() for f in ends):
                # wakes for the first of: a stop, --max-steps, the loop ending, or the next log line
                await asyncio.wait(ends, timeout=self.config.process.status_log_interval_s,
                                   return_when=asyncio.FIRST_COMPLETED)
                if not any(f.done() for f in ends):
                    logger.info("runtime: %s", status_line(self._status_detail()))
        finally:
            for f in ends - {loop_task}:
                f.cancel()
        loop_task.cancel()
        try:
            await loop_task  # its finally ends the segment and flushes into the outbox
        except asyncio.CancelledError:
            if not loop_task.cancelled():
                raise
        if self._finished.is_set() and not self._stop.is_set():
            await self.link.drain_acks()
        raise _Shutdown()

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
        assert self.link is not None
        return status_detail(self.loop, self.outbox, self.policy, self.link, self.control, self.quarantine)

    def _write_endpoints(self) -> None:
        path = self.config.spill_dir / "endpoints.json"
        write_json_atomic(path, {"control": self.control_endpoint, "learner": self.config.link.learner, "pid": os.getpid()})
        logger.info("runtime: control server at %s (written to %s)", self.control_endpoint, path)

    # ------------------------------------------------------------------ shutdown
    async def _cleanup(self) -> None:
        """Stops the robot, finishes the spill writes and closes everything. Never raises."""
        try:
            self.robot.stop()
        except HardwareError as e:
            logger.error("runtime: robot.stop() failed: %s", e)
        if self.link is not None:
            self.link.close()
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


def install_signal_handlers(daemon: RuntimeDaemon) -> None:
    """Routes SIGINT/SIGTERM to :meth:`RuntimeDaemon.request_stop` (call inside the event loop)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, daemon.request_stop, signal.Signals(sig).name)


__all__ = ["EXIT_CRASH", "EXIT_OK", "EXIT_REFUSED", "RuntimeDaemon", "install_signal_handlers"]
