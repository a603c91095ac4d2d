"""The runtime daemon against a scripted learner (real sockets on loopback, random ports)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from learner.networks import build_actor
from protocol.errors import SequenceGap
from protocol.messages import Ack, Command, Hello, TransitionBatch, Weights, Welcome
from protocol.reliability import ReceiveTracker
from protocol.session import SessionSettings
from protocol.transport import (ControlClient, ControlClientConfig, UplinkServer, UplinkServerConfig,
                                WeightsPublisher, WeightsPublisherConfig)
from runtime.isolation import IsolationConfig
from runtime.daemon import EXIT_OK, EXIT_REFUSED, RuntimeDaemon
from runtime.config import LinkConfig, LoopSettings, ProcessConfig, RuntimeConfig
from runtime.robots import RobotFacts
from runtime.spill import SpillConfig
from tests.runtime.fakes import ACTION_DIM, FakeRobot

torch.set_num_threads(1)

NET_CONFIG = {"feature_dim": 8, "hidden_dim": 16, "conv_channels": 4}
FACTS = RobotFacts(kind="sim", task="fake", position_scale=0.05, reset_interval=None)


class ScriptedLearner:
    """A small learner: welcomes (or refuses), dedupes with a ReceiveTracker, acks, publishes.

    ``received`` counts every step seq ingested, so a test can check exactly-once delivery.
    """

    def __init__(self, *, settings: SessionSettings = SessionSettings(), net_config: dict | None = None,
                 uplink: str = "tcp://127.0.0.1:0", refuse: str = "") -> None:
        self.settings, self.refuse = settings, refuse
        self.net_config = net_config or NET_CONFIG
        self.uplink_endpoint = uplink
        self.server = UplinkServer(UplinkServerConfig(endpoint=uplink, peer_timeout_s=3.0))
        self.publisher = WeightsPublisher(WeightsPublisherConfig())
        self.tracker = ReceiveTracker()
        self.received: dict[int, int] = {}
        self.hellos: list[Hello] = []
        self.batches: list[TransitionBatch] = []
        self.weights_endpoint = ""
        self.gaps = 0

    async def start(self) -> str:
        self.uplink_endpoint = await self.server.start()
        self.weights_endpoint = await self.publisher.start()
        return self.uplink_endpoint

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.server.run())
                tg.create_task(self._serve())
        finally:
            self.close()

    async def _serve(self) -> None:
        while True:
            peer, msg = await self.server.recv()
            if isinstance(msg, Hello):
                self.hellos.append(msg)
                self.server.send(peer, self._welcome(msg))
            elif isinstance(msg, TransitionBatch):
                self._ingest(peer, msg)

    def _welcome(self, hello: Hello) -> Welcome:
        reason = self.refuse
        if not reason and hello.config_hash != self.settings.config_hash():
            reason = f"config hash differs: the learner expects {self.settings.to_dict()}"
        resume = 0 if reason else self.tracker.resume_point(hello.session_id, hello.next_seq)
        return Welcome(session_id=hello.session_id, accepted=not reason, reason=reason, resume_seq=resume,
                       net_config=self.net_config, weights_endpoint=self.weights_endpoint)

    def _ingest(self, peer: bytes, batch: TransitionBatch) -> None:
        try:
            fresh = self.tracker.admit(batch)
        except SequenceGap:
            self.gaps += 1
            return
        if fresh is not None:
            for seq in range(fresh.first_seq, fresh.end_seq):
                self.received[seq] = self.received.get(seq, 0) + 1
            self.batches.append(fresh)
            self.tracker.commit(batch.session_id, fresh.end_seq)
        committed = self.tracker.committed(batch.session_id)
        self.server.send(peer, Ack(session_id=batch.session_id, seq=committed, trained_through=committed))

    def publish(self, agent: str, version: int, *, obs_spec: dict, action_dim: int, seed: int = 0,
                corrupt: bool = False) -> Weights:
        torch.manual_seed(seed)
        actor = build_actor(obs_spec, action_dim, self.net_config)
        tensors = {k: v.detach().numpy().copy() for k, v in actor.state_dict().items()}
        weights = Weights.create(agent=agent, version=version, tensors=tensors)
        if corrupt:  # right checksum, wrong layout: the runtime's slot must reject it
            name = next(iter(tensors))
            bad = dict(tensors)
            bad[name] = np.zeros((1, 1), np.float32)
            weights = Weights.create(agent=agent, version=version, tensors=bad)
        self.publisher.publish(weights)
        return weights

    def close(self) -> None:
        self.server.close()
        self.publisher.close()


OBS_SPEC = {"proprio": ((4,), "float32")}


def loopback_config(tmp_path: Path, learner: str, **loop) -> RuntimeConfig:
    """The tests' runtime config: loopback on random ports, short timeouts, no real-time levers;
    ``loop`` sets ``[loop]`` keys (50 Hz and batches of 8 unless given)."""
    return RuntimeConfig(process=ProcessConfig(spill_dir=tmp_path / "spill", control_bind="tcp://127.0.0.1:0"),
                         link=LinkConfig(learner=learner, hello_timeout_s=1.0, connect_retry_s=0.2, peer_timeout_s=1.5,
                                         ack_wait_s=5.0),
                         loop=LoopSettings(**{"hz": 50.0, "batch_steps": 8, **loop}),
                         isolation=IsolationConfig(priority="none", gc_mode="freeze"))


def make_daemon(tmp_path: Path, learner: str, robot: FakeRobot, **loop) -> RuntimeDaemon:
    return RuntimeDaemon(loopback_config(tmp_path, learner, **loop), robot, [], FACTS)


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_steps_stream_with_seqs_acks_and_weights_hot_swap(tmp_path: Path) -> None:
    async def body() -> None:
        learner = ScriptedLearner()
        endpoint = await learner.start()
        robot = FakeRobot()
        daemon = make_daemon(tmp_path, endpoint, robot, max_steps=150)
        async with asyncio.TaskGroup() as tg:
            learner_task = tg.create_task(learner.run())
            run = tg.create_task(daemon.run())
            await until(lambda: daemon.loop is not None and daemon.loop.steps >= 30)
            learner.publish("forward", 1, obs_spec=OBS_SPEC, action_dim=ACTION_DIM, seed=1)
            await until(lambda: daemon.policy.version(0) == 1)
            learner.publish("forward", 2, obs_spec=OBS_SPEC, action_dim=ACTION_DIM, seed=2, corrupt=True)
            await until(lambda: daemon.policy.rejected >= 1)
            assert daemon.policy.version(0) == 1  # the bad blob changed nothing
            code = await run
            learner_task.cancel()
        assert code == EXIT_OK
        hello = learner.hellos[0]
        assert hello.config_hash == SessionSettings(switch_interval=200).config_hash()
        assert set(hello.observation_space) == {"proprio"} and hello.next_seq == 0
        assert learner.received == {seq: 1 for seq in range(150)}  # every step once, in order
        stats = daemon.loop.stats()
        assert stats.loop.steps == 150  # swaps and rejections happen off the tick: a few skips only from
        assert stats.skipped_ticks <= max(2, stats.ticks // 50)  # the shared 2-core test machine
        assert daemon.outbox.acked_seq == 150 and robot.stop_calls >= 1
        agents = np.concatenate([b.agents for b in learner.batches])
        assert agents.shape == (150,)
    asyncio.run(body())


def test_control_commands_and_status_detail(tmp_path: Path) -> None:
    async def body() -> None:
        learner = ScriptedLearner()
        endpoint = await learner.start()
        robot = FakeRobot()
        daemon = make_daemon(tmp_path, endpoint, robot)
        client = None
        async with asyncio.TaskGroup() as tg:
            learner_task = tg.create_task(learner.run())
            run = tg.create_task(daemon.run())
            await until(lambda: daemon.control_endpoint is not None and daemon.loop.steps > 5)
            client = ControlClient(ControlClientConfig(endpoint=daemon.control_endpoint))
            status = await client.request(Command(kind="status", agent=None, request_id=1), 2.0)
            for key in ("steps", "agent", "seed_phase", "acked_seq", "queue_depth", "spilled_bytes", "overruns",
                        "jitter_p99_ms", "weights_version", "env_resets"):
                assert key in status.detail, key
            assert status.detail["seed_phase"] is True and status.state == "running"
            status = await client.request(Command(kind="switch_agent", agent="backward", request_id=2), 2.0)
            assert status.ok and status.detail["agent"] == "backward"
            status = await client.request(Command(kind="estop", agent=None, request_id=3), 2.0)
            assert status.state == "estopped" and robot.stop_calls >= 1
            steps = daemon.loop.steps
            await asyncio.sleep(0.1)
            assert daemon.loop.steps == steps  # nothing moves or records while e-stopped
            await client.request(Command(kind="resume", agent=None, request_id=4), 2.0)
            await until(lambda: daemon.loop.steps > steps)
            await client.request(Command(kind="go_home", agent=None, request_id=5), 2.0)
            await until(lambda: robot.home_calls == 1)
            client.close()
            daemon.request_stop("test")  # what SIGTERM does
            assert await run == EXIT_OK
            learner_task.cancel()
    asyncio.run(body())


def test_refused_welcome_exits_non_zero_with_the_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> int:
        learner = ScriptedLearner(settings=SessionSettings(switch_interval=50))
        endpoint = await learner.start()
        daemon = make_daemon(tmp_path, endpoint, FakeRobot())
        async with asyncio.TaskGroup() as tg:
            learner_task = tg.create_task(learner.run())
            code = await daemon.run()
            learner_task.cancel()
        return code

    assert asyncio.run(body()) == EXIT_REFUSED
    assert "switch_interval" in caplog.text and "refused" in caplog.text


def test_learner_gone_spills_and_everything_arrives_once_when_it_is_back(tmp_path: Path) -> None:
    async def body() -> None:
        first = ScriptedLearner()
        endpoint = await first.start()
        robot = FakeRobot()
        config = loopback_config(tmp_path, endpoint, max_steps=200)
        cap = 3 * SpillConfig.segment_bytes  # [process] spill_max_bytes reaches the spill log
        daemon = RuntimeDaemon(dataclasses.replace(config, process=dataclasses.replace(config.process,
                                                                                       spill_max_bytes=cap)),
                               robot, [], FACTS)
        async with asyncio.TaskGroup() as tg:
            first_task = tg.create_task(first.run())
            run = tg.create_task(daemon.run())
            await until(lambda: daemon.loop is not None and daemon.outbox.acked_seq >= 40)
            first_task.cancel()  # the learner dies; its state lives on in its tracker (its "journal")
            await until(lambda: daemon.loop.steps >= 120)
            assert daemon.outbox.acked_seq < 120 and daemon.outbox.spilled_bytes > 0
            assert daemon.outbox.spill.config.max_bytes == cap
            second = ScriptedLearner(uplink=endpoint)
            second.tracker, second.received = first.tracker, first.received
            await second.start()
            second_task = tg.create_task(second.run())
            assert await run == EXIT_OK
            second_task.cancel()
        assert second.received == {seq: 1 for seq in range(200)}
        assert len(second.hellos) >= 1 and second.hellos[-1].next_seq > 40
        # the second learner's welcome names its own weights endpoint: the runtime resubscribes
        # there as soon as the welcome arrives, not at the next poll
        assert daemon.link is not None and daemon.link.weights_endpoint == second.weights_endpoint
        assert daemon.link.subscribers[-1].config.endpoint == second.weights_endpoint
    asyncio.run(body())


def test_wildcard_weights_endpoint_uses_the_learner_host() -> None:
    from runtime.learner_link import reachable_endpoint

    assert reachable_endpoint("tcp://0.0.0.0:5556", "tcp://10.0.0.7:5555") == "tcp://10.0.0.7:5556"
    assert reachable_endpoint("tcp://*:5556", "tcp://gpu-host:5555") == "tcp://gpu-host:5556"
    assert reachable_endpoint("tcp://127.0.0.1:5556", "tcp://10.0.0.7:5555") == "tcp://127.0.0.1:5556"
    assert reachable_endpoint("ipc:///tmp/w", "tcp://10.0.0.7:5555") == "ipc:///tmp/w"


class FrozenRobot(FakeRobot):
    """Like a simulated twin in lock-step: its state only changes (and is stamped) when it acts."""

    def __init__(self) -> None:
        super().__init__()
        self._stamp = time.monotonic()

    def read_state(self):
        state = super().read_state()
        return dataclasses.replace(state, timestamp=self._stamp)

    def send_action(self, action: np.ndarray) -> np.ndarray:
        applied = super().send_action(action)
        self._stamp = time.monotonic()
        return applied


class SlowLearner(ScriptedLearner):
    """Acks (and reports trained) each batch 0.2 s late: a lock-step runtime waits that long."""

    def _ingest(self, peer: bytes, batch: TransitionBatch) -> None:
        send = self.server.send
        self.server.send = lambda p, msg: asyncio.get_running_loop().call_later(0.2, send, p, msg) and True
        try:
            super()._ingest(peer, batch)
        finally:
            self.server.send = send


def test_lockstep_simulation_records_the_seed_actions_not_timing_holds(tmp_path: Path) -> None:
    """A lock-step runtime waits for the learner before ticks while the twin stands still: its
    state is as old as the wait (here 0.2 s, over the 0.11 s watchdog at 50 Hz), but current.
    Every recorded seed-phase step must be the random action, never a zero-motion hold."""
    async def body() -> None:
        learner = SlowLearner()
        endpoint = await learner.start()
        robot = FrozenRobot()
        daemon = make_daemon(tmp_path, endpoint, robot, max_steps=48, lockstep=True)
        async with asyncio.TaskGroup() as tg:
            learner_task = tg.create_task(learner.run())
            code = await daemon.run()
            learner_task.cancel()
        assert code == EXIT_OK
        assert learner.received == {seq: 1 for seq in range(48)}
        actions = np.concatenate([b.actions for b in learner.batches])
        assert not np.all(actions[:, :3] == 0.0, axis=1).any(), actions
        assert daemon.loop.shield.counters.held == 0, daemon.loop.shield.counters.snapshot()
        assert np.abs(actions).mean() > 0.3  # uniform in [-1, 1] (as clipped by the workspace)
    asyncio.run(body())


def test_shield_times_out_sensors_except_for_a_simulated_robot_in_lockstep(tmp_path: Path) -> None:
    from runtime.daemon_config import shield_settings
    from runtime.robots import LOCKSTEP_SENSOR_AGE_S

    robot = FakeRobot()
    realtime = RuntimeConfig(loop=LoopSettings(hz=50.0))
    lockstep = realtime.with_overrides(["loop.lockstep=true"])
    own = shield_settings(realtime, robot, FACTS)
    assert own.hold_on_deadline_miss and own.max_state_age_s < 0.2 and own.max_frame_age_s < 0.2
    relaxed = shield_settings(lockstep, robot, FACTS)
    assert not relaxed.hold_on_deadline_miss
    assert relaxed.max_state_age_s == relaxed.max_frame_age_s == LOCKSTEP_SENSOR_AGE_S
    assert dataclasses.replace(relaxed, hold_on_deadline_miss=True, max_state_age_s=own.max_state_age_s,
                               max_frame_age_s=own.max_frame_age_s) == own  # nothing else changes
    franka = dataclasses.replace(FACTS, kind="franka")
    assert shield_settings(lockstep, robot, franka) == shield_settings(realtime, robot, franka)  # a real robot


class TrainingLearner(ScriptedLearner):
    """Acks each batch at once but reports it trained only after "training" it, ``step_s`` a
    step, one batch after the other — as the lock-step learner does: ``trained_through``
    moves a batch at a time, and the next batch waits for the one before."""

    def __init__(self, step_s: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.step_s = step_s
        self.trained = 0
        self._todo: asyncio.Queue[tuple[bytes, str, int, int]] = asyncio.Queue()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(super().run())
            tg.create_task(self._train())

    def _ingest(self, peer: bytes, batch: TransitionBatch) -> None:
        send, fresh = self.server.send, len(self.batches)
        self.server.send = lambda p, msg: send(p, dataclasses.replace(msg, trained_through=self.trained))
        try:
            super()._ingest(peer, batch)  # acks the seq at once, trained_through as it stands
        finally:
            self.server.send = send
        for new in self.batches[fresh:]:
            self._todo.put_nowait((peer, new.session_id, new.end_seq, new.size))

    async def _train(self) -> None:
        while True:
            peer, sid, end, size = await self._todo.get()
            await asyncio.sleep(self.step_s * size)
            self.trained = end
            self.server.send(peer, Ack(session_id=sid, seq=self.tracker.committed(sid), trained_through=end))


@pytest.mark.parametrize("lag", [None, 8, 24])
def test_lockstep_runs_at_most_lag_steps_ahead_of_trained_through(tmp_path: Path, lag: int | None) -> None:
    """Lock-step with a bounded lag: before the tick that records seq ``t`` the loop waits for
    ``trained_through ≥ t − lag`` (default two batches), so it never runs further ahead of the
    learner than the lag — and, the learner being the slower here, it does run that far: it
    records the next batch while the learner trains on the last, instead of waiting for it."""
    class Recording(RuntimeDaemon):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.leads: list[int] = []  # next step's seq − trained_through, as each tick is let through

        async def _await_learner(self) -> None:
            await super()._await_learner()
            self.leads.append(self.loop.next_step_seq - self.trained_through)

    async def body() -> None:
        learner = TrainingLearner(step_s=0.01)  # 10 ms a step; the loop ticks at 500 Hz (2 ms)
        endpoint = await learner.start()
        config = loopback_config(tmp_path, endpoint, hz=500.0, batch_steps=8, lockstep=True, lockstep_lag=lag,
                             max_steps=96)
        daemon = Recording(config, FrozenRobot(), [], FACTS)
        async with asyncio.TaskGroup() as tg:
            learner_task = tg.create_task(learner.run())
            code = await daemon.run()
            learner_task.cancel()
        assert code == EXIT_OK
        assert learner.received == {seq: 1 for seq in range(96)}
        limit = 16 if lag is None else lag  # default: two batches of 8
        assert daemon.config.loop.lag == limit
        assert max(daemon.leads) <= limit, max(daemon.leads)
        assert max(daemon.leads) == limit  # it ran ahead as far as allowed while the learner trained

    asyncio.run(body())


def test_lockstep_lag_defaults_to_two_batches_and_is_at_least_one() -> None:
    from runtime.daemon_config import LOCKSTEP_LAG_BATCHES, clock_settings

    config = RuntimeConfig(loop=LoopSettings(batch_steps=16, lockstep=True))
    assert LOCKSTEP_LAG_BATCHES == 2 and config.loop.lag == 32
    assert dataclasses.replace(config.loop, lockstep_lag=16).lag == 16
    with pytest.raises(ValueError, match="lockstep_lag"):
        LoopSettings(batch_steps=16, lockstep_lag=15)
    with pytest.raises(ValueError, match="loop.lockstep_lag"):  # named by its key when set in a layer
        config.with_overrides(["loop.lockstep_lag=15"])
    # lock-step waits on the learner, not on sub-ms tick precision: the clock sleeps, never spins
    assert clock_settings(config).spin_margin_s == 0.0 and clock_settings(config).rate_hz == config.loop.hz
    assert clock_settings(config.with_overrides(["loop.lockstep=false"])).spin_margin_s > 0
