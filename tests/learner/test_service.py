"""The learner service in-process over real loopback sockets, driven by a scripted runtime."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq
import zmq.asyncio

from learner.config import profile
from learner.demo_dir import load_demo_dir
from learner.errors import ServiceError
from learner.service import LearnerService
from learner.training_worker import WorkItem
from protocol.codec import decode, encode
from protocol.demos import DemoMeta, Demos, save_demos
from protocol.messages import Ack, Command, Hello, Status, TransitionBatch, Weights, Welcome
from protocol.spaces import ArraySpec
from protocol.session import SessionSettings
from protocol.transport import ControlClient, ControlClientConfig

torch.set_num_threads(1)

DIM, ACT = 4, 2
TINY = ["network.hidden_dim=16", "network.feature_dim=8", "network.num_critics=2", "agent.batch_size=8",
        "replay.batch_size=8", "replay.demo_per_batch=2", "replay.capacity=2000", "vice.batch_size=8",
        "vice.hidden_dim=8", "vice.updates_every=20", "medal.batch_size=8", "medal.hidden_dim=8",
        "medal.updates_every=20", "schedule.seed_frames=16", "schedule.goal_frames=2", "service.publish_every=4",
        "service.checkpoint_every=40", "service.journal_fsync=false", "service.progress_every_s=1.0",
        'service.uplink="tcp://127.0.0.1:0"', 'service.weights="tcp://127.0.0.1:0"',
        'service.control="tcp://127.0.0.1:0"', "agent.encoder_bf16=false"]


def write_demos(directory: Path, episodes: int = 3, steps: int = 8) -> Path:
    """Writes small forward and backward state demos (a point moving towards a goal)."""
    rng = np.random.default_rng(0)
    for direction in ("forward", "backward"):
        n = episodes * steps
        first = np.zeros(n, bool)
        first[::steps] = True
        last = np.zeros(n, bool)
        last[steps - 1 :: steps] = True
        rewards = np.where(last, 0.0, 0.0).astype(np.float32)
        rewards[np.flatnonzero(last) - 1] = 1.0
        actions = rng.uniform(-1, 1, (n, ACT)).astype(np.float32)
        actions[last] = 0.0
        demos = Demos(observations={"state": rng.normal(size=(n, DIM)).astype(np.float32)}, actions=actions,
                      rewards=rewards, terminals=last.copy(), is_first=first, is_last=last,
                      episode_success=np.ones(episodes, bool),
                      meta=DemoMeta(task="point", direction=direction, obs_mode="state", source="test"))
        save_demos(directory / f"point_{direction}.npz", demos)
    return directory


def tiny_config(*extra: str, mode: str = "lockstep"):
    return profile("sim").with_overrides([*TINY, f"service.mode={mode}", *extra])


def make_hello(session: str, *, dim: int = DIM, config_hash: str | None = None, next_seq: int = 0,
               oldest_seq: int = 0) -> Hello:
    return Hello(session_id=session, robot="sim", task="point",
                 observation_space={"state": ArraySpec(dtype="float32", shape=(dim,))},
                 action_space=ArraySpec(dtype="float32", shape=(ACT,)),
                 config_hash=config_hash or SessionSettings(switch_interval=200).config_hash(),
                 oldest_seq=oldest_seq, next_seq=next_seq)


def make_batch(session: str, first_seq: int, n: int, *, dim: int = DIM, switch: int = 200) -> TransitionBatch:
    rng = np.random.default_rng(first_seq)
    seqs = np.arange(first_seq, first_seq + n)
    return TransitionBatch(session_id=session, first_seq=first_seq,
                           observations={"state": rng.normal(size=(n, dim)).astype(np.float32)},
                           actions=rng.uniform(-1, 1, (n, ACT)).astype(np.float32),
                           agents=((seqs // switch) % 2).astype(np.uint8), timestamps=seqs.astype(np.float64),
                           is_first=seqs == 0, is_last=np.zeros(n, bool))


class Runtime:
    """A scripted runtime: a raw DEALER speaking the protocol (no reconnect logic of its own)."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(endpoint)

    def send(self, msg: object) -> None:
        self.sock.send_multipart(encode(msg))

    async def recv(self, kind: type, timeout: float = 10.0):
        async with asyncio.timeout(timeout):
            while True:
                msg = decode(await self.sock.recv_multipart())
                if isinstance(msg, kind):
                    return msg

    async def hello(self, hello: Hello) -> Welcome:
        self.send(hello)
        return await self.recv(Welcome)

    async def ack_at_least(self, seq: int, *, trained: int = 0, timeout: float = 20.0) -> Ack:
        async with asyncio.timeout(timeout):
            while True:
                ack = await self.recv(Ack)
                if ack.seq >= seq and ack.trained_through >= trained:
                    return ack

    def close(self) -> None:
        self.sock.close(linger=0)


