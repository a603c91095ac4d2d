"""ZeroMQ transport on ``zmq.asyncio``: uplink, weights and control channels.

* Uplink: the learner binds a ROUTER (:class:`UplinkServer`), each runtime connects a
  DEALER (:class:`UplinkClient`). Frames are exactly :func:`protocol.codec.encode`'s
  (the ROUTER adds/strips the peer identity).
* Weights: :class:`WeightsPublisher` (PUB) → :class:`WeightsSubscriber` (SUB), latest wins.
* Control: :class:`ControlServer` (ROUTER) ← :class:`ControlClient` (DEALER), request/reply.

Every object owns its own ``zmq.asyncio.Context`` (so a CURVE server's ZAP authenticator
covers only its sockets), does no I/O in ``__init__``, never blocks the event loop, and
closes its sockets with linger 0. Sends are non-blocking and zero-copy: arrays handed to
``send``/``publish`` must not be mutated afterwards.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence
from urllib.parse import urlsplit

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from protocol.codec import Limits, Spaces, decode, encode
from protocol.errors import ChecksumError, HandshakeError, PeerTimeout, ProtocolError, TransportClosed
from protocol.keys import CurveClientKeys, CurveServerKeys, apply_client_keys, apply_server_keys
from protocol.messages import (Command, Heartbeat, Hello, LoopStats, Message, Status, TransitionBatch, Weights,
                               Welcome)

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "tcp://127.0.0.1:0"
_LOOPBACK_HOSTS = {"localhost", "::1", "[::1]"}


def _positive(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not value > 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be > 0, got {value!r}")


def _worth_logging(count: int) -> bool:
    """Rate limit for per-frame warnings: the first 10, then every 1000th. A flood of junk
    must not turn into a flood of log writes on the event loop that also runs the robot."""
    return count <= 10 or count % 1000 == 0


def _is_loopback(endpoint: str) -> bool:
    if not endpoint.startswith("tcp://"):
        return True  # ipc:// and inproc:// never leave the machine
    host = urlsplit(endpoint).hostname or ""
    return host in _LOOPBACK_HOSTS or host.startswith("127.")


class _Sockets:
    """One context plus the optional ZAP authenticator; owns their shutdown."""

    def __init__(self) -> None:
        self.ctx = zmq.asyncio.Context()
        self.auth: AsyncioAuthenticator | None = None

    def socket(self, kind: int, *, limits: Limits | None = None) -> zmq.asyncio.Socket:
        sock = self.ctx.socket(kind)
        sock.linger = 0
        if limits is not None:
            # libzmq drops a peer that sends a bigger frame before we ever see it.
            sock.setsockopt(zmq.MAXMSGSIZE, limits.max_frame_bytes)
        return sock

    def bind(self, sock: zmq.asyncio.Socket, endpoint: str, keys: CurveServerKeys | None) -> str:
        if keys is not None:
            if self.auth is None:
                self.auth = AsyncioAuthenticator(self.ctx)
                self.auth.start()
                self.auth.configure_curve(domain="*", location=str(keys.allowed_clients_dir))
            apply_server_keys(sock, keys)
        elif not _is_loopback(endpoint):
            logger.warning("SECURITY: binding %s WITHOUT CURVE keys: anyone who can reach this address "
                           "can talk to this socket; run `resetfree-keys generate` and configure keys", endpoint)
        sock.bind(endpoint)
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def close(self) -> None:
        if self.auth is not None:
            self.auth.stop()
            self.auth = None
        self.ctx.destroy(linger=0)


def _send_nowait(sock: zmq.asyncio.Socket, frames: Sequence[object]) -> bool:
    """Queues ``frames`` without waiting; returns False when the HWM is reached or the peer unroutable."""
    fut = sock.send_multipart(list(frames), flags=zmq.DONTWAIT, copy=False)
    if not fut.done():
        return True
    exc = fut.exception()
    if exc is None:
        return True
    if isinstance(exc, zmq.Again) or (isinstance(exc, zmq.ZMQError) and exc.errno == zmq.EHOSTUNREACH):
        return False
    raise TransportClosed(f"send failed: {exc}") from exc


def _buffers(frames: Sequence[zmq.Frame]) -> list[memoryview]:
    return [f.buffer for f in frames]


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
        sock = self._socket()
        while True:
            frames = await sock.recv_multipart(copy=False)
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
                return peer, msg

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


# ============================================================================ uplink client

class ConnectionState(enum.Enum):
    """Where an UplinkClient stands."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


