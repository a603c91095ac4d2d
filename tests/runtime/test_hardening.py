"""Issue 17 at the runtime, against a scripted learner over real loopback sockets: a refused
batch is quarantined and never resent; a non-finite sensor reading is a hold, never a
recorded step; every rejected weights blob is counted in the status."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgpack
import numpy as np
import torch

from hardware.interfaces import RobotState
from protocol.codec import encode
from protocol.errors import SequenceGap
from protocol.messages import Ack, Command, TransitionBatch, Weights
from protocol.value_checks import batch_value_error
from protocol.transport import ControlClient, ControlClientConfig, batch_refusal
from runtime.daemon import EXIT_OK
from runtime.spill_io import decode_batch
from tests.runtime.fakes import ACTION_DIM, FakeRobot
from tests.runtime.test_daemon import OBS_SPEC, ScriptedLearner, make_daemon, until

torch.set_num_threads(1)


class RefusingLearner(ScriptedLearner):
    """Refuses the batch that starts at ``refuse_at`` (as the learner does for bad values)."""

    def __init__(self, refuse_at: int) -> None:
        super().__init__()
        self.refuse_at = refuse_at
        self.sent: dict[int, int] = {}

    def _ingest(self, peer: bytes, batch: TransitionBatch) -> None:
        for seq in range(batch.first_seq, batch.end_seq):
            self.sent[seq] = self.sent.get(seq, 0) + 1
        try:
            fresh = self.tracker.admit(batch)
        except SequenceGap:
            return
        if fresh is not None and fresh.first_seq <= self.refuse_at < fresh.end_seq:
            self.tracker.commit(batch.session_id, fresh.end_seq)
            self.server.send(peer, batch_refusal(batch.session_id, fresh.first_seq, fresh.end_seq,
                                                 "transitions.actions: outside [-1, 1] value 1e+30 (test)"))
            committed = self.tracker.committed(batch.session_id)
            self.server.send(peer, Ack(session_id=batch.session_id, seq=committed, trained_through=committed))
            return
        if fresh is not None:
            self.tracker.rewind(batch.session_id)  # let the parent admit it again
        super()._ingest(peer, batch)


def test_a_refused_batch_is_quarantined_counted_and_never_resent(tmp_path: Path) -> None:
    async def body() -> None:
        learner = RefusingLearner(refuse_at=8)
        endpoint = await learner.start()
        daemon = make_daemon(tmp_path, endpoint, FakeRobot(), max_steps=48)
        async with asyncio.TaskGroup() as tg:
            learner_task = tg.create_task(learner.run())
            run = tg.create_task(daemon.run())
            await until(lambda: daemon.control_endpoint is not None and daemon.quarantine.refused_batches == 1)
            client = ControlClient(ControlClientConfig(endpoint=daemon.control_endpoint))
            status = await client.request(Command(kind="status", agent=None, request_id=1), 2.0)
            client.close()
            assert await run == EXIT_OK
            learner_task.cancel()
        d = status.detail
        assert d["refused_batches"] == 1 and d["refused_steps"] == 8 and d["quarantine_dropped"] == 0
        refused = range(8, 16)
        assert all(learner.sent[s] == 1 for s in refused), learner.sent  # sent once, never again
        assert learner.received == {s: 1 for s in range(48) if s not in refused}
        assert daemon.outbox.acked_seq == 48
        qdir = tmp_path / "spill" / "quarantine"
        (line,) = (qdir / "refused.jsonl").read_text().splitlines()
        record = json.loads(line)
        assert (record["first_seq"], record["end_seq"]) == (8, 16) and "1e+30" in record["reason"]
        kept = decode_batch((qdir / record["files"][0]).read_bytes())
        assert (kept.first_seq, kept.end_seq) == (8, 16)
    asyncio.run(body())


class FlakyRobot(FakeRobot):
    """Every third reading carries a NaN in its observation; every seventh is two seconds old."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def read_state(self) -> RobotState:
        state = super().read_state()
        self.reads += 1
        arrays = dict(state.arrays)
        if self.reads % 3 == 0:
            proprio = arrays["proprio"].copy()
            proprio[3] = np.nan
            arrays["proprio"] = proprio
        stamp = state.timestamp - 2.0 if self.reads % 7 == 0 else state.timestamp
        return RobotState(timestamp=stamp, ee_position=state.ee_position, gripper=state.gripper, arrays=arrays)