async def started(service: LearnerService) -> asyncio.Task:
    task = asyncio.create_task(service.run())
    async with asyncio.timeout(30):
        while not service.started.is_set():
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
    return task


async def status(service: LearnerService) -> Status:
    client = ControlClient(ControlClientConfig(endpoint=service.endpoints["control"]))
    try:
        return await client.request(Command(kind="status", agent=None, request_id=1), timeout=5.0)
    finally:
        client.close()


async def stop(service: LearnerService, task: asyncio.Task) -> None:
    service.request_stop()
    async with asyncio.timeout(60):
        await task


@pytest.fixture
def demos(tmp_path: Path):
    return load_demo_dir(write_demos(tmp_path / "demos"))


def test_hello_refused_on_space_or_hash_mismatch_with_the_reason(tmp_path: Path, demos) -> None:
    async def scenario() -> None:
        service = LearnerService(tiny_config(), demos, run_dir=tmp_path / "run")
        task = await started(service)
        ctx = zmq.asyncio.Context()
        try:
            rt = Runtime(ctx, service.endpoints["uplink"])
            bad_space = await rt.hello(make_hello("s-space", dim=DIM + 1))
            assert not bad_space.accepted and "observation_space" in bad_space.reason and "(5,)" in bad_space.reason
            bad_hash = await rt.hello(make_hello("s-hash", config_hash=SessionSettings(switch_interval=7).config_hash()))
            assert not bad_hash.accepted and "config_hash" in bad_hash.reason and "switch_interval" in bad_hash.reason
            good = await rt.hello(make_hello("s-ok"))
            assert good.accepted and good.resume_seq == 0 and good.weights_endpoint.startswith("tcp://")
            assert good.net_config["hidden_dim"] == 16
            rt.close()
            st = await status(service)
            assert st.ok and st.detail["refused_sessions"] == 2
        finally:
            await stop(service, task)
            ctx.destroy(linger=0)

    asyncio.run(scenario())


