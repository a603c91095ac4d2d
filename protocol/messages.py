"""Typed protocol messages: frozen dataclasses, one per wire ``type``.

Each message checks its own invariants in ``__post_init__`` and raises
:class:`~protocol.errors.ProtocolError` naming the offending field, so a message that exists
is a valid message whether it was built locally or decoded from a peer. Messages holding
arrays compare by identity (``eq=False``); use :func:`messages_equal` to compare contents.
Arrays decoded from the wire are read-only views of the received frames.

What is not a message lives beside it: the weights checksum and wire dtypes in
:mod:`protocol.tensors`, the value checks of recorded steps in :mod:`protocol.value_checks`.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Union

import numpy as np

from protocol.errors import ChecksumError, ProtocolError
from protocol.spaces import ArraySpec, Space
from protocol.tensors import weights_sha256

logger = logging.getLogger(__name__)

# Re-exported while runtime/, its tests and the drills import them from here; new code imports
# them from protocol.tensors and protocol.value_checks.
__all__ = [
    "AGENTS", "BACKWARD", "COMMAND_KINDS", "FORWARD", "INT64_MAX", "INT64_MIN", "MAX_SEQ", "MESSAGE_TYPES",
    "PROTOCOL_VERSION", "Ack", "Agent", "Command", "Heartbeat", "Hello", "LoopStats", "Message", "Scalar", "Status",
    "TransitionBatch", "Weights", "Welcome", "is_int", "messages_equal", "saturate",
]

#: The protocol version every message carries; a different one is a ProtocolError.
PROTOCOL_VERSION = 1


class Agent(enum.IntEnum):
    """The two agents of MEDAL++: the forward agent does the task, the backward agent undoes it.

    The int is what a TransitionBatch's ``agents`` array carries (uint8) and what indexes
    every per-agent list (buffers, networks, a checkpoint's ``agents``); :attr:`label` is
    what Weights and Command carry on the wire."""

    FORWARD = 0
    BACKWARD = 1

    @property
    def label(self) -> str:
        """``forward`` or ``backward``."""
        return self.name.lower()


FORWARD, BACKWARD = Agent.FORWARD, Agent.BACKWARD
AGENTS: tuple[str, str] = (FORWARD.label, BACKWARD.label)
"""Agent labels, in :class:`Agent` order (``AGENTS[agent]`` is its label)."""
COMMAND_KINDS: frozenset[str] = frozenset(
    {"pause", "resume", "estop", "switch_agent", "go_home", "status"}
)
MAX_SEQ = 2**53 - 1
"""Largest seq, request id or weights version on the wire (docs/protocol.md): every such
value is an int in ``[0, 2**53 - 1]``. Exact in a float64 (a JSON or JavaScript client loses
nothing), 285,000 years of steps at 1 kHz, and far enough below 2**63 that the sums a
receiver keeps (seq + batch size, steps lost over sessions) stay inside what msgpack encodes."""
_MAX_SEQ = MAX_SEQ

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""The range of an int in a ``status`` detail: a counter past it saturates (docs/protocol.md)."""

Scalar = Union[None, bool, int, float, str]


def _require(cond: bool, field: str, what: str) -> None:
    if not cond:
        raise ProtocolError(f"{field}: {what}")


def is_int(value: Any) -> bool:
    """Returns whether ``value`` is a Python int and not a bool (the protocol's integers)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _check_seq(value: int, field: str) -> None:
    _require(is_int(value), field, f"must be an int, got {type(value).__name__}")
    _require(0 <= value <= _MAX_SEQ, field, f"must be in [0, 2**53-1], got {value}")


def saturate(value: int) -> int:
    """Returns ``value`` clamped to ``[INT64_MIN, INT64_MAX]`` (what every msgpack reader takes)."""
    return min(max(value, INT64_MIN), INT64_MAX)


@dataclass(frozen=True, kw_only=True)
class Hello:
    """runtime → learner: opens (or resumes) a session and declares its spaces."""

    TYPE: ClassVar[str] = "hello"
    session_id: str
    """Stable id of this runtime's session (persisted by the runtime)."""
    robot: str
    """Robot name, e.g. ``franka`` or ``sim``."""
    task: str
    """Task name, e.g. ``door``."""
    observation_space: Space
    """Observation name → per-step spec."""
    action_space: ArraySpec
    """Per-step action spec (``float32 (A,)``)."""
    config_hash: str
    """Hash of the runtime's config, so a learner can refuse a mismatched runtime."""
    next_seq: int
    """The next seq the runtime will assign; lower than the learner's ack ⇒ runtime lost state."""
    oldest_seq: int
    """The oldest seq the runtime can still send (``next_seq`` when it holds nothing unacked).
    Seqs below it that the learner has not ingested are lost: the learner skips them
    (the gap rule, docs/protocol.md)."""

    def __post_init__(self) -> None:
        _require(bool(self.session_id), "hello.session_id", "must be non-empty")
        _require(bool(self.observation_space), "hello.observation_space", "must be non-empty")
        _check_seq(self.next_seq, "hello.next_seq")
        _check_seq(self.oldest_seq, "hello.oldest_seq")
        _require(self.oldest_seq <= self.next_seq, "hello.oldest_seq", "must not exceed next_seq")


@dataclass(frozen=True, kw_only=True)
class Welcome:
    """learner → runtime: the answer to a hello."""

    TYPE: ClassVar[str] = "welcome"
    session_id: str
    """Echo of the hello's session id."""
    accepted: bool
    """False: the learner refuses this runtime (``reason`` says why)."""
    reason: str
    """Human-readable reason (empty when accepted)."""
    resume_seq: int
    """First seq the learner has NOT ingested for this session; the runtime resends from here."""
    net_config: dict[str, Any]
    """JSON-compatible network config the runtime builds its actor from."""
    weights_endpoint: str
    """ZeroMQ endpoint of the learner's weights PUB socket."""

    def __post_init__(self) -> None:
        _check_seq(self.resume_seq, "welcome.resume_seq")


@dataclass(frozen=True, kw_only=True, eq=False)
class TransitionBatch:
    """runtime → learner: B consecutive steps, seqs ``first_seq .. first_seq+B-1``, columnar."""

    TYPE: ClassVar[str] = "transitions"
    session_id: str
    """Session the steps belong to."""
    first_seq: int
    """Seq of the first step."""
    observations: dict[str, np.ndarray]
    """Observation name → ``(B, ...)`` array."""
    actions: np.ndarray
    """``float32 (B, A)``; values finite and in ``[-1, 1]`` (checked at ingest:
    :func:`~protocol.value_checks.batch_value_error`)."""
    agents: np.ndarray
    """``uint8 (B,)``: 0 forward, 1 backward."""
    timestamps: np.ndarray
    """``float64 (B,)`` seconds (runtime clock); finite (checked at ingest)."""
    is_first: np.ndarray
    """``bool (B,)``: the observation starts a segment."""
    is_last: np.ndarray
    """``bool (B,)``: the observation ends a segment (its action is padding)."""

    def __post_init__(self) -> None:
        _require(bool(self.session_id), "transitions.session_id", "must be non-empty")
        _check_seq(self.first_seq, "transitions.first_seq")
        n = self.actions.shape[0] if self.actions.ndim >= 1 else -1
        _require(n >= 1, "transitions.actions", "must have shape (B, A) with B >= 1")
        _check_seq(self.first_seq + n - 1, "transitions.first_seq+B-1")
        _require(self.actions.ndim == 2 and self.actions.dtype == np.float32,
                 "transitions.actions", f"must be float32 (B, A), got {self.actions.dtype} {self.actions.shape}")
        for name, arr, dtype in (("agents", self.agents, np.uint8), ("timestamps", self.timestamps, np.float64),
                                 ("is_first", self.is_first, np.bool_), ("is_last", self.is_last, np.bool_)):
            _require(arr.shape == (n,) and arr.dtype == dtype, f"transitions.{name}",
                     f"must be {np.dtype(dtype).name} ({n},), got {arr.dtype} {arr.shape}")
        _require(bool((self.agents <= 1).all()), "transitions.agents", "must be 0 or 1")
        _require(bool(self.observations), "transitions.observations", "must be non-empty")
        for key, arr in self.observations.items():
            _require(arr.ndim >= 1 and arr.shape[0] == n, f"transitions.observations.{key}",
                     f"leading dim must be B={n}, got shape {arr.shape}")

    @property
    def size(self) -> int:
        """Returns the number of steps B."""
        return int(self.actions.shape[0])

    @property
    def end_seq(self) -> int:
        """Returns one past the last seq (``first_seq + B``)."""
        return self.first_seq + self.size

    @property
    def nbytes(self) -> int:
        """Returns the total bytes of all arrays (what this batch costs in memory)."""
        arrays = [*self.observations.values(), self.actions, self.agents, self.timestamps,
                  self.is_first, self.is_last]
        return int(sum(a.nbytes for a in arrays))

    def tail(self, seq: int) -> TransitionBatch:
        """Returns the steps with seq ≥ ``seq`` as a new batch (views, no copy).

        Raises ProtocolError if that would be empty or ``seq`` is below ``first_seq``.
        """
        _require(self.first_seq <= seq < self.end_seq, "transitions.tail",
                 f"seq {seq} outside [{self.first_seq}, {self.end_seq})")
        k = seq - self.first_seq
        return dataclasses.replace(
            self, first_seq=seq, observations={n: a[k:] for n, a in self.observations.items()},
            actions=self.actions[k:], agents=self.agents[k:], timestamps=self.timestamps[k:],
            is_first=self.is_first[k:], is_last=self.is_last[k:])


@dataclass(frozen=True, kw_only=True)
class Ack:
    """learner → runtime: cumulative ack; every seq < ``seq`` is durably ingested."""

    TYPE: ClassVar[str] = "ack"
    session_id: str
    """Session acknowledged."""
    seq: int
    """Next expected seq (all below are durable)."""
    trained_through: int
    """Seq up to which (exclusive) the learner has trained; lock-step runtimes wait on it."""

    def __post_init__(self) -> None:
        _check_seq(self.seq, "ack.seq")
        _check_seq(self.trained_through, "ack.trained_through")


@dataclass(frozen=True, kw_only=True, eq=False)
class Weights:
    """learner → runtime: one agent's actor ``state_dict`` tensors, versioned and checksummed."""

    TYPE: ClassVar[str] = "weights"
    agent: str
    """``forward`` or ``backward``."""
    version: int
    """Monotonic per agent (the learner's update count at publish time)."""
    tensors: dict[str, np.ndarray]
    """Parameter name → array."""
    sha256: str
    """:func:`weights_sha256` of ``tensors`` (64 lowercase hex digits)."""
    verified: bool = dataclasses.field(default=False, init=False, compare=False, repr=False)
    """Set by a successful :meth:`verify` (never travels), so a blob the transport checked
    is not hashed again on its way to the policy (the arrays are read-only views)."""

    def __post_init__(self) -> None:
        _require(self.agent in AGENTS, "weights.agent", f"must be one of {AGENTS}, got {self.agent!r}")
        _check_seq(self.version, "weights.version")
        _require(len(self.sha256) == 64 and all(c in "0123456789abcdef" for c in self.sha256),
                 "weights.sha256", "must be 64 lowercase hex digits")

    @classmethod
    def create(cls, *, agent: str, version: int, tensors: dict[str, np.ndarray]) -> Weights:
        """Returns a Weights message with its checksum computed over ``tensors``."""
        return cls(agent=agent, version=version, tensors=tensors, sha256=weights_sha256(tensors))

    def verify(self) -> None:
        """Checks the checksum; returns None, raises ChecksumError on mismatch."""
        if self.verified:
            return
        actual = weights_sha256(self.tensors)
        if actual != self.sha256:
            raise ChecksumError(f"weights.sha256: {self.agent} v{self.version} declared "
                                f"{self.sha256[:12]}…, tensors hash to {actual[:12]}…")
        object.__setattr__(self, "verified", True)

    @property
    def nbytes(self) -> int:
        """Returns the total tensor bytes."""
        return int(sum(a.nbytes for a in self.tensors.values()))


@dataclass(frozen=True, kw_only=True)
class LoopStats:
    """The runtime's control-loop figures, carried in its heartbeats."""

    steps: int
    """Ticks since start."""
    loop_hz: float
    """Configured control rate."""
    jitter_p50_ms: float
    """Median period jitter (ms)."""
    jitter_p99_ms: float
    """99th percentile period jitter (ms)."""
    jitter_max_ms: float
    """Worst period jitter (ms)."""
    overruns: int
    """Missed deadlines."""
    inference_p50_ms: float
    """Median policy inference time (ms)."""
    queue_depth: int
    """Steps waiting in the outbox."""
    spilled_bytes: int
    """Bytes in the outbox's spill log."""
    agent: str
    """The acting agent."""
    paused: bool
    """Whether the loop is paused."""


@dataclass(frozen=True, kw_only=True)
class Heartbeat:
    """Both directions on the uplink: liveness (+ the runtime's loop stats)."""

    TYPE: ClassVar[str] = "heartbeat"
    session_id: str
    """Session (the learner echoes the peer's session, or ``""`` before hello)."""
    role: str
    """``runtime`` or ``learner``."""
    sent_at: float
    """Sender's wall clock (``time.time()``)."""
    stats: LoopStats | None
    """Runtime loop stats, or None."""


@dataclass(frozen=True, kw_only=True)
class Command:
    """Operator/learner → process: a control request."""

    TYPE: ClassVar[str] = "command"
    kind: Literal["pause", "resume", "estop", "switch_agent", "go_home", "status"]
    """What to do."""
    agent: str | None
    """Target agent for ``switch_agent`` (required there), else None or an agent name."""
    request_id: int
    """Echoed in the Status reply."""

    def __post_init__(self) -> None:
        _require(self.kind in COMMAND_KINDS, "command.kind", f"unknown kind {self.kind!r}")
        _require(self.agent is None or self.agent in AGENTS, "command.agent", f"must be None or one of {AGENTS}")
        _require(self.kind != "switch_agent" or self.agent is not None, "command.agent",
                 "required for switch_agent")
        _check_seq(self.request_id, "command.request_id")


@dataclass(frozen=True, kw_only=True)
class Status:
    """Reply to a Command."""

    TYPE: ClassVar[str] = "status"
    request_id: int
    """The command's request id."""
    role: str
    """``runtime`` or ``learner``."""
    state: str
    """Process state, e.g. ``running``, ``paused``, ``estopped``."""
    detail: dict[str, Scalar]
    """Name → scalar figures."""
    ok: bool
    """Whether the command was carried out."""
    message: str
    """Human-readable outcome."""

    def __post_init__(self) -> None:
        _check_seq(self.request_id, "status.request_id")
        for key, value in self.detail.items():
            _require(value is None or isinstance(value, (bool, int, float, str)), f"status.detail.{key}",
                     f"must be a scalar, got {type(value).__name__}")
        if any(is_int(v) and not INT64_MIN <= v <= INT64_MAX for v in self.detail.values()):
            # A counter past int64 saturates: a figure must never make the reply unencodable.
            object.__setattr__(self, "detail", {k: saturate(v) if is_int(v) else v for k, v in self.detail.items()})


Message = Union[Hello, Welcome, TransitionBatch, Ack, Weights, Heartbeat, Command, Status]
MESSAGE_TYPES: dict[str, type] = {cls.TYPE: cls for cls in
                                  (Hello, Welcome, TransitionBatch, Ack, Weights, Heartbeat, Command, Status)}


def _values_equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and a.tobytes() == b.tobytes())
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_values_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_values_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def messages_equal(a: Message, b: Message) -> bool:
    """Returns True when two messages have the same type and bitwise-equal contents."""
    if type(a) is not type(b):
        return False
    return all(_values_equal(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a) if f.compare)
