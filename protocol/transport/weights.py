"""The weights channel: :class:`WeightsPublisher` (the learner's PUB) →
:class:`WeightsSubscriber` (each runtime's SUB), newest version per agent wins."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import zmq
import zmq.asyncio

from protocol.codec import Limits, decode, encode
from protocol.errors import ChecksumError, ProtocolError, TransportClosed
from protocol.keys import CurveClientKeys, CurveServerKeys
from protocol.messages import Weights
from protocol.transport.common import (
    DEFAULT_ENDPOINT, _buffer_size, _buffers, _positive, _send_nowait, _Sockets, _worth_logging,
)

logger = logging.getLogger(__name__)

# ============================================================================ weights

_HEADROOM_BYTES = 2**20
"""Room above a blob's tensor bytes for its header (names, shapes, checksum)."""


def weights_limits(tensors: Mapping[str, tuple[Sequence[int], str]], base: Limits = Limits()) -> Limits:
    """Returns decoder limits that admit a Weights blob of ``tensors`` (name → (shape, dtype)
    as the learner sends them): ``base``, with every size cap raised where the blob needs more.

    The runtime builds the same network the learner trains, so it knows the blob's size
    before the first one arrives. The default limits fit the sim profile's pixel policy
    (19 MiB, one 15 MiB frame); the robot profile's (feature dim 256, two cameras: 82 MiB,
    one 77 MiB frame) is over them, and libzmq drops a peer that sends a frame above
    ``ZMQ_MAXMSGSIZE`` without a word — the runtime then never received any weights.
    """
    sizes = [(math.prod(shape), math.prod(shape) * _itemsize(dtype)) for shape, dtype in tensors.values()]
    largest_elements = max((n for n, _ in sizes), default=0)
    largest_bytes = max((b for _, b in sizes), default=0)
    total_elements = sum(n for n, _ in sizes)
    total_bytes = sum(b for _, b in sizes)
    return dataclasses.replace(
        base,
        max_frame_bytes=max(base.max_frame_bytes, largest_bytes + _HEADROOM_BYTES),
        max_message_bytes=max(base.max_message_bytes, total_bytes + _HEADROOM_BYTES),
        max_array_elements=max(base.max_array_elements, largest_elements),
        max_total_elements=max(base.max_total_elements, total_elements),
        max_frames=max(base.max_frames, len(sizes) + 8),
        max_entries=max(base.max_entries, len(sizes) + 16),
    )


def _itemsize(dtype: str) -> int:
    return int(np.dtype(dtype).itemsize)


@dataclass(frozen=True, kw_only=True)
class WeightsPublisherConfig:
    """The learner's weights PUB."""

    endpoint: str = DEFAULT_ENDPOINT
    """Where to bind."""
    sndhwm: int = 2
    """Blobs queued per subscriber; more are dropped (the newest follows anyway)."""
    sndbuf_bytes: int = 1 << 20
    """The kernel's send buffer per connection (``SO_SNDBUF``; Linux doubles it). With the
    subscriber's ``rcvbuf_bytes`` it caps how many superseded blobs can sit in flight: left to
    the kernel's autotuning (``-1``), a loopback connection buffered seven 1 MB blobs, which a
    slow runtime then received one after another before the newest."""
    republish_s: float = 2.0
    """``run()`` re-sends each agent's newest blob when nothing newer went out for this long,
    so a subscriber whose queue was full when the newest was published still gets it."""
    keys: CurveServerKeys | None = None
    """CURVE keys; None: plaintext."""

    def __post_init__(self) -> None:
        _positive(self, "sndhwm", "republish_s")
        _buffer_size(self, "sndbuf_bytes")


class WeightsPublisher:
    """Publishes Weights, latest wins. ``start()``, then ``publish()``; optionally ``run()``."""

    def __init__(self, config: WeightsPublisherConfig) -> None:
        self.config = config
        self._zmq: _Sockets | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._latest: dict[str, tuple[Weights, float]] = {}

    async def start(self) -> str:
        """Binds the PUB; returns the bound endpoint. Does not block."""
        self._zmq = _Sockets()
        sock = self._zmq.socket(zmq.PUB)
        sock.sndhwm = self.config.sndhwm
        sock.sndbuf = self.config.sndbuf_bytes
        self._sock = sock
        endpoint = self._zmq.bind(sock, self.config.endpoint, self.config.keys)
        logger.info("weights publisher bound at %s", endpoint)
        return endpoint

    def publish(self, weights: Weights) -> None:
        """Sends ``weights`` to every subscriber without blocking or copying.

        The tensors must not change afterwards (publish copies, not live parameters).
        Raises TransportClosed if not started.
        """
        if self._sock is None:
            raise TransportClosed("weights publisher is not started")
        _send_nowait(self._sock, encode(weights))  # PUB never refuses: a full subscriber just misses it
        self._latest[weights.agent] = (weights, time.monotonic())

    async def run(self) -> None:
        """Re-publishes stale newest blobs every ``republish_s`` until cancelled."""
        period = self.config.republish_s
        deadline = time.monotonic()
        while True:
            deadline = max(deadline + period / 2, time.monotonic())
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            for weights, sent in list(self._latest.values()):
                if time.monotonic() - sent >= period:
                    self.publish(weights)

    def close(self) -> None:
        """Closes the socket (linger 0). Idempotent."""
        if self._zmq is not None:
            self._zmq.close()
        self._zmq = self._sock = None