def test_ingest_acks_trains_and_publishes_finite_weights(tmp_path: Path, demos) -> None:
    async def scenario() -> None:
        service = LearnerService(tiny_config("service.log_every=4"), demos, run_dir=tmp_path / "run")
        task = await started(service)
        ctx = zmq.asyncio.Context()
        sub = ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(service.endpoints["weights"])
        try:
            rt = Runtime(ctx, service.endpoints["uplink"])
            assert (await rt.hello(make_hello("s1"))).accepted
            for first in range(0, 48, 8):
                rt.send(make_batch("s1", first, 8))
            rt.send(make_batch("s1", 40, 8))  # a resend: every step a duplicate
            ack = await rt.ack_at_least(48, trained=48)
            assert ack.seq == 48
            st = await status(service)
            d = st.detail
            assert d["transitions_ingested"] == 48 and d["duplicates_dropped"] == 8 and d["env_steps"] == 48
            assert d["seed_phase"] is False and d["updates"] == 48 - 16  # lockstep: UTD 1 after 16 seed frames
            assert d["utd"] == pytest.approx(1.0) and d["sessions"] == 1
            versions = {}
            async with asyncio.timeout(10):
                while versions.get("forward", -1) < 4:
                    w = decode(await sub.recv_multipart())
                    assert isinstance(w, Weights)
                    w.verify()
                    assert all(np.isfinite(t).all() for t in w.tensors.values())
                    # service.weights_dtype defaults to float16 on the wire
                    assert {t.dtype for t in w.tensors.values()} == {np.dtype(np.float16)}
                    versions[w.agent] = w.version
            rt.close()
        finally:
            await stop(service, task)
            ctx.destroy(linger=0)
        assert any((tmp_path / "run").glob("ckpt-*")) and (tmp_path / "run" / "endpoints.json").is_file()
        # TensorBoard holds VICE too, although its rounds (every 20 env steps)
        # rarely fall on a logging step (every 4 updates)
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(tmp_path / "run" / "tb"))
        events.Reload()
        scalars = set(events.Tags()["scalars"])
        assert {"disc/vice_accuracy", "disc/vice_logits_pos", "losses/forward_critic"} <= scalars, scalars

    asyncio.run(scenario())


def test_lockstep_reports_trained_through_before_waiting_for_more_data(tmp_path: Path, demos) -> None:
    """Lock-step: once every update owed for the ingested steps is done, the training thread
    reports ``trained_through`` *before* it waits for the next batch — a runtime at its lag
    waits for exactly that report (it used to come only after a 50 ms wait for data that could
    not come). The scripted runtime keeps two batches in flight, as a lock-step runtime with
    its default lag does. At the end the updates equal the post-seed steps and none is owed."""
    async def scenario() -> None:
        service = LearnerService(tiny_config(), demos, run_dir=tmp_path / "run")
        task = await started(service)
        worker = service.worker
        assert worker is not None
        late: list[tuple[dict, dict]] = []
        drain = worker._drain

        def checked(*, block: bool) -> None:  # runs on the training thread
            if block:
                ingested = dict(worker.ingested)
                reported = {sid: worker._trained.get(sid) for sid in ingested}
                if reported != ingested:
                    late.append((ingested, reported))
            drain(block=block)

        worker._drain = checked  # type: ignore[method-assign]
        ctx = zmq.asyncio.Context()
        try:
            rt = Runtime(ctx, service.endpoints["uplink"])
            assert (await rt.hello(make_hello("s1"))).accepted
            batches = [make_batch("s1", first, 8) for first in range(0, 64, 8)]
            rt.send(batches[0])
            for i, batch in enumerate(batches[1:], start=1):
                await rt.ack_at_least(8 * (i - 1), trained=8 * (i - 1))  # lag: two batches ahead
                rt.send(batch)
            await rt.ack_at_least(64, trained=64)
            d = (await status(service)).detail
            assert d["env_steps"] == 64 and d["updates"] == 64 - 16 and d["updates_owed"] == 0  # UTD 1, all done
            assert not late, late[:3]
            rt.close()
        finally:
            await stop(service, task)
            ctx.destroy(linger=0)

    asyncio.run(scenario())


