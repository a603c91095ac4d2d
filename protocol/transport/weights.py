"""The weights channel: :class:`WeightsPublisher` (the learner's PUB) →
:class:`WeightsSubscriber` (each runtime's SUB), newest version per agent wins."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import zmq
import zmq.asyncio

from protocol.codec import Limits, decode, encode
from protocol.errors import ChecksumError, ProtocolError, TransportClosed
from protocol.keys import CurveClientKeys, CurveServerKeys
from protocol.messages import Weights
from protocol.transport.common import DEFAULT_ENDPOINT, _buffers, _positive, _send_nowait, _Sockets, _worth_logging

logger = logging.getLogger(__name__)

# ============================================================================ weights

@dataclass(frozen=True, kw_only=True)
class WeightsPublisherConfig:
    """The learner's weights PUB."""

    endpoint: str = DEFAULT_ENDPOINT
    """Where to bind."""
    sndhwm: int = 2
    """Blobs queued per subscriber; more are dropped (the newest follows anyway)."""
    republish_s: float = 2.0
    """``run()`` re-sends each agent's newest blob when nothing newer went out for this long,
    so a subscriber whose queue was full when the newest was published still gets it."""
    keys: CurveServerKeys | None = None
    """CURVE keys; None: plaintext."""

    def __post_init__(self) -> None:
        _positive(self, "sndhwm", "republish_s")


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
    limits: Limits = Limits()
    """Decoder limits."""
    keys: CurveClientKeys | None = None
    """CURVE keys with the learner's key pinned: weights from any other key are never received."""

    def __post_init__(self) -> None:
        _positive(self, "rcvhwm")


class WeightsSubscriber:
    """Receives verified Weights, newest per agent; older or equal versions are skipped."""

    FIGURES = ("received", "delivered", "malformed", "checksum_failures", "superseded", "stale")
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

    @property
    def rejected_count(self) -> int:
        """Blobs dropped as malformed, not weights, or failing the checksum."""
        return self.malformed_count + self.checksum_failures

    def connect(self) -> None:
        """Creates the SUB and connects it (ZeroMQ connects in the background). Does not block."""
        self._zmq = _Sockets()
        sock = self._zmq.socket(zmq.SUB, limits=self.config.limits)
        sock.rcvhwm = self.config.rcvhwm
        self._zmq.secure_client(sock, self.config.keys, self.config.endpoint)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(self.config.endpoint)
        self._sock = sock

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
                "superseded": self.superseded_count, "stale": self.stale_count}

    def close(self) -> None:
        """Closes the socket (linger 0). Idempotent."""
        if self._zmq is not None:
            self._zmq.close()
        self._zmq = self._sock = None