def test_non_finite_or_stale_sensor_readings_are_holds_not_steps(tmp_path: Path) -> None:
    async def body() -> None:
        learner = ScriptedLearner()
        endpoint = await learner.start()
        daemon = make_daemon(tmp_path, endpoint, FlakyRobot(), max_steps=40)
        async with asyncio.TaskGroup() as tg:
            learner_task = tg.create_task(learner.run())
            code = await daemon.run()
            learner_task.cancel()
        assert code == EXIT_OK
        assert learner.received == {s: 1 for s in range(40)}
        for batch in learner.batches:
            assert batch_value_error(batch) == "", batch_value_error(batch)
        reasons = daemon.loop.shield.counters.by_reason
        assert reasons.get("observation_invalid", 0) >= 10 and reasons.get("state_stale", 0) >= 3, reasons
        # a segment ends at every hold: the recorded stream has many segments, each well formed
        is_first = np.concatenate([b.is_first for b in learner.batches])
        is_last = np.concatenate([b.is_last for b in learner.batches])
        assert is_first.sum() >= 10 and is_first.sum() - is_last.sum() in (0, 1)
    asyncio.run(body())


def _blob(version: int) -> Weights:
    # one tensor of 64 KiB, so it travels out of band
    return Weights.create(agent="forward", version=version, tensors={"w": np.ones(16384, np.float32)})


def hostile_blobs() -> dict[str, list[bytes]]:
    good = _blob(50)
    single = bytes(encode(good, single_frame=True)[0])
    header = msgpack.unpackb(single, raw=False)
    header["agent"] = "sideways"
    frames = [bytes(f) for f in encode(good)]
    bad_sum = Weights(agent="forward", version=51, tensors=good.tensors, sha256="0" * 64)
    return {"checksum": [bytes(f) for f in encode(bad_sum)], "truncated": [single[: len(single) // 2]],
            "missing_frame": frames[:1], "unknown_agent": [msgpack.packb(header, use_bin_type=True)]}


def test_every_rejected_weights_blob_is_counted_in_status(tmp_path: Path) -> None:
    """Hole 3: blobs rejected for a bad checksum, truncation, a missing frame or an unknown
    agent were logged but moved neither ``weights_rejected`` nor ``malformed_rejected``."""
    async def body() -> None:
        learner = ScriptedLearner()
        endpoint = await learner.start()
        daemon = make_daemon(tmp_path, endpoint, FakeRobot())
        async with asyncio.TaskGroup() as tg:
            learner_task = tg.create_task(learner.run())
            run = tg.create_task(daemon.run())
            await until(lambda: daemon.control_endpoint is not None and daemon.loop.steps > 2)
            client = ControlClient(ControlClientConfig(endpoint=daemon.control_endpoint))

            async def detail() -> dict:
                return (await client.request(Command(kind="status", agent=None, request_id=1), 2.0)).detail

            while daemon.policy.version(0) is None:  # the SUB is connected once a good blob arrives
                learner.publish("forward", 1, obs_spec=OBS_SPEC, action_dim=ACTION_DIM)
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # let extra copies of that blob arrive (counted as stale)
            before = await detail()
            sock = learner.publisher._sock
            for i, (kind, frames) in enumerate(hostile_blobs().items()):
                sock.send_multipart(frames)  # one at a time: the PUB's HWM is 2
                await until(lambda: daemon.link.subscribers[-1].received_count >= before["weights_received"] + i + 1)
            after = await detail()
            client.close()
            daemon.request_stop("test")
            assert await run == EXIT_OK
            learner_task.cancel()
        delta = {k: after[k] - before[k] for k in ("weights_rejected", "malformed_rejected", "weights_malformed",
                                                   "weights_checksum_failures", "weights_received")}
        assert delta == {"weights_rejected": 4, "malformed_rejected": 3, "weights_malformed": 3,
                         "weights_checksum_failures": 1, "weights_received": 4}, delta
        assert after["weights_accepted"] == 1 and after["weights_version_forward"] == 1
    asyncio.run(body())


def test_a_refused_blob_claiming_a_huge_version_does_not_block_the_next_good_one(tmp_path: Path) -> None:
    async def body() -> None:
        learner = ScriptedLearner()
        endpoint = await learner.start()
        daemon = make_daemon(tmp_path, endpoint, FakeRobot())
        async with asyncio.TaskGroup() as tg:
            learner_task = tg.create_task(learner.run())
            run = tg.create_task(daemon.run())
            await until(lambda: daemon.loop is not None and daemon.loop.steps > 2)
            while daemon.policy.version(0) is None:
                learner.publish("forward", 1, obs_spec=OBS_SPEC, action_dim=ACTION_DIM)
                await asyncio.sleep(0.1)
            learner.publish("forward", 2**53 - 1, obs_spec=OBS_SPEC, action_dim=ACTION_DIM, corrupt=True)
            await until(lambda: daemon.policy.rejected >= 1)
            learner.publish("forward", 2, obs_spec=OBS_SPEC, action_dim=ACTION_DIM, seed=3)
            await until(lambda: daemon.policy.version(0) == 2)
            daemon.request_stop("test")
            assert await run == EXIT_OK
            learner_task.cancel()
    asyncio.run(body())