def test_malformed_session_dropped_while_a_good_one_is_served(tmp_path: Path, demos) -> None:
    async def scenario() -> None:
        service = LearnerService(tiny_config(mode="realtime"), demos, run_dir=tmp_path / "run")
        task = await started(service)
        ctx = zmq.asyncio.Context()
        try:
            good, bad = Runtime(ctx, service.endpoints["uplink"]), Runtime(ctx, service.endpoints["uplink"])
            assert (await good.hello(make_hello("good"))).accepted
            assert (await bad.hello(make_hello("bad"))).accepted
            bad.send(make_batch("bad", 0, 4, dim=DIM + 2))  # shapes differ from its declared space
            refusal = await bad.recv(Welcome)
            assert not refusal.accepted and "dropped" in refusal.reason and "observations.state" in refusal.reason
            bad.send(make_batch("bad", 0, 4))  # no longer a known peer: ignored
            for first in range(0, 24, 8):
                good.send(make_batch("good", first, 8))
            assert (await good.ack_at_least(24)).seq == 24
            d = (await status(service)).detail
            assert d["transitions_ingested"] == 24 and d["malformed_rejected"] >= 2 and d["sessions"] == 1
            good.close()
            bad.close()
        finally:
            await stop(service, task)
            ctx.destroy(linger=0)

    asyncio.run(scenario())


def subscriber(ctx: zmq.asyncio.Context, endpoint: str) -> zmq.asyncio.Socket:
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    return sub


async def next_weights(sub: zmq.asyncio.Socket, timeout: float) -> Weights | None:
    """Returns the next weights blob, or None when none comes within ``timeout`` s."""
    try:
        async with asyncio.timeout(timeout):
            w = decode(await sub.recv_multipart())
    except TimeoutError:
        return None
    assert isinstance(w, Weights)
    w.verify()
    return w


@pytest.mark.parametrize("last_batch, expected", [
    (8, {"forward": 0, "backward": 0}),  # ingest ends exactly at the boundary: no update yet
    (16, {"forward": 1, "backward": 0}),  # the batch crosses it: published right after update 1
])
def test_nothing_is_published_in_the_seed_phase_and_both_agents_as_it_ends(tmp_path: Path, demos, last_batch: int,
                                                                           expected: dict[str, int]) -> None:
    """The seed phase is the first 16 ingested steps here. Nothing is published during it;
    the iteration that finds it over publishes both agents, after the update it owes (the
    acting forward agent's first), and before ``trained_through`` covers the boundary, so a
    lock-step runtime (never more than a window ahead of ``trained_through``) has them on
    their way before it may go further. The backward agent, which has not acted since, goes
    out untrained (version 0)."""
    async def scenario() -> None:
        service = LearnerService(tiny_config(), demos, run_dir=tmp_path / "run")
        task = await started(service)
        ctx = zmq.asyncio.Context()
        sub = subscriber(ctx, service.endpoints["weights"])
        try:
            rt = Runtime(ctx, service.endpoints["uplink"])
            assert (await rt.hello(make_hello("s1"))).accepted
            rt.send(make_batch("s1", 0, 8))  # half the seed frames (all forward steps: switch at 200)
            await rt.ack_at_least(8, trained=8)
            # the PUB re-sends its newest blobs every 2 s: 3 s of silence means none exists
            assert await next_weights(sub, 3.0) is None
            d = (await status(service)).detail
            assert d["seed_phase"] is True and d["updates"] == 0
            assert d["weights_version_forward"] == -1 and d["weights_version_backward"] == -1
            assert list(service.published) == []

            end = 8 + last_batch
            rt.send(make_batch("s1", 8, last_batch))
            await rt.ack_at_least(end, trained=end)
            # published (on the loop, in order) before the ack that reports the steps trained
            assert sorted(service.published)[:2] == sorted(expected.items())
            got: dict[str, int] = {}
            while len(got) < 2:
                w = await next_weights(sub, 10.0)
                assert w is not None, got
                got.setdefault(w.agent, w.version)
            assert got == expected
            d = (await status(service)).detail
            assert d["seed_phase"] is False and d["updates"] == end - 16
            newest = max(v for a, v in service.published if a == "forward")
            assert newest == {8: 0, 16: 5}[last_batch]  # then every publish_every = 4 updates: 1, 5
            assert (d["weights_version_forward"], d["weights_version_backward"]) == (newest, 0)
            rt.close()
        finally:
            await stop(service, task)
            ctx.destroy(linger=0)

    asyncio.run(scenario())


