"""Malformed frames for the fault drill and the hostile benchmark, and a sender for them.

:class:`MalformedGenerator` produces frames every receiver must reject: random bytes,
truncated messages, wrong message types, oversize declarations, wrong shapes, valid msgpack
with bad fields, and (for a session that declared its spaces) batches with wrong dtypes.
Each frame is checked against :func:`protocol.codec.decode` when generated, so the drill can
never send a valid command (an ``estop``) by accident. :func:`send_malformed` sends them;
:func:`burst_plan` splits one of the fault drill's bursts over the sockets it targets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterator, Sequence

import msgpack
import numpy as np
import zmq
import zmq.asyncio

from protocol.codec import Limits, Spaces, decode, encode
from protocol.errors import PeerTimeout, ProtocolError
from protocol.messages import Ack, Command, Heartbeat, Hello, Message, Status, TransitionBatch, Weights, Welcome
from protocol.spaces import ArraySpec
from simulation.app.processes import FaultDrillError

logger = logging.getLogger(__name__)


#: Every kind of malformed input the generator makes.
KINDS: tuple[str, ...] = ("random_bytes", "truncated", "wrong_type", "oversize", "wrong_shape",
                          "bad_fields", "wrong_dtype")
#: Where frames go: the learner's uplink ROUTER or a control ROUTER (learner or runtime).
TARGETS: tuple[str, ...] = ("uplink", "control")


@dataclasses.dataclass(frozen=True)
class MalformedFrame:
    """One message every receiver of ``target`` must reject."""

    kind: str
    """One of :data:`KINDS`."""
    frames: list[bytes]
    """The multipart message (without a ROUTER identity)."""


class MalformedGenerator:
    """Makes frames a receiver must reject, seeded and reproducible.

    ``wrong_shape`` and ``wrong_dtype`` batches are built for the declared ``spaces``: sent
    by a peer that said hello with those spaces they fail the session's space check;
    from a stranger they fail as out-of-protocol. Frames stay below ``max_bytes`` so a
    control socket's 64 KiB frame limit never disconnects the sender before the receiver
    sees (and counts) the frame.
    """

    def __init__(self, *, spaces: Spaces, session_id: str, seed: int = 0, max_bytes: int = 8192) -> None:
        if max_bytes < 256:
            raise ValueError(f"max_bytes must be >= 256, got {max_bytes}")
        self.spaces = spaces
        self.session_id = session_id
        self.max_bytes = max_bytes
        self._rng = np.random.default_rng(seed)
        self._limits = Limits()

    def hello(self, config_hash: str) -> Hello:
        """Returns the hello declaring this generator's session and spaces."""
        return Hello(session_id=self.session_id, robot="fault-drill", task="drill",
                     observation_space=dict(self.spaces.observation), action_space=self.spaces.action,
                     config_hash=config_hash, oldest_seq=0, next_seq=0)

    def stream(self, count: int, target: str) -> Iterator[MalformedFrame]:
        """Yields ``count`` frames for ``target``, cycling through :data:`KINDS`."""
        for i in range(count):
            yield self.make(KINDS[i % len(KINDS)], target)

    def make(self, kind: str, target: str) -> MalformedFrame:
        """Returns one malformed frame of ``kind`` for ``target``.

        Raises ValueError for an unknown kind or target.
        """
        if kind not in KINDS or target not in TARGETS:
            raise ValueError(f"kind must be one of {KINDS} and target one of {TARGETS}, got {kind!r}, {target!r}")
        for _ in range(100):
            frames = getattr(self, f"_{kind}")(target)
            if sum(len(f) for f in frames) <= self.max_bytes and self._rejected(kind, frames, target):
                return MalformedFrame(kind, frames)
        raise FaultDrillError(f"could not make a rejected {kind} frame for {target}")

    def _rejected(self, kind: str, frames: list[bytes], target: str) -> bool:
        """Returns whether ``target`` must reject ``frames`` (never a command it would run)."""
        spaces = self.spaces if target == "uplink" else None
        try:
            msg = decode(frames, limits=self._limits, spaces=spaces)
        except ProtocolError:
            return kind != "wrong_type"
        # Only wrong_type frames decode, and they must be of a type the target does not take.
        return kind == "wrong_type" and not isinstance(msg, (Command, Hello, Heartbeat, TransitionBatch))

    # ---------------------------------------------------------------- valid material
    def _batch(self, size: int = 2, *, dtype_swap: bool = False, shape_bump: bool = False,
               session_id: str | None = None) -> TransitionBatch:
        obs = {}
        for name, spec in self.spaces.observation.items():
            shape = (size, *spec.shape[:-1], spec.shape[-1] + 1) if shape_bump and spec.shape else (size, *spec.shape)
            dtype = _other_dtype(spec.dtype) if dtype_swap else spec.dtype
            obs[name] = np.zeros(shape, dtype=dtype)
        action_dim = self.spaces.action.shape[0] if self.spaces.action.shape else 1
        return TransitionBatch(
            session_id=session_id or self.session_id, first_seq=int(self._rng.integers(0, 1 << 20)),
            observations=obs, actions=np.zeros((size, action_dim), np.float32),
            agents=np.zeros(size, np.uint8), timestamps=np.zeros(size, np.float64),
            is_first=np.zeros(size, np.bool_), is_last=np.zeros(size, np.bool_))

    def _valid(self) -> Message:
        pick = int(self._rng.integers(0, 3))
        if pick == 0:
            return self.hello("0" * 64)
        if pick == 1:
            return self._batch()
        return Command(kind="status", agent=None, request_id=int(self._rng.integers(0, 1 << 30)))

    def _header(self, msg: Message) -> dict[str, object]:
        header = msgpack.unpackb(encode(msg, single_frame=True)[0], raw=False)
        assert isinstance(header, dict)
        return header

    # ---------------------------------------------------------------- kinds
    def _random_bytes(self, target: str) -> list[bytes]:
        n = int(self._rng.integers(0, min(2048, self.max_bytes)))
        frames = [self._rng.bytes(n)]
        if self._rng.random() < 0.3:  # several random frames: out-of-band garbage
            frames.append(self._rng.bytes(int(self._rng.integers(1, 256))))
        return frames

    def _truncated(self, target: str) -> list[bytes]:
        whole = bytes(encode(self._valid(), single_frame=True)[0])
        return [whole[: int(self._rng.integers(0, len(whole)))]]

    def _wrong_type(self, target: str) -> list[bytes]:
        pick = int(self._rng.integers(0, 4))
        msg: Message
        if pick == 0:
            msg = Ack(session_id=self.session_id, seq=int(self._rng.integers(0, 1000)), trained_through=0)
        elif pick == 1:
            msg = Welcome(session_id=self.session_id, accepted=True, reason="", resume_seq=0, net_config={},
                          weights_endpoint="tcp://127.0.0.1:1")
        elif pick == 2:
            msg = Status(request_id=1, role="stranger", state="running", detail={"x": 1}, ok=True, message="")
        else:
            msg = Weights.create(agent="forward", version=1, tensors={"w": np.zeros(4, np.float32)})
        return [bytes(f) for f in encode(msg, single_frame=True)]

    def _oversize(self, target: str) -> list[bytes]:
        pick = int(self._rng.integers(0, 5))
        if pick == 0:  # bin32 declaring 2 GiB, 16 bytes present
            return [b"\x81\xa4type\xc6\x80\x00\x00\x00" + self._rng.bytes(16)]
        if pick == 1:  # map32 declaring 2**31 entries
            return [b"\xdf\x80\x00\x00\x00" + b"\xa1a\x01"]
        if pick == 2:  # str32 declaring 1 GiB
            return [b"\x81\xa4type\xdb\x40\x00\x00\x00hello"]
        header = self._header(self._batch())
        obs = header["observations"]
        assert isinstance(obs, dict)
        name = next(iter(obs))
        if pick == 3:  # an array declaring 2**40 elements in one dim
            obs[name]["shape"] = [1 << 40]
        else:  # within each dim's cap, over the element cap
            obs[name]["shape"] = [1 << 20, 1 << 20]
        return [msgpack.packb(header, use_bin_type=True)]

    def _wrong_shape(self, target: str) -> list[bytes]:
        if self._rng.random() < 0.5:
            return [bytes(f) for f in encode(self._batch(shape_bump=True), single_frame=True)]
        header = self._header(self._batch())
        # Declared shape disagrees with the data's length.
        header["actions"]["shape"] = [3, 7]  # type: ignore[index]
        return [msgpack.packb(header, use_bin_type=True)]

    def _bad_fields(self, target: str) -> list[bytes]:
        header = self._header(self._valid())
        pick = int(self._rng.integers(0, 7))
        keys = [k for k in header if k not in ("type", "version")]
        if pick == 0:
            del header[keys[int(self._rng.integers(0, len(keys)))]]
        elif pick == 1:
            header["surplus"] = 1
        elif pick == 2:
            header[keys[int(self._rng.integers(0, len(keys)))]] = [1.5, "x"]
        elif pick == 3:
            header["version"] = 2
        elif pick == 4:
            header["type"] = "transitionz"
        elif pick == 5:
            header = {"type": "command", "version": 1, "kind": "self_destruct", "agent": None, "request_id": 1}
        else:
            nested: object = 1
            for _ in range(40):
                nested = [nested]
            header["session_id"] = nested
        return [msgpack.packb(header, use_bin_type=True)]

    def _wrong_dtype(self, target: str) -> list[bytes]:
        if self._rng.random() < 0.5:
            return [bytes(f) for f in encode(self._batch(dtype_swap=True), single_frame=True)]
        header = self._header(self._batch())
        header["actions"]["dtype"] = "float64"  # type: ignore[index]
        return [msgpack.packb(header, use_bin_type=True)]


