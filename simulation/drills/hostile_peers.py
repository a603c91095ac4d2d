"""The peers of ``resetfree-bench hostile`` (:mod:`simulation.drills.bench_hostile`): the
hostile traffic it sends (:class:`HostileGenerator`), the learner it plays for the runtime
(:class:`FakeLearner`), the legitimate runtime it streams beside the hostile peers
(:class:`LegitRuntime`), and the synthetic point task's demos the learner trains on."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq
import zmq.asyncio

from protocol.codec import Spaces, decode, encode
from protocol.demos import DemoMeta, Demos, save_demos
from protocol.errors import ProtocolError, SequenceGap
from protocol.messages import (
    MAX_SEQ, Ack, Command, Heartbeat, Hello, Status, TransitionBatch, Weights, Welcome,
)
from protocol.reliability import ReceiveTracker
from protocol.transport import UplinkServer, UplinkServerConfig
from simulation.drills.malformed import MalformedGenerator

logger = logging.getLogger(__name__)

POINT_DIM, POINT_ACT = 4, 2
"""The synthetic task the learner is given demos of (a point moving towards a goal)."""

NET_CONFIG = {"feature_dim": 8, "hidden_dim": 16, "conv_channels": 4}
"""The actor the bench, as the runtime's learner, tells the runtime to build."""