def test_without_seed_frames_the_initial_weights_are_published_at_once(tmp_path: Path, demos) -> None:
    """seed_frames = 0 (or a learner resumed past its seed phase): no step is random, so both
    agents' weights go out before any step arrives."""
    async def scenario() -> None:
        service = LearnerService(tiny_config("schedule.seed_frames=0"), demos, run_dir=tmp_path / "run")
        task = await started(service)
        ctx = zmq.asyncio.Context()
        sub = subscriber(ctx, service.endpoints["weights"])
        try:
            got = {}
            while len(got) < 2:
                w = await next_weights(sub, 10.0)
                assert w is not None, got
                got[w.agent] = w.version
            assert got == {"forward": 0, "backward": 0}
        finally:
            await stop(service, task)
            ctx.destroy(linger=0)

    asyncio.run(scenario())


def test_non_finite_actor_is_never_published(tmp_path: Path, demos) -> None:
    async def scenario() -> None:
        # No seed phase: the first publication is due at once, while the actor is poisoned.
        service = LearnerService(tiny_config("schedule.seed_frames=0"), demos, run_dir=tmp_path / "run")
        ctx = zmq.asyncio.Context()
        task = asyncio.create_task(service.run())
        async with asyncio.timeout(30):
            while service.worker is None:
                await asyncio.sleep(0.001)
        with torch.no_grad():  # poison the forward actor before the thread's first publication
            next(service.worker.trainer.agents[0].actor.parameters()).fill_(float("nan"))
        async with asyncio.timeout(30):
            while not service.started.is_set():
                await asyncio.sleep(0.02)
        sub = ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(service.endpoints["weights"])
        try:
            rt = Runtime(ctx, service.endpoints["uplink"])
            assert (await rt.hello(make_hello("s1"))).accepted
            for first in range(0, 40, 8):
                rt.send(make_batch("s1", first, 8))  # all forward steps (switch at 200)
            await rt.ack_at_least(40, trained=40)
            d = (await status(service)).detail
            assert d["weights_withheld"] >= 1 and d["skipped_nonfinite"] >= 1
            got = 0
            async with asyncio.timeout(10):
                while got < 2:
                    w = decode(await sub.recv_multipart())
                    assert all(np.isfinite(t).all() for t in w.tensors.values()), w.agent
                    got += 1
            assert all(math.isfinite(v) for v in (d["utd"], d["updates_per_s"]))
            rt.close()
        finally:
            await stop(service, task)
            ctx.destroy(linger=0)

    asyncio.run(scenario())


def test_a_training_thread_that_dies_ends_the_service_with_its_error(tmp_path: Path, demos) -> None:
    """The event loop learns of the training thread's end from the thread itself (no polling)
    and the service stops with the thread's error, not with a hang or a generic message."""
    async def scenario() -> None:
        service = LearnerService(tiny_config(), demos, run_dir=tmp_path / "run")
        task = await started(service)
        worker = service.worker
        assert worker is not None

        def fail() -> None:
            raise RuntimeError("out of memory (simulated)")

        worker._iteration = fail  # type: ignore[method-assign]  # from its next iteration on
        worker.pause(False)  # a command wakes the thread, which waits for data without a timeout
        with pytest.raises(ServiceError, match=r"training failed: out of memory \(simulated\)"):
            async with asyncio.timeout(20):
                await task
        assert not worker.alive()

    asyncio.run(scenario())