class HandshakeRefused(HandshakeError):
    """The learner answered the hello with ``accepted=False``; retrying will not help."""


@dataclass(frozen=True, kw_only=True)
class UplinkClientConfig:
    """The runtime's uplink DEALER."""

    endpoint: str
    """The learner's uplink endpoint."""
    hello_timeout_s: float = 5.0
    """Deadline for the welcome after sending hello."""
    heartbeat_interval_s: float = 1.0
    """How often ``run()`` sends a heartbeat."""
    peer_timeout_s: float = 5.0
    """No message from the learner this long ⇒ reconnect."""
    reconnect_min_s: float = 0.1
    """First backoff after a failed handshake."""
    reconnect_max_s: float = 5.0
    """Backoff cap (it doubles per failure)."""
    sndhwm: int = 64
    """Messages ZeroMQ queues before ``send`` returns False."""
    inbox_size: int = 4096
    """Received messages buffered for ``recv``; when full the oldest is dropped."""
    limits: Limits = Limits()
    """Decoder limits."""
    keys: CurveClientKeys | None = None
    """CURVE keys with the learner's key pinned; None: plaintext."""

    def __post_init__(self) -> None:
        _positive(self, "hello_timeout_s", "heartbeat_interval_s", "peer_timeout_s", "reconnect_min_s",
                  "reconnect_max_s", "sndhwm", "inbox_size")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("UplinkClientConfig.reconnect_max_s must be >= reconnect_min_s")


