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
from protocol.keys import CurveClientKeys, CurveServerKeys, apply_client_keys
from protocol.messages import Weights
from protocol.transport.common import DEFAULT_ENDPOINT, _buffers, _positive, _send_nowait, _Sockets

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

    def __init__(self, config: WeightsSubscriberConfig) -> None:
        self.config = config
        self._zmq: _Sockets | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._pending: dict[str, Weights] = {}
        self._delivered: dict[str, int] = {}
        self.rejected_count = 0
        """Blobs dropped: malformed, not weights, or failing the checksum."""
        self.superseded_count = 0
        """Blobs skipped because a newer one for the agent was already there."""

    def connect(self) -> None:
        """Creates the SUB and connects it (ZeroMQ connects in the background). Does not block."""
        self._zmq = _Sockets()
        sock = self._zmq.socket(zmq.SUB, limits=self.config.limits)
        sock.rcvhwm = self.config.rcvhwm
        if self.config.keys is not None:
            apply_client_keys(sock, self.config.keys)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(self.config.endpoint)
        self._sock = sock

    def forget_versions(self) -> None:
        """Accepts any version again (after the learner restarted from scratch)."""
        self._delivered.clear()

    def _take(self, frames: list[zmq.Frame]) -> None:
        try:
            msg = decode(_buffers(frames), limits=self.config.limits)
        except ProtocolError as e:
            self.rejected_count += 1
            logger.warning("weights: malformed blob dropped: %s", e)
            return
        if not isinstance(msg, Weights):
            self.rejected_count += 1
            logger.warning("weights: unexpected %s on the weights channel", msg.TYPE)
            return
        if msg.version <= self._delivered.get(msg.agent, -1):
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
                self._take(await sock.recv_multipart(copy=False))
            while True:  # drain without waiting
                try:
                    frames = await sock.recv_multipart(flags=zmq.DONTWAIT, copy=False)
                except zmq.Again:
                    break
                self._take(frames)
            while self._pending:
                agent = next(iter(self._pending))
                weights = self._pending.pop(agent)
                try:
                    # Hashing megabytes takes tens of ms: off the event loop, which may be
                    # the one running the robot (hashlib releases the GIL).
                    await asyncio.to_thread(weights.verify)
                except ChecksumError as e:
                    self.rejected_count += 1
                    logger.warning("weights: %s", e)
                    continue
                self._delivered[agent] = weights.version
                return weights

    def close(self) -> None:
        """Closes the socket (linger 0). Idempotent."""
        if self._zmq is not None:
            self._zmq.close()
        self._zmq = self._sock = None
