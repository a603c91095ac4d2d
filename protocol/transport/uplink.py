"""The uplink channel, the learner's end: a ROUTER (:class:`UplinkServer`) that each runtime's
DEALER (:class:`~protocol.transport.uplink_client.UplinkClient`) connects to, and the statuses
both ends share. Frames are exactly :func:`protocol.codec.encode`'s, in either form (a runtime
sends each batch as one frame, its spill record; the ROUTER adds/strips the peer identity)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import zmq
import zmq.asyncio

from protocol.codec import Limits, Spaces, decode, encode
from protocol.errors import ProtocolError, TransportClosed
from protocol.keys import CurveServerKeys
from protocol.messages import MAX_SEQ, Heartbeat, Hello, Message, Status, TransitionBatch, is_int
from protocol.transport.common import (DEFAULT_ENDPOINT, _buffers, _positive, _send_nowait, _Sockets,
                                       _worth_logging)

logger = logging.getLogger(__name__)

# ============================================================================ uplink server

@dataclass(frozen=True, kw_only=True)
class UplinkServerConfig:
    """The learner's uplink ROUTER."""

    endpoint: str = DEFAULT_ENDPOINT
    """Where to bind (port 0: a free port; see ``start()``'s result)."""
    heartbeat_interval_s: float = 1.0
    """How often ``run()`` sends each peer a heartbeat."""
    peer_timeout_s: float = 5.0
    """A peer silent this long is dropped."""
    sndhwm: int = 1000
    """Messages queued per peer before ``send`` returns False."""
    rcvhwm: int = 1000
    """Messages queued per peer on receive."""
    limits: Limits = Limits()
    """Decoder limits."""
    keys: CurveServerKeys | None = None
    """CURVE keys; None: plaintext (loopback only, a WARNING otherwise)."""

    def __post_init__(self) -> None:
        _positive(self, "heartbeat_interval_s", "peer_timeout_s", "sndhwm", "rcvhwm")


@dataclass
class PeerInfo:
    """What the server knows about a connected runtime."""

    session_id: str
    spaces: Spaces
    last_seen: float


HELLO_REQUIRED = "hello_required"
"""``Status.state`` the uplink server sends to a peer it has no hello from (see docs/protocol.md)."""

BATCH_REFUSED = "batch_refused"
"""``Status.state`` the learner sends on the uplink when it refuses a batch's values: ``detail``
holds ``session_id``, ``first_seq`` and ``end_seq`` (the refused seqs), ``message`` the reason.
The learner skips those seqs and acks past them; the runtime quarantines them (docs/protocol.md,
"Refused batches")."""


def batch_refusal(session_id: str, first_seq: int, end_seq: int, reason: str) -> Status:
    """Returns the ``status`` message refusing seqs ``first_seq .. end_seq-1`` for ``reason``."""
    return Status(request_id=0, role="learner", state=BATCH_REFUSED,
                  detail={"session_id": session_id, "first_seq": first_seq, "end_seq": end_seq}, ok=False,
                  message=reason[:1024])


def refused_range(msg: Status) -> tuple[str, int, int] | None:
    """Returns (session_id, first_seq, end_seq) of a batch refusal, None when ``msg`` is not a
    well-formed one (the runtime then counts it malformed)."""
    if msg.state != BATCH_REFUSED:
        return None
    d = msg.detail
    sid, first, end = d.get("session_id"), d.get("first_seq"), d.get("end_seq")
    if not (isinstance(sid, str) and is_int(first) and is_int(end) and 0 <= first < end <= MAX_SEQ + 1):
        return None
    return sid, first, end