class UplinkClient:
    """The runtime's end of the uplink.

    ``await connect()`` performs one handshake; ``run()`` (in a task) keeps the connection:
    it reads into the inbox, sends heartbeats, detects a dead learner and reconnects with
    exponential backoff (a new DEALER and a fresh hello). The Welcome of every reconnect
    is delivered through ``recv`` so the outbox can resend from ``resume_seq``.
    """

    def __init__(self, config: UplinkClientConfig, hello: Hello | Callable[[], Hello], *,
                 stats: Callable[[], LoopStats | None] | None = None) -> None:
        self.config = config
        self._hello = hello if callable(hello) else (lambda: hello)
        self._stats = stats
        self._zmq: _Sockets | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._inbox: collections.deque[Message] = collections.deque(maxlen=config.inbox_size)
        self._inbox_event = asyncio.Event()
        self._last_seen = 0.0
        self.state = ConnectionState.DISCONNECTED
        """The current connection state."""
        self.connected = asyncio.Event()
        """Set while CONNECTED."""
        self.welcome: Welcome | None = None
        """The latest Welcome."""
        self.malformed_count = 0
        """Messages from the learner dropped as malformed."""
        self.reconnects = 0
        """Handshakes completed after the first."""
        self._reconnect_requested = False

    def _set_state(self, state: ConnectionState) -> None:
        if state != self.state:
            logger.info("uplink client: %s -> %s", self.state.value, state.value)
        self.state = state
        if state == ConnectionState.CONNECTED:
            self.connected.set()
        else:
            self.connected.clear()

    def _drop_socket(self) -> None:
        if self._zmq is not None:
            self._zmq.close()
        self._zmq = self._sock = None

    async def connect(self) -> Welcome:
        """Opens a fresh DEALER, sends hello and waits for the welcome; returns it.

        Raises PeerTimeout (no welcome within ``hello_timeout_s``), HandshakeRefused, or
        HandshakeError (a welcome for another session). Awaits at most ``hello_timeout_s``.
        """
        if self.state == ConnectionState.CLOSED:
            raise TransportClosed("uplink client is closed")
        self._drop_socket()
        self._set_state(ConnectionState.CONNECTING)
        self._zmq = _Sockets()
        sock = self._zmq.socket(zmq.DEALER, limits=self.config.limits)
        sock.sndhwm = self.config.sndhwm
        if self.config.keys is not None:
            apply_client_keys(sock, self.config.keys)
        sock.connect(self.config.endpoint)
        self._sock = sock
        hello = self._hello()
        try:
            async with asyncio.timeout(self.config.hello_timeout_s):
                await sock.send_multipart(encode(hello), copy=False)
                welcome = await self._await_welcome(sock)
        except TimeoutError as e:
            self._drop_socket()
            self._set_state(ConnectionState.DISCONNECTED)
            raise PeerTimeout(f"welcome: none within {self.config.hello_timeout_s} s from "
                              f"{self.config.endpoint}") from e
        if welcome.session_id != hello.session_id or not welcome.accepted:
            self._drop_socket()
            self._set_state(ConnectionState.DISCONNECTED)
            if welcome.session_id != hello.session_id:
                raise HandshakeError(f"welcome.session_id: {welcome.session_id!r}, expected {hello.session_id!r}")
            raise HandshakeRefused(f"welcome.accepted: learner refused session {hello.session_id!r}: "
                                   f"{welcome.reason}")
        if self.welcome is not None:
            self.reconnects += 1
        self.welcome = welcome
        self._last_seen = time.monotonic()
        self._set_state(ConnectionState.CONNECTED)
        return welcome

    async def _await_welcome(self, sock: zmq.asyncio.Socket) -> Welcome:
        while True:
            frames = await sock.recv_multipart(copy=False)
            try:
                msg = decode(_buffers(frames), limits=self.config.limits)
            except ProtocolError as e:
                self.malformed_count += 1
                logger.warning("uplink client: malformed message during handshake: %s", e)
                continue
            if isinstance(msg, Welcome):
                return msg
            logger.debug("uplink client: ignoring %s before welcome", msg.TYPE)

    def send(self, msg: Message) -> bool:
        """Queues ``msg`` without blocking; returns False when not connected or at the HWM."""
        if self.state != ConnectionState.CONNECTED or self._sock is None:
            return False
        return _send_nowait(self._sock, encode(msg))

    async def recv(self, timeout: float) -> Message | None:
        """Returns the next message from the learner (ack, welcome, command, heartbeat), or
        None when none arrives within ``timeout`` seconds. Needs ``run()`` running."""
        deadline = time.monotonic() + timeout
        while not self._inbox:
            self._inbox_event.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                async with asyncio.timeout(remaining):
                    await self._inbox_event.wait()
            except TimeoutError:
                return None
        return self._inbox.popleft()

    def _deliver(self, msg: Message) -> None:
        if len(self._inbox) == self._inbox.maxlen:
            logger.warning("uplink client: inbox full, dropping the oldest %s", self._inbox[0].TYPE)
        self._inbox.append(msg)
        self._inbox_event.set()

    async def run(self) -> None:
        """Keeps the uplink alive until cancelled; raises HandshakeRefused (fatal).

        Closes the socket in ``finally``.
        """
        backoff = self.config.reconnect_min_s
        try:
            while True:
                if self.state != ConnectionState.CONNECTED:
                    try:
                        self._deliver(await self.connect())
                    except HandshakeRefused:
                        raise
                    except (PeerTimeout, HandshakeError) as e:
                        logger.warning("uplink client: %s; retrying in %.2f s", e, backoff)
                        await asyncio.sleep(backoff)
                        backoff = min(2 * backoff, self.config.reconnect_max_s)
                        continue
                    backoff = self.config.reconnect_min_s
                await self._serve()
        finally:
            self.close()

    async def _serve(self) -> None:
        """Reads, heartbeats and watches the learner's liveness; returns when it is dead."""
        sock = self._sock
        assert sock is not None
        cfg = self.config
        next_beat = time.monotonic()
        while True:
            now = time.monotonic()
            if self._reconnect_requested:
                self._reconnect_requested = False
                logger.info("uplink client: reconnecting on request")
                self._drop_socket()
                self._set_state(ConnectionState.DISCONNECTED)
                return
            if now >= next_beat:
                self.send(Heartbeat(session_id=self._hello().session_id, role="runtime", sent_at=time.time(),
                                    stats=self._stats() if self._stats else None))
                next_beat = max(next_beat + cfg.heartbeat_interval_s, now)
            if now - self._last_seen > cfg.peer_timeout_s:
                logger.warning("uplink client: learner silent for %.1f s, reconnecting", now - self._last_seen)
                self._drop_socket()
                self._set_state(ConnectionState.DISCONNECTED)
                return
            wait = max(0.0, min(next_beat, self._last_seen + cfg.peer_timeout_s) - now)
            try:
                async with asyncio.timeout(wait + 1e-3):
                    frames = await sock.recv_multipart(copy=False)
            except TimeoutError:
                continue
            try:
                msg = decode(_buffers(frames), limits=cfg.limits)
            except ProtocolError as e:
                self.malformed_count += 1
                logger.warning("uplink client: malformed message dropped: %s", e)
                continue
            self._last_seen = time.monotonic()
            if isinstance(msg, Status) and msg.state == HELLO_REQUIRED:
                logger.info("uplink client: the learner does not know this session (it restarted); saying hello")
                self._drop_socket()
                self._set_state(ConnectionState.DISCONNECTED)
                return
            if not isinstance(msg, Heartbeat):
                self._deliver(msg)

    def reconnect(self) -> None:
        """Drops the connection now; ``run()`` opens a new socket and sends a fresh hello,
        whose ``Welcome`` (with the learner's ``resume_seq``) arrives through ``recv``.
        Use it when the caller knows the stream has a hole the learner cannot see end.
        Takes effect within one heartbeat interval (the serving loop checks it)."""
        if self.state != ConnectionState.CLOSED:
            self._reconnect_requested = True

    def close(self) -> None:
        """Closes the socket (linger 0); the client cannot be used again. Idempotent."""
        self._drop_socket()
        self._set_state(ConnectionState.CLOSED)


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
                    weights.verify()
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