def _other_dtype(dtype: str) -> str:
    return {"float32": "float64", "uint8": "float32"}.get(dtype, "float32")


# ============================================================================ sending
@dataclasses.dataclass
class SendReport:
    """What one :func:`send_malformed` call delivered to ZeroMQ."""

    sent: int = 0
    """Messages queued on the socket."""
    by_kind: dict[str, int] = dataclasses.field(default_factory=dict)
    """Messages per :data:`KINDS` entry."""
    welcomed: bool | None = None
    """For a session peer: whether its hello was accepted (None: no hello sent)."""


async def send_malformed(endpoint: str, frames: Sequence[MalformedFrame], *, hello: Hello | None = None,
                         peers: int = 1, timeout: float = 30.0) -> SendReport:
    """Sends ``frames`` to ``endpoint`` from ``peers`` fresh DEALER sockets (round robin).

    With ``hello`` each peer first says hello and waits (up to 5 s) for the welcome, so its
    batches are checked against the declared spaces. Sends wait for the socket (backpressure)
    but the whole call is bounded by ``timeout``. Returns what was sent; raises PeerTimeout
    when the deadline passes first.
    """
    ctx = zmq.asyncio.Context()
    report = SendReport()
    socks: list[zmq.asyncio.Socket] = []
    try:
        async with asyncio.timeout(timeout):
            for _ in range(max(1, peers)):
                sock = ctx.socket(zmq.DEALER)
                sock.linger = 0
                sock.connect(endpoint)
                socks.append(sock)
                if hello is not None:
                    report.welcomed = await _say_hello(sock, hello)
            for i, item in enumerate(frames):
                await socks[i % len(socks)].send_multipart(item.frames)
                report.sent += 1
                report.by_kind[item.kind] = report.by_kind.get(item.kind, 0) + 1
            # Let ZeroMQ push the queued frames out before the sockets close (linger 0).
            await asyncio.sleep(0.2)
    except TimeoutError as e:
        raise PeerTimeout(f"malformed frames to {endpoint}: {report.sent}/{len(frames)} sent in {timeout} s") from e
    finally:
        for sock in socks:
            sock.close(linger=0)
        ctx.term()
    return report