# ============================================================================ hostile material
class HostileGenerator(MalformedGenerator):
    """The drill's malformed frames plus issue 17's cases (see the module docstring)."""

    def __init__(self, *, spaces: Spaces, config_hash: str, seed: int) -> None:
        super().__init__(spaces=spaces, session_id="hostile", seed=seed)
        self.config_hash = config_hash
        self._sessions = 0

    def fresh_session(self, prefix: str) -> str:
        self._sessions += 1
        return f"{prefix}-{self._sessions}"

    def packed(self, header: dict[str, Any]) -> list[bytes]:
        return [msgpack.packb(header, use_bin_type=True)]

    # ---------------------------------------------------------------- uplink strangers
    def stranger(self, i: int) -> tuple[str, list[bytes]]:
        """One message from a peer without a session: the drill's kinds and issue 17's."""
        kinds = ("overflow_hello", "float_version", "bool_seq", "absurd_loss_hello", "valid_hello",
                 "seq_beyond_range", "drill")
        kind = kinds[i % len(kinds)]
        if kind == "drill":
            frame = self.make(("random_bytes", "truncated", "wrong_type", "oversize", "wrong_shape", "bad_fields",
                               "wrong_dtype")[(i // len(kinds)) % 7], "uplink")
            return f"drill_{frame.kind}", frame.frames
        if kind == "valid_hello":
            return kind, [bytes(f) for f in encode(self.hello_for(self.fresh_session("h"), 0, 0))]
        if kind == "absurd_loss_hello":
            return kind, [bytes(f) for f in encode(self.hello_for(self.fresh_session("loss"), MAX_SEQ, MAX_SEQ))]
        header = self._header(self.hello_for(self.fresh_session("x"), 0, 0))
        if kind == "overflow_hello":
            header["next_seq"] = header["oldest_seq"] = 2**63 - 1
        elif kind == "float_version":
            header["version"] = 1.0
        elif kind == "bool_seq":
            header["next_seq"] = True
        else:
            header["next_seq"] = header["oldest_seq"] = MAX_SEQ + 1
        return kind, self.packed(header)

    def hello_for(self, session_id: str, next_seq: int, oldest_seq: int) -> Hello:
        return Hello(session_id=session_id, robot="hostile", task="point",
                     observation_space=dict(self.spaces.observation), action_space=self.spaces.action,
                     config_hash=self.config_hash, next_seq=next_seq, oldest_seq=oldest_seq)

    # ---------------------------------------------------------------- uplink session peers
    def poisoned(self, session_id: str, first_seq: int, i: int) -> tuple[str, list[bytes]]:
        """A batch of well-formed steps whose values may not be trained on, at ``first_seq``."""
        kinds = ("nan_obs", "inf_obs", "huge_action", "nan_action", "inf_timestamp", "outside_action")
        kind = kinds[i % len(kinds)]
        n = 4
        obs = self._rng.normal(size=(n, POINT_DIM)).astype(np.float32)
        actions = self._rng.uniform(-1, 1, (n, POINT_ACT)).astype(np.float32)
        stamps = np.arange(n, dtype=np.float64)
        row = int(self._rng.integers(0, n))
        if kind == "nan_obs":
            obs[row, 0] = np.nan
        elif kind == "inf_obs":
            obs[row, 1] = -np.inf
        elif kind == "huge_action":
            actions[row, 0] = 1e30
        elif kind == "nan_action":
            actions[row, 1] = np.nan
        elif kind == "inf_timestamp":
            stamps[row] = np.inf
        else:
            actions[row, 0] = 1.5
        batch = TransitionBatch(session_id=session_id, first_seq=first_seq, observations={"state": obs},
                                actions=actions, agents=np.zeros(n, np.uint8), timestamps=stamps,
                                is_first=np.zeros(n, bool), is_last=np.zeros(n, bool))
        return kind, [bytes(f) for f in encode(batch)]

    # ---------------------------------------------------------------- control
    def control(self, i: int) -> tuple[str, list[bytes]]:
        """One control message: mostly malformed, some float-version e-stops, some valid status."""
        pick = i % 10
        if pick == 0:
            return "valid_status", [bytes(f) for f in encode(Command(kind="status", agent=None, request_id=i))]
        if pick == 1:
            header = self._header(Command(kind="estop", agent=None, request_id=i))
            header["version"] = 1.0  # must never e-stop anything
            return "float_version_estop", self.packed(header)
        if pick == 2:
            header = self._header(Command(kind="estop", agent=None, request_id=i))
            header["request_id"] = True
            return "bool_request_id", self.packed(header)
        frame = self.make(("random_bytes", "truncated", "wrong_type", "oversize", "wrong_shape", "bad_fields",
                           "wrong_dtype")[pick % 7], "control")
        return f"drill_{frame.kind}", frame.frames

    # ---------------------------------------------------------------- weights
    def weights(self, i: int, good: dict[str, np.ndarray], version: int) -> tuple[str, list[bytes]]:
        """One weights message: hostile, except every 50th, a good blob of ``version``."""
        kinds = ("random_bytes", "truncated", "missing_frame", "unknown_agent", "bad_checksum", "float_version",
                 "status", "wrong_layout", "nan_tensor", "huge_version_wrong_layout")
        if i % 50 == 49:
            return "good", [bytes(f) for f in encode(Weights.create(agent="forward", version=version, tensors=good))]
        kind = kinds[i % len(kinds)]
        valid = Weights.create(agent="forward", version=version, tensors=good)
        if kind == "random_bytes":
            return kind, [self._rng.bytes(int(self._rng.integers(1, 512)))]
        if kind == "truncated":
            whole = bytes(encode(valid, single_frame=True)[0])
            return kind, [whole[: int(self._rng.integers(0, len(whole)))]]
        if kind == "missing_frame":
            big = Weights.create(agent="forward", version=version, tensors={"w": np.zeros(4096, np.float32)})
            return kind, [bytes(encode(big)[0])]  # references frame 1, which is not there
        if kind == "status":
            return kind, [bytes(f) for f in encode(Status(request_id=1, role="x", state="y", detail={}, ok=True,
                                                          message=""))]
        if kind in ("unknown_agent", "float_version"):
            header = self._header(valid)
            if kind == "unknown_agent":
                header["agent"] = "sideways"
            else:
                header["version"] = 1.0
            return kind, self.packed(header)
        if kind == "bad_checksum":
            return kind, [bytes(f) for f in encode(Weights(agent="forward", version=version, tensors=good,
                                                           sha256="0" * 64))]
        if kind == "nan_tensor":
            poisoned = {k: v.copy() for k, v in good.items()}
            next(iter(poisoned.values())).flat[0] = np.nan
            return kind, [bytes(f) for f in encode(Weights.create(agent="forward", version=version,
                                                                  tensors=poisoned))]
        huge = kind == "huge_version_wrong_layout"
        return kind, [bytes(f) for f in encode(Weights.create(agent="forward", version=MAX_SEQ if huge else version,
                                                              tensors={"w": np.zeros(3, np.float32)}))]


# ============================================================================ the bench as a learner
class FakeLearner:
    """The runtime's learner: welcomes it, acks everything it sends, and owns a raw PUB for
    the weights channel (no high-water mark: nothing is dropped, so sent == received)."""

    def __init__(self) -> None:
        self.server = UplinkServer(UplinkServerConfig(peer_timeout_s=10.0))
        self.tracker = ReceiveTracker()
        self.ctx = zmq.asyncio.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.linger = 0
        self.pub.sndhwm = 0
        self.uplink = self.weights = ""
        self.received_steps = 0

    async def start(self) -> None:
        self.uplink = await self.server.start()
        port = self.pub.bind_to_random_port("tcp://127.0.0.1")
        self.weights = f"tcp://127.0.0.1:{port}"

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.server.run())
            tg.create_task(self._serve())

    async def _serve(self) -> None:
        while True:
            peer, msg = await self.server.recv()
            if isinstance(msg, Hello):
                resume = self.tracker.resume_point(msg.session_id, msg.next_seq)
                if msg.oldest_seq > resume:
                    resume = msg.oldest_seq
                    self.tracker.skip_to(msg.session_id, resume)
                self.server.send(peer, Welcome(session_id=msg.session_id, accepted=True, reason="", resume_seq=resume,
                                               net_config=NET_CONFIG, weights_endpoint=self.weights))
            elif isinstance(msg, TransitionBatch):
                try:
                    fresh = self.tracker.admit(msg)
                except SequenceGap:
                    fresh = None
                if fresh is not None:
                    self.tracker.commit(msg.session_id, fresh.end_seq)
                    self.received_steps += fresh.size
                seq = self.tracker.committed(msg.session_id)
                self.server.send(peer, Ack(session_id=msg.session_id, seq=seq, trained_through=seq))

    async def publish(self, frames: list[bytes]) -> None:
        await self.pub.send_multipart(frames)

    def close(self) -> None:
        self.server.close()
        self.ctx.destroy(linger=0)


# ============================================================================ the legitimate runtime
class LegitRuntime:
    """A scripted runtime speaking the protocol correctly beside the attackers: one hello,
    then valid batches (and a heartbeat a second); every message it sends is counted."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, hello: Hello) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(endpoint)
        self.hello = hello
        self.sent = 0
        self.next_seq = 0
        self.acked = 0
        self.refused: list[str] = []
        self._rng = np.random.default_rng(7)

    async def send(self, msg: Any) -> None:
        await self.sock.send_multipart(encode(msg))
        self.sent += 1

    async def say_hello(self, timeout: float) -> Welcome:
        await self.send(self.hello)
        async with asyncio.timeout(timeout):
            while True:
                msg = decode(await self.sock.recv_multipart())
                if isinstance(msg, Welcome):
                    return msg

    async def stream(self, stop: asyncio.Event, period_s: float = 0.05, steps: int = 8) -> None:
        """Sends a batch every ``period_s`` and a heartbeat every second until ``stop``."""
        beat = time.monotonic()
        while not stop.is_set():
            n = steps
            seqs = np.arange(self.next_seq, self.next_seq + n)
            await self.send(TransitionBatch(
                session_id=self.hello.session_id, first_seq=self.next_seq,
                observations={"state": self._rng.normal(size=(n, POINT_DIM)).astype(np.float32)},
                actions=self._rng.uniform(-1, 1, (n, POINT_ACT)).astype(np.float32),
                agents=((seqs // 200) % 2).astype(np.uint8), timestamps=seqs.astype(np.float64),
                is_first=seqs == 0, is_last=np.zeros(n, bool)))
            self.next_seq += n
            if time.monotonic() - beat >= 1.0:
                beat = time.monotonic()
                await self.send(Heartbeat(session_id=self.hello.session_id, role="runtime", sent_at=time.time(),
                                          stats=None))
            await asyncio.sleep(period_s)

    async def read(self) -> None:
        """Keeps the newest ack (and notes any refusal, which must not happen)."""
        while True:
            try:
                msg = decode(await self.sock.recv_multipart())
            except ProtocolError:
                continue
            if isinstance(msg, Ack):
                self.acked = max(self.acked, msg.seq)
            elif isinstance(msg, Welcome) and not msg.accepted:
                self.refused.append(msg.reason)
            elif isinstance(msg, Status) and not msg.ok:  # a refused batch or hello_required: never expected
                self.refused.append(f"{msg.state}: {msg.message}")

    def close(self) -> None:
        self.sock.close(linger=0)


def write_point_demos(directory: Path, episodes: int = 3, steps: int = 8) -> Path:
    """Writes small forward and backward state demos of the synthetic point task."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for direction in ("forward", "backward"):
        n = episodes * steps
        first = np.zeros(n, bool)
        first[::steps] = True
        last = np.zeros(n, bool)
        last[steps - 1::steps] = True
        rewards = np.zeros(n, np.float32)
        rewards[np.flatnonzero(last) - 1] = 1.0
        actions = rng.uniform(-1, 1, (n, POINT_ACT)).astype(np.float32)
        actions[last] = 0.0
        save_demos(directory / f"point_{direction}.npz",
                   Demos(observations={"state": rng.normal(size=(n, POINT_DIM)).astype(np.float32)}, actions=actions,
                         rewards=rewards, terminals=last.copy(), is_first=first, is_last=last,
                         episode_success=np.ones(episodes, bool),
                         meta=DemoMeta(task="point", direction=direction, obs_mode="state", source="bench")))
    return directory