# ============================================================================ control

Handler = Callable[[Command], Awaitable[Status]]


@dataclass(frozen=True, kw_only=True)
class ControlServerConfig:
    """A process's control ROUTER."""

    endpoint: str = DEFAULT_ENDPOINT
    """Where to bind."""
    role: str = "runtime"
    """Reported in error replies."""
    handler_timeout_s: float = 2.0
    """Deadline for the handler; past it the reply is ``ok=False``."""
    limits: Limits = Limits(max_frame_bytes=2**16, max_message_bytes=2**16)
    """Decoder limits (commands are tiny)."""
    keys: CurveServerKeys | None = None
    """CURVE keys; None: plaintext."""

    def __post_init__(self) -> None:
        _positive(self, "handler_timeout_s")


class ControlServer:
    """Answers Commands with Statuses via ``handler``. ``start()``, then ``run()`` in a task."""

    def __init__(self, config: ControlServerConfig, handler: Handler) -> None:
        self.config = config
        self._handler = handler
        self._zmq: _Sockets | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self.malformed_count = 0
        """Requests dropped as malformed."""

    async def start(self) -> str:
        """Binds the ROUTER; returns the bound endpoint."""
        self._zmq = _Sockets()
        sock = self._zmq.socket(zmq.ROUTER, limits=self.config.limits)
        self._sock = sock
        endpoint = self._zmq.bind(sock, self.config.endpoint, self.config.keys)
        logger.info("control server bound at %s", endpoint)
        return endpoint

    async def _answer(self, cmd: Command) -> Status:
        try:
            async with asyncio.timeout(self.config.handler_timeout_s):
                return await self._handler(cmd)
        except TimeoutError:
            message = f"handler took longer than {self.config.handler_timeout_s} s"
        except ProtocolError as e:
            message = str(e)
        logger.warning("control: %s failed: %s", cmd.kind, message)
        return Status(request_id=cmd.request_id, role=self.config.role, state="error", detail={}, ok=False,
                      message=message)

    async def run(self) -> None:
        """Serves requests one at a time until cancelled; closes in ``finally``."""
        if self._sock is None:
            raise TransportClosed("control server is not started")
        sock = self._sock
        try:
            while True:
                frames = await sock.recv_multipart(copy=False)
                peer = frames[0].bytes
                try:
                    cmd = decode(_buffers(frames[1:]), limits=self.config.limits) if len(frames) > 1 else None
                except ProtocolError as e:
                    cmd = None
                    if _worth_logging(self.malformed_count + 1):
                        logger.warning("control: malformed request: %s (total %d)", e, self.malformed_count + 1)
                if not isinstance(cmd, Command):
                    self.malformed_count += 1
                    # Queued frames complete without suspending: yield so a flood of junk cannot hold
                    # the event loop (the runtime's control loop ticks on it).
                    await asyncio.sleep(0)
                    continue
                status = await self._answer(cmd)
                _send_nowait(sock, [peer, *encode(status)])
        finally:
            self.close()

    def close(self) -> None:
        """Closes the socket (linger 0). Idempotent."""
        if self._zmq is not None:
            self._zmq.close()
        self._zmq = self._sock = None