@dataclass(frozen=True, kw_only=True)
class WeightsSubscriberConfig:
    """The runtime's weights SUB."""

    endpoint: str
    """The learner's weights endpoint (from the Welcome)."""
    rcvhwm: int = 2
    """Blobs queued before ZeroMQ stops reading."""
    rcvbuf_bytes: int = 1 << 20
    """The kernel's receive buffer (``SO_RCVBUF``; Linux doubles it); ``-1``: the kernel's
    autotuning. See ``WeightsPublisherConfig.sndbuf_bytes``."""
    limits: Limits = Limits()
    """Decoder limits."""
    keys: CurveClientKeys | None = None
    """CURVE keys with the learner's key pinned: weights from any other key are never received."""

    def __post_init__(self) -> None:
        _positive(self, "rcvhwm")
        _buffer_size(self, "rcvbuf_bytes")


class WeightsSubscriber:
    """Receives verified Weights, newest per agent; older or equal versions are skipped."""

    FIGURES = ("received", "delivered", "malformed", "checksum_failures", "superseded", "stale", "connects",
               "disconnects")
    """The keys of :meth:`figures`."""

    def __init__(self, config: WeightsSubscriberConfig) -> None:
        self.config = config
        self._zmq: _Sockets | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._pending: dict[str, Weights] = {}
        self._delivered: dict[str, int] = {}
        self._previous: dict[str, int] = {}
        self.received_count = 0
        """Messages read from the socket (``delivered + rejected + superseded + stale``
        once the queue is drained)."""
        self.malformed_count = 0
        """Messages that did not decode (truncated, a missing frame, an unknown agent, ...) or
        were not weights."""
        self.checksum_failures = 0
        """Blobs whose tensors did not hash to their ``sha256``."""
        self.superseded_count = 0
        """Blobs skipped because a newer one for the agent was already there."""
        self.stale_count = 0
        """Blobs skipped because their version was not newer than the agent's last delivered one
        (the publisher's periodic re-send, or an old blob)."""
        self.delivered_count = 0
        """Verified blobs returned by ``recv`` (the caller decides whether to use them)."""
        self.connection = "not connected"
        """``not connected`` (before :meth:`connect`), ``connecting`` (ZeroMQ is trying),
        ``connected`` (handshake done: blobs can arrive) or ``disconnected`` (it will retry)."""
        self.connects = 0
        """Completed handshakes with the publisher."""
        self.disconnects = 0
        """Connections lost; ZeroMQ reconnects by itself."""
        self._received_at_connect = 0

    @property
    def rejected_count(self) -> int:
        """Blobs dropped as malformed, not weights, or failing the checksum."""
        return self.malformed_count + self.checksum_failures

    def connect(self) -> None:
        """Creates the SUB and connects it (ZeroMQ connects in the background). Does not block."""
        self._zmq = _Sockets()
        sock = self._zmq.socket(zmq.SUB, limits=self.config.limits)
        sock.rcvhwm = self.config.rcvhwm
        sock.rcvbuf = self.config.rcvbuf_bytes
        self._zmq.secure_client(sock, self.config.keys, self.config.endpoint, on_event=self._on_event)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(self.config.endpoint)
        self._sock = sock
        self.connection = "connecting"
        limits = self.config.limits
        logger.info("weights: subscribing to %s (blobs up to %.0f MiB, frames up to %.0f MiB)", self.config.endpoint,
                    limits.max_message_bytes / 2**20, limits.max_frame_bytes / 2**20)

    def _on_event(self, kind: int) -> None:
        """Follows the connection through the socket's monitor events (see ``connection``)."""
        if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.connection = "connected"
            self.connects += 1
            self._received_at_connect = self.received_count
            logger.info("weights: connected to %s", self.config.endpoint)
        elif kind == zmq.EVENT_CONNECT_RETRIED and self.connection != "connected":
            self.connection = "connecting"
        elif kind == zmq.EVENT_DISCONNECTED:
            self.connection = "disconnected"
            self.disconnects += 1
            if self.received_count == self._received_at_connect and _worth_logging(self.disconnects):
                # libzmq drops a publisher whose frame is over ZMQ_MAXMSGSIZE before we see it
                logger.warning("weights: the connection to %s dropped before any blob arrived (%d disconnects so "
                               "far): a blob over this runtime's limits (frames up to %.0f MiB), or the learner "
                               "restarting; ZeroMQ reconnects", self.config.endpoint, self.disconnects,
                               self.config.limits.max_frame_bytes / 2**20)
            else:
                logger.info("weights: connection to %s lost (%d so far); ZeroMQ reconnects", self.config.endpoint,
                            self.disconnects)

    def refused(self, weights: Weights) -> None:
        """Tells the subscriber its caller refused ``weights`` (the last one ``recv`` returned):
        its version no longer counts as delivered, so a blob with a lower version than a
        refused one (a corrupt blob claiming version 2^53-1, say) is still taken."""
        if self._delivered.get(weights.agent) == weights.version:
            previous = self._previous.get(weights.agent)
            if previous is None:
                self._delivered.pop(weights.agent, None)
            else:
                self._delivered[weights.agent] = previous

    def forget_versions(self) -> None:
        """Accepts any version again (after the learner restarted from scratch)."""
        self._delivered.clear()
        self._previous.clear()

    def _take(self, frames: list[zmq.Frame]) -> None:
        self.received_count += 1
        try:
            msg = decode(_buffers(frames), limits=self.config.limits)
        except ProtocolError as e:
            self.malformed_count += 1
            if _worth_logging(self.malformed_count):
                logger.warning("weights: malformed blob dropped (%d so far): %s", self.malformed_count, e)
            return
        if not isinstance(msg, Weights):
            self.malformed_count += 1
            if _worth_logging(self.malformed_count):
                logger.warning("weights: unexpected %s on the weights channel (%d malformed so far)", msg.TYPE,
                               self.malformed_count)
            return
        if msg.version <= self._delivered.get(msg.agent, -1):
            self.stale_count += 1
            return  # a republish of what we already have
        if msg.agent in self._pending:
            self.superseded_count += 1
        self._pending[msg.agent] = msg

    async def recv(self) -> Weights:
        """Waits for the next verified blob; returns the newest one available for some agent.

        Drains everything queued first, so a slow caller skips stale versions. Wrap in
        ``asyncio.timeout`` for a deadline. Raises TransportClosed if not connected.
        """
        if self._sock is None:
            raise TransportClosed("weights subscriber is not connected")
        sock = self._sock
        while True:
            if not self._pending:
                # Wait with poll, then read without waiting: a caller's timeout that cancels the
                # wait loses nothing (a cancelled recv can drop a message it already read).
                await sock.poll(flags=zmq.POLLIN)
            while True:  # drain without waiting
                try:
                    frames = await sock.recv_multipart(flags=zmq.DONTWAIT, copy=False)
                except zmq.Again:
                    break
                self._take(frames)
            while self._pending:
                agent, weights = next(iter(self._pending.items()))
                try:
                    # Hashing megabytes takes tens of ms: off the event loop, which may be
                    # the one running the robot (hashlib releases the GIL). Cancelled here, the
                    # blob stays pending for the next call.
                    await asyncio.to_thread(weights.verify)
                except ChecksumError as e:
                    del self._pending[agent]
                    self.checksum_failures += 1
                    if _worth_logging(self.checksum_failures):
                        logger.warning("weights: %s (%d checksum failures so far)", e, self.checksum_failures)
                    continue
                del self._pending[agent]
                if weights.version <= self._delivered.get(agent, -1):
                    self.stale_count += 1
                    continue
                if agent in self._delivered:
                    self._previous[agent] = self._delivered[agent]
                self._delivered[agent] = weights.version
                self.delivered_count += 1
                return weights

    def figures(self) -> dict[str, int]:
        """Returns the counters, for a status."""
        return {"received": self.received_count, "delivered": self.delivered_count,
                "malformed": self.malformed_count, "checksum_failures": self.checksum_failures,
                "superseded": self.superseded_count, "stale": self.stale_count, "connects": self.connects,
                "disconnects": self.disconnects}

    def close(self) -> None:
        """Closes the socket (linger 0). Idempotent."""
        if self._zmq is not None:
            self._zmq.close()
        self._zmq = self._sock = None