@dataclasses.dataclass(frozen=True)
class BurstPart:
    """The frames of a burst that go to one socket (:func:`burst_plan`)."""

    socket: str
    """``learner_uplink``, ``learner_control`` or ``runtime_control``."""
    endpoint: str
    frames: list[MalformedFrame]
    hello: Hello | None
    """The hello each peer says first (a session peer), or None (strangers)."""
    peers: int
    """DEALER sockets the frames are sent from (round robin)."""


def burst_plan(gen: MalformedGenerator, count: int, *, learner_uplink: str, learner_control: str,
               runtime_control: str, config_hash: str) -> list[BurstPart]:
    """Splits a burst of ``count`` frames over every socket that receives from strangers: half to
    the learner's uplink (a quarter from strangers, a quarter from a session that said hello
    with ``config_hash`` first), a quarter to each control socket. Returns the parts in that
    order (a part may be empty)."""
    uplink_n = count // 2
    session_n = uplink_n // 2
    control_n = (count - uplink_n) // 2
    # The session opens with an out-of-protocol type while it is still accepted.
    session = [gen.make("wrong_type", "uplink"), *gen.stream(session_n - 1, "uplink")] if session_n else []
    return [
        BurstPart("learner_uplink", learner_uplink, list(gen.stream(uplink_n - session_n, "uplink")), None, 4),
        BurstPart("learner_uplink", learner_uplink, session, gen.hello(config_hash), 1),
        BurstPart("learner_control", learner_control, list(gen.stream(control_n, "control")), None, 2),
        BurstPart("runtime_control", runtime_control, list(gen.stream(count - uplink_n - control_n, "control")),
                  None, 2),
    ]


async def _say_hello(sock: zmq.asyncio.Socket, hello: Hello) -> bool:
    await sock.send_multipart(encode(hello))
    try:
        async with asyncio.timeout(5.0):
            while True:
                msg = decode(await sock.recv_multipart())
                if isinstance(msg, Welcome):
                    if not msg.accepted:
                        logger.warning("drill session refused: %s", msg.reason)
                    return msg.accepted
    except TimeoutError:
        logger.warning("drill session: no welcome within 5 s")
        return False


# ============================================================================ spaces
def state_spaces(state_dim: int, action_dim: int) -> Spaces:
    """Returns the spaces of a state-mode simulated robot."""
    return Spaces(observation={"state": ArraySpec(dtype="float32", shape=(state_dim,))},
                  action=ArraySpec(dtype="float32", shape=(action_dim,)))