@dataclass(frozen=True, kw_only=True)
class ControlClientConfig:
    """An operator's (or the learner's) connection to a control server."""

    endpoint: str
    """The control server's endpoint."""
    limits: Limits = Limits(max_frame_bytes=2**16, max_message_bytes=2**16)
    """Decoder limits."""
    keys: CurveClientKeys | None = None
    """CURVE keys with the server's key pinned."""


class ControlClient:
    """Sends Commands and awaits the matching Status; a timed-out socket is replaced."""

    def __init__(self, config: ControlClientConfig) -> None:
        self.config = config
        self._zmq: _Sockets | None = None
        self._sock: zmq.asyncio.Socket | None = None

    def _socket(self) -> zmq.asyncio.Socket:
        if self._sock is None:
            self._zmq = _Sockets()
            sock = self._zmq.socket(zmq.DEALER, limits=self.config.limits)
            if self.config.keys is not None:
                apply_client_keys(sock, self.config.keys)
            sock.connect(self.config.endpoint)
            self._sock = sock
        return self._sock

    async def request(self, cmd: Command, timeout: float) -> Status:
        """Sends ``cmd``; returns the Status with its request id.

        Raises PeerTimeout when none arrives within ``timeout`` s (the socket is then
        recreated so a late reply cannot be mistaken for the next one).
        """
        sock = self._socket()
        try:
            async with asyncio.timeout(timeout):
                await sock.send_multipart(encode(cmd))
                while True:
                    frames = await sock.recv_multipart(copy=False)
                    try:
                        msg = decode(_buffers(frames), limits=self.config.limits)
                    except ProtocolError as e:
                        logger.warning("control client: malformed reply: %s", e)
                        continue
                    if isinstance(msg, Status) and msg.request_id == cmd.request_id:
                        return msg
        except TimeoutError as e:
            self.close()
            raise PeerTimeout(f"control: no status for {cmd.kind} #{cmd.request_id} within {timeout} s "
                              f"from {self.config.endpoint}") from e

    def close(self) -> None:
        """Closes the socket (linger 0). Idempotent; the next request reopens it."""
        if self._zmq is not None:
            self._zmq.close()
        self._zmq = self._sock = None
