"""Control loop with fake devices: hot-swap while running, bad weights, commands, RLDS marks."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime.clock import Clock, ClockConfig
from runtime.loop import ControlLoop, LoopConfig
from protocol.messages import TransitionBatch
from runtime.outbox import Outbox, OutboxConfig
from runtime.policy_slot import PolicySlot
from runtime.schedule import AgentSchedule, AgentScheduleConfig
from runtime.shield import Shield, ShieldConfig
from runtime.spill import SpillConfig, SpillLog
from tests.runtime.fakes import ACTION_DIM, FakeCamera, FakeRobot, FakeSimRobot, TinyPolicy, make_weights

torch.set_num_threads(1)


class ListSink:
    """Collects batches (a stand-in for the outbox where the test inspects the steps)."""

    def __init__(self) -> None:
        self.batches: list[TransitionBatch] = []
        self.accepting = True
        self.depth = 0
        self.spilled_bytes = 0
        self.seq = 0
        self.session_id = "test-session"

    @property
    def next_seq(self) -> int:
        return self.seq

    def put_steps(self, batch: TransitionBatch) -> int:
        assert batch.first_seq == self.seq
        self.batches.append(batch)
        self.seq += batch.size
        return self.seq - batch.size

    def column(self, name: str) -> np.ndarray:
        return np.concatenate([getattr(b, name) for b in self.batches])


def build(robot: FakeRobot, sink, *, rate_hz: float = 50.0, switch_every: int = 200, **loop_cfg) -> ControlLoop:
    camera = FakeCamera("cam")
    robot.connect()
    camera.connect()
    shield = Shield(ShieldConfig(action_low=(-1.0,) * ACTION_DIM, action_high=(1.0,) * ACTION_DIM,
                                 workspace=robot.workspace, gripper_index=3, control_period_s=1 / rate_hz,
                                 max_speed=5.0, max_state_age_s=0.5, max_frame_age_s=0.5))
    schedule = AgentSchedule(AgentScheduleConfig(switch_every=switch_every, seed=0), -np.ones(ACTION_DIM),
                             np.ones(ACTION_DIM))
    clock = Clock(ClockConfig(rate_hz=rate_hz, overrun_tolerance_s=0.005))
    config = LoopConfig(batch_steps=8, batch_interval_s=0.2, **loop_cfg)
    return ControlLoop(robot=robot, cameras=[camera], policy=PolicySlot(TinyPolicy), shield=shield,
                       schedule=schedule, clock=clock, sink=sink, config=config)


class Stop(Exception):
    """Ends a test run: raising it in the task group cancels the loop."""


async def run_for(loop: ControlLoop, seconds: float, *others) -> None:
    async def stop_after() -> None:
        await asyncio.sleep(seconds)
        raise Stop

    with pytest.raises(ExceptionGroup) as info:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(loop.run())
            for other in others:
                tg.create_task(other)
            tg.create_task(stop_after())
    assert info.group_contains(Stop) and len(info.value.exceptions) == 1, info.value.exceptions


def test_hot_swap_while_running_costs_no_tick(tmp_path: Path) -> None:
    robot = FakeRobot()

    async def body() -> None:
        spill = SpillLog.open(SpillConfig(directory=tmp_path, segment_bytes=1 << 20, max_bytes=1 << 26))
        outbox = Outbox(spill, OutboxConfig())
        outbox.start()
        loop = build(robot, outbox, rate_hz=50.0, switch_every=10)
        offers = []

        async def publisher() -> None:
            await asyncio.sleep(0.3)  # seed phase first
            for version in range(1, 9):
                agent = "forward" if version % 2 else "backward"
                offers.append(await loop.policy.offer(make_weights(agent, version, seed=version)))
                bad = make_weights(agent, 100 + version, seed=version)
                offers.append(await loop.policy.offer(type(bad)(agent, 100 + version, bad.tensors, "f" * 64)))
                await asyncio.sleep(0.12)

        try:
            started = time.perf_counter()
            await run_for(loop, 1.6, publisher())
            elapsed = time.perf_counter() - started
        finally:
            loop.policy.close()
            outbox.close()
        stats = loop.stats()
        loop_stats = stats.loop
        assert loop.clock.skipped == 0, "a tick was missed"
        assert stats.ticks >= int(elapsed * 50) - 3
        assert loop_stats.overruns <= max(2, stats.ticks // 20)  # shared 2-core machine: tolerate a few
        assert [o.accepted for o in offers] == [True, False] * 8
        assert loop.policy.version(0) == 7 and loop.policy.version(1) == 8 and loop.policy.rejected == 8
        assert loop_stats.steps == outbox.next_seq and robot.stop_calls >= 1
        assert loop_stats.inference_p50_ms > 0 and stats.policy["swap_to_active_ms_last"] < 200
        # 50 Hz leaves room for the 4 ms prefetch lead: it ran before the ticks that had weights
        assert len(loop.policy.prefetch_s) >= stats.ticks // 3 and stats.policy["prefetch_p50_ms"] > 0

    asyncio.run(body())


def test_steps_follow_rlds_and_the_schedule() -> None:
    robot = FakeRobot()
    sink = ListSink()

    async def body() -> None:
        loop = build(robot, sink, rate_hz=100.0, switch_every=5)
        loop.policy.offer_blocking(make_weights("forward", 1))
        await run_for(loop, 0.4)
        loop.policy.close()

    asyncio.run(body())
    agents = sink.column("agents")
    assert len(agents) > 20 and agents[:10].tolist() == [0] * 5 + [1] * 5
    is_first, is_last = sink.column("is_first"), sink.column("is_last")
    assert is_first[0] and not is_first[1:].any() and is_last[-1] and not is_last[:-1].any()
    actions = sink.column("actions")
    assert actions.dtype == np.float32 and np.all(np.abs(actions) <= 1)
    assert np.allclose(actions[:5], robot.actions[:5])
    assert set(sink.batches[0].observations) == {"cam", "proprio"}
    assert sink.batches[0].observations["cam"].shape[1:] == (3, 8, 8)


def test_pause_estop_home_and_env_reset_cut_segments() -> None:
    robot = FakeSimRobot()
    robot.home_seconds = 0.1
    sink = ListSink()

    async def body() -> None:
        loop = build(robot, sink, rate_hz=100.0, env_reset_every=15)

        async def operator() -> None:
            await asyncio.sleep(0.25)
            loop.pause()
            sent = len(robot.actions)
            await asyncio.sleep(0.1)
            assert len(robot.actions) > sent and np.all(robot.actions[-1][:3] == 0)  # holds while paused
            loop.resume()
            await asyncio.sleep(0.1)
            loop.estop()
            sent = len(robot.actions)
            await asyncio.sleep(0.1)
            assert len(robot.actions) == sent  # nothing sent during e-stop
            loop.resume()
            await loop.go_home()
            assert robot.home_calls == 1
            await asyncio.sleep(0.1)

        await run_for(loop, 0.9, operator())
        loop.policy.close()

    asyncio.run(body())
    assert robot.resets >= 2 and robot.stop_calls >= 2
    is_first, is_last = sink.column("is_first"), sink.column("is_last")
    segments = int(is_first.sum())
    assert segments >= 5 and segments == int(is_last.sum())
    starts, ends = np.flatnonzero(is_first), np.flatnonzero(is_last)
    assert np.all(ends[:-1] + 1 == starts[1:])  # every segment ends right before the next starts


def test_resets_and_goal_draws_are_refused_for_a_robot_that_is_not_simulated() -> None:
    for config in (dict(env_reset_every=10), dict(draw_goal_each_turn=True)):
        with pytest.raises(ValueError, match="need a simulated robot"):
            build(FakeRobot(), ListSink(), rate_hz=100.0, **config)


def test_a_goal_is_drawn_when_each_forward_turn_ends_and_cuts_the_segment() -> None:
    robot = FakeSimRobot()
    sink = ListSink()

    async def body() -> ControlLoop:
        loop = build(robot, sink, rate_hz=200.0, switch_every=10, draw_goal_each_turn=True)
        await run_for(loop, 0.6)
        loop.policy.close()
        return loop

    loop = asyncio.run(body())
    assert loop.held_ticks == 0 and loop.steps == len(robot.actions)
    # forward 0-9, backward 10-19, forward 20-29, ...: a draw after steps 10, 30, 50, ...
    assert len(robot.draws_at) >= 3 and loop.sim_events.goals_drawn == len(robot.draws_at)
    assert robot.draws_at == [10 + 20 * k for k in range(len(robot.draws_at))]
    is_first, agents = sink.column("is_first"), sink.column("agents")
    assert np.flatnonzero(is_first).tolist() == [0, *[d for d in robot.draws_at if d < len(is_first)]]
    assert np.all(agents[np.flatnonzero(is_first)[1:]] == 1)  # the backward turn starts the new segment


def test_no_goal_is_drawn_unless_asked() -> None:
    robot = FakeSimRobot()

    async def body() -> None:
        loop = build(robot, ListSink(), rate_hz=200.0, switch_every=10)
        await run_for(loop, 0.3)
        loop.policy.close()

    asyncio.run(body())
    assert robot.draws_at == [] and len(robot.actions) > 20


def test_stale_camera_holds_and_stops_recording() -> None:
    robot = FakeRobot()
    sink = ListSink()

    async def body() -> None:
        loop = build(robot, sink, rate_hz=100.0)
        camera = loop.cameras[0]

        async def freeze() -> None:
            await asyncio.sleep(0.15)
            camera.frozen_at = time.monotonic() - 10.0
            await asyncio.sleep(0.15)
            steps_frozen = loop.steps
            await asyncio.sleep(0.1)
            assert loop.steps == steps_frozen
            assert loop.last_result is not None and loop.last_result.held
            assert "frame_stale" in loop.last_result.reasons
            camera.frozen_at = None

        await run_for(loop, 0.6, freeze())
        loop.policy.close()
        assert loop.shield.counters.by_reason["frame_stale"] > 5

    asyncio.run(body())
    assert sink.column("is_first").sum() == 2


def test_blocked_sink_holds_the_robot() -> None:
    robot = FakeRobot()
    sink = ListSink()
    sink.accepting = False

    async def body() -> None:
        loop = build(robot, sink, rate_hz=100.0)
        await run_for(loop, 0.2)
        loop.policy.close()
        assert loop.holding and loop.steps == 0 and loop.stats().loop.paused
        assert all(np.all(a[:3] == 0) for a in robot.actions)

    asyncio.run(body())


def test_lock_step_gate_paces_the_loop() -> None:
    robot = FakeRobot()
    sink = ListSink()
    permits = asyncio.Queue()

    async def body() -> None:
        loop = build(robot, sink, rate_hz=100.0)
        loop._gate = permits.get  # the simulation's learner gate

        async def learner() -> None:
            for _ in range(5):
                await asyncio.sleep(0.05)
                permits.put_nowait(None)

        await run_for(loop, 0.5, learner())
        loop.policy.close()
        assert loop.clock.ticks == 5 and loop.clock.overruns == 0

    asyncio.run(body())


def test_warm_up_passes_follow_the_period_unless_set() -> None:
    auto = LoopConfig()
    assert [auto.passes_for(1 / hz) for hz in (2, 10, 20, 50, 100)] == [3, 3, 1, 1, 1]
    assert LoopConfig(prefetch_passes=2).passes_for(0.02) == 2
    with pytest.raises(ValueError, match="prefetch_passes"):
        LoopConfig(prefetch_passes=0)


def test_the_emulated_operator_resets_a_lost_scene_when_a_backward_turn_ends() -> None:
    """With ``operator_resets`` the loop looks at the scene once per backward turn end: lost, it
    resets the environment (cutting the segment) and counts an intervention; in reach, or at
    the end of a forward turn, it does nothing."""
    for lost in (True, False):
        robot = FakeSimRobot()
        robot.lost = lost
        sink = ListSink()

        async def body() -> ControlLoop:
            loop = build(robot, sink, rate_hz=200.0, switch_every=10, operator_resets=True)
            await run_for(loop, 0.6)
            loop.policy.close()
            return loop

        loop = asyncio.run(body())
        if not lost:
            assert robot.resets_at == [] and loop.sim_events.interventions == 0 and len(robot.actions) > 40
            continue
        # forward 0-9, backward 10-19 (then reset), forward 20-29, backward 30-39 (reset), ...
        assert len(robot.resets_at) >= 2 and loop.sim_events.interventions == len(robot.resets_at)
        assert robot.resets_at == [20 + 20 * k for k in range(len(robot.resets_at))]
        is_first, is_last, agents = sink.column("is_first"), sink.column("is_last"), sink.column("agents")
        starts = [r for r in robot.resets_at if r < len(is_first)]
        assert np.flatnonzero(is_first).tolist() == [0, *starts]
        assert np.all(agents[starts] == 0) and np.all(is_last[[s - 1 for s in starts]])  # closed by the turn's last step
        assert np.all(agents[[s - 1 for s in starts]] == 1)


def test_operator_resets_are_refused_for_a_robot_that_is_not_simulated() -> None:
    with pytest.raises(ValueError, match="need a simulated robot"):
        build(FakeRobot(), ListSink(), rate_hz=100.0, operator_resets=True)