class UplinkServer:
    """The learner's end of the uplink. ``start()``, then ``run()`` in a task, ``recv()`` to consume."""

    def __init__(self, config: UplinkServerConfig) -> None:
        self.config = config
        self._zmq: _Sockets | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._peers: dict[bytes, PeerInfo] = {}
        self.malformed_count = 0
        """Frames dropped as malformed or out of protocol (counted, logged, never raised)."""
        self.stale_peer_messages = 0
        """Transitions/heartbeats from peers without a hello (a runtime that outlived a restart)."""
        self.received_count = 0
        """Messages read from the socket: each is returned by ``recv`` or counted as malformed or stale."""
        self._hello_asked: dict[bytes, float] = {}

    async def start(self) -> str:
        """Binds the ROUTER; returns the bound endpoint (with the real port). Does not block."""
        self._zmq = _Sockets()
        sock = self._zmq.socket(zmq.ROUTER, limits=self.config.limits)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.sndhwm, sock.rcvhwm = self.config.sndhwm, self.config.rcvhwm
        self._sock = sock
        endpoint = self._zmq.bind(sock, self.config.endpoint, self.config.keys)
        logger.info("uplink server bound at %s", endpoint)
        return endpoint

    def _socket(self) -> zmq.asyncio.Socket:
        if self._sock is None:
            raise TransportClosed("uplink server is not started")
        return self._sock

    def peers(self) -> dict[bytes, PeerInfo]:
        """Returns peer identity → info for every peer that said hello and is not dropped."""
        return dict(self._peers)

    def session_of(self, peer: bytes) -> str | None:
        """Returns the session id of ``peer``, or None if it has not said hello."""
        info = self._peers.get(peer)
        return info.session_id if info else None

    def drop_peer(self, peer: bytes) -> None:
        """Forgets ``peer``; its further messages count as malformed until it says hello again."""
        if self._peers.pop(peer, None) is not None:
            logger.info("uplink: dropped peer %s", peer.hex())

    def _malformed(self, peer: bytes, why: str) -> None:
        self.malformed_count += 1
        if _worth_logging(self.malformed_count):
            logger.warning("uplink: dropped a message from peer %s: %s (total %d)", peer.hex(), why,
                           self.malformed_count)

    def _ask_for_hello(self, peer: bytes, now: float) -> None:
        self.stale_peer_messages += 1
        if now - self._hello_asked.get(peer, -1e9) < 1.0:
            return
        if len(self._hello_asked) > 4096:  # bounded: strangers cannot grow it without limit
            self._hello_asked.clear()
        self._hello_asked[peer] = now
        logger.info("uplink: peer %s sends without a hello (server restarted?); asking it to reconnect", peer.hex())
        self.send(peer, Status(request_id=0, role="learner", state=HELLO_REQUIRED, detail={}, ok=False,
                               message="unknown peer: send hello"))

    def _admit(self, peer: bytes, msg: Message) -> bool:
        """Updates peer state for ``msg``; returns whether the caller should see it."""
        now = time.monotonic()
        if isinstance(msg, Hello):
            for other, info in list(self._peers.items()):
                if info.session_id == msg.session_id and other != peer:
                    del self._peers[other]  # the runtime reconnected with a new socket
            self._peers[peer] = PeerInfo(msg.session_id, Spaces.from_hello(msg), now)
            return True
        info = self._peers.get(peer)
        if info is None:
            if isinstance(msg, (TransitionBatch, Heartbeat)):
                # A runtime still streaming to a previous incarnation of this server (it
                # restarted): not malformed. Tell it to say hello again, at most once a second.
                self._ask_for_hello(peer, now)
            else:
                self._malformed(peer, f"{msg.TYPE} before hello")
            return False
        session = getattr(msg, "session_id", info.session_id)
        if session != info.session_id:
            self._malformed(peer, f"{msg.TYPE} for session {session!r}, peer is {info.session_id!r}")
            return False
        info.last_seen = now
        return True

    async def recv(self) -> tuple[bytes, Message]:
        """Waits for the next valid message; returns (peer identity, message).

        Malformed or out-of-protocol input is counted in ``malformed_count``, logged and
        skipped. Wrap in ``asyncio.timeout`` for a deadline. Raises TransportClosed if not started.
        """
        peer, msg, _ = await self.recv_framed()
        return peer, msg

    async def recv_framed(self) -> tuple[bytes, Message, memoryview | None]:
        """As :meth:`recv`, plus the message's encoding when it came as one frame (a runtime's
        batch: its spill record): ``encode(msg, single_frame=True)``'s form, which a receiver
        can store as it is instead of encoding the decoded message again; None when the
        message came in several frames."""
        sock = self._socket()
        while True:
            frames = await sock.recv_multipart(copy=False)
            self.received_count += 1
            peer = frames[0].bytes
            if len(frames) < 2:
                self._malformed(peer, "no payload")
                continue
            info = self._peers.get(peer)
            try:
                msg = decode(_buffers(frames[1:]), limits=self.config.limits,
                             spaces=info.spaces if info else None)
            except ProtocolError as e:
                self._malformed(peer, str(e))
                continue
            if self._admit(peer, msg):
                return peer, msg, (frames[1].buffer if len(frames) == 2 else None)

    def send(self, peer: bytes, msg: Message) -> bool:
        """Queues ``msg`` for ``peer`` without blocking; returns False if unroutable or at the HWM."""
        return _send_nowait(self._socket(), [peer, *encode(msg)])

    async def run(self) -> None:
        """Sends heartbeats to every peer and drops silent peers, until cancelled."""
        period = self.config.heartbeat_interval_s
        deadline = time.monotonic()
        while True:
            deadline += period
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            now = time.monotonic()
            if now - deadline > period:
                deadline = now  # fell behind (loop was busy): do not burst
            for peer, info in list(self._peers.items()):
                if now - info.last_seen > self.config.peer_timeout_s:
                    logger.warning("uplink: peer %s (session %s) silent for %.1f s, dropping", peer.hex(),
                                   info.session_id, now - info.last_seen)
                    self.drop_peer(peer)
                    continue
                self.send(peer, Heartbeat(session_id=info.session_id, role="learner", sent_at=time.time(),
                                          stats=None))

    def close(self) -> None:
        """Closes the socket (linger 0) and the context. Idempotent."""
        if self._zmq is not None:
            self._zmq.close()
        self._zmq = self._sock = None
        self._peers.clear()