def test_a_hole_the_runtime_declares_is_counted_lost_and_skipped(tmp_path: Path, demos) -> None:
    async def scenario() -> None:
        service = LearnerService(tiny_config(), demos, run_dir=tmp_path / "run")
        task = await started(service)
        ctx = zmq.asyncio.Context()
        try:
            rt = Runtime(ctx, service.endpoints["uplink"])
            assert (await rt.hello(make_hello("s1"))).accepted
            rt.send(make_batch("s1", 0, 8))
            await rt.ack_at_least(8)
            rt.send(make_batch("s1", 16, 8))  # 8..15 missing: a transient gap, not a loss
            ack = await rt.ack_at_least(8)
            assert ack.seq == 8 and (await status(service)).detail["lost_steps"] == 0
            rt.close()
            # reconnect: the runtime's spill log lost 8..15 and says so in its hello
            rt = Runtime(ctx, service.endpoints["uplink"])
            welcome = await rt.hello(make_hello("s1", oldest_seq=16, next_seq=24))
            assert welcome.accepted and welcome.resume_seq == 16
            rt.send(make_batch("s1", 16, 8))
            assert (await rt.ack_at_least(24)).seq == 24
            d = (await status(service)).detail
            assert d["lost_steps"] == 8 and d["transitions_ingested"] == 16
            # The service is the one admission point: the training thread records what it took
            # in (the hole included) and refuses, loudly, a batch behind it instead of deduping.
            worker = service.worker
            assert worker is not None
            for _ in range(200):
                if worker.ingested.get("s1") == 24:
                    break
                await asyncio.sleep(0.05)
            assert worker.ingested == {"s1": 24}
            with pytest.raises(ServiceError, match="admits in order"):
                worker.ingest(WorkItem(0, 0, make_batch("s1", 8, 8)))
            rt.close()
        finally:
            await stop(service, task)
            ctx.destroy(linger=0)

    asyncio.run(scenario())


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only")
def test_pin_process_moves_every_thread_and_refuses_absent_cpus() -> None:
    # In a child: pinning the test process itself would slow every test after this one.
    cpu = min(os.sched_getaffinity(0))
    code = textwrap.dedent(f"""
        import os, threading, time
        from learner.placement import pin_process
        from learner.service import ServiceError
        started = threading.Event()
        t = threading.Thread(target=lambda: (started.set(), time.sleep(5)), daemon=True)
        t.start(); started.wait()
        assert pin_process(({cpu},)) is True
        tids = [int(x) for x in os.listdir("/proc/self/task")]
        assert len(tids) >= 2 and all(os.sched_getaffinity(tid) == {{{cpu}}} for tid in tids), tids
        assert pin_process(()) is False
        try:
            pin_process((10_000,))
        except ServiceError as e:
            assert "10000" in str(e)
        else:
            raise AssertionError("an absent CPU was accepted")
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr


def test_disk_use_is_measured_and_warned_above_the_cap(tmp_path: Path, demos, caplog) -> None:
    # service.disk_warn_gib at ~1 KiB: the first checkpoint (40 updates) is over it
    async def scenario() -> LearnerService:
        service = LearnerService(tiny_config("service.disk_warn_gib=0.000001"), demos, run_dir=tmp_path / "run")
        task = await started(service)
        ctx = zmq.asyncio.Context()
        try:
            rt = Runtime(ctx, service.endpoints["uplink"])
            assert (await rt.hello(make_hello("s1"))).accepted
            for first in range(0, 64, 8):
                rt.send(make_batch("s1", first, 8))
            await rt.ack_at_least(64, trained=64)
            rt.close()
        finally:
            await stop(service, task)
            ctx.destroy(linger=0)
        return service

    with caplog.at_level(logging.WARNING, logger="learner.service"):
        service = asyncio.run(scenario())
    assert any((tmp_path / "run").glob("ckpt-*"))
    assert any("disk: the run directory" in r.getMessage() and "disk_warn_gib" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    worker = service.worker
    assert worker is not None and worker.disk_bytes > 2**10 and "disk_gib" in worker.progress_figures()


def test_the_pipeline_refuses_the_bc_proposal_it_cannot_deploy(tmp_path: Path, demos) -> None:
    with pytest.raises(ServiceError, match="bc_proposal"):
        LearnerService(tiny_config("agent.bc_proposal=true"), demos, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
