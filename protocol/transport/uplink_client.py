"""The runtime's end of the uplink channel: a DEALER (:class:`UplinkClient`) that says hello,
keeps the connection with heartbeats, reconnects with backoff and delivers what the learner
sends. The learner's end is :mod:`protocol.transport.uplink`."""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import zmq
import zmq.asyncio

from protocol.codec import Limits, decode, encode
from protocol.wire_fields import Buffer
from protocol.errors import HandshakeError, PeerTimeout, ProtocolError, TransportClosed
from protocol.keys import CurveClientKeys
from protocol.messages import Heartbeat, Hello, LoopStats, Message, Status, Welcome
from protocol.transport.common import _buffers, _positive, _send_nowait, _Sockets
from protocol.transport.uplink import HELLO_REQUIRED

logger = logging.getLogger(__name__)

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
                 stats: Callable[[], LoopStats | None] | None = None,
                 on_state: Callable[[ConnectionState], None] | None = None) -> None:
        """``on_state`` (optional) is called with every new connection state, on the event
        loop, as it changes (the runtime's outbox keeps memory copies only while connected)."""
        self.config = config
        self._on_state = on_state
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
        self._not_connected = asyncio.Event()
        self._not_connected.set()
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
        changed, self.state = state != self.state, state
        if state == ConnectionState.CONNECTED:
            self.connected.set()
            self._not_connected.clear()
        else:
            self.connected.clear()
            self._not_connected.set()
        if changed and self._on_state is not None:
            self._on_state(state)

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
        self._zmq.secure_client(sock, self.config.keys, self.config.endpoint)
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
        return self.state == ConnectionState.CONNECTED and self.send_encoded(encode(msg))

    def send_encoded(self, frames: Sequence[Buffer]) -> bool:
        """:meth:`send` for a message encoded already (e.g. a spill record): sent unchecked, uncopied."""
        if self.state != ConnectionState.CONNECTED or self._sock is None:
            return False
        return _send_nowait(self._sock, frames)

    async def writable(self) -> None:
        """Returns once the socket can take another message (below its high-water mark) or the
        connection changed (disconnected, reconnected: a send then says which). Awaits the
        socket's POLLOUT readiness; never polls on a timer."""
        sock = self._sock
        if self.state != ConnectionState.CONNECTED or sock is None:
            return
        poll = asyncio.ensure_future(sock.poll(flags=zmq.POLLOUT))
        gone = asyncio.ensure_future(self._not_connected.wait())
        try:
            await asyncio.wait({poll, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (poll, gone):
                if not task.done():
                    task.cancel()
            if poll.done() and not poll.cancelled() and poll.exception() is not None:
                # the socket closed under the poll (a reconnect): the next send says so
                logger.debug("uplink client: writable poll ended: %s", poll.exception())

    async def recv(self, timeout: float | None = None) -> Message | None:
        """Returns the next message from the learner (ack, welcome, command, heartbeat), or
        None when none arrives within ``timeout`` seconds (None: waits until one does). Needs
        ``run()`` running."""
        if timeout is None:
            while not self._inbox:
                self._inbox_event.clear()
                await self._inbox_event.wait()
            return self._inbox.popleft()
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
        # Liveness counts from when someone listens: a runtime that spent 15 s building its
        # policy between the welcome and this call has not heard the learner's heartbeats
        # (they wait in the socket), which says nothing about the learner.
        self._last_seen = max(self._last_seen, next_beat)
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
            # poll, then read without waiting: a timed-out recv could drop a message it had read
            if not await sock.poll(timeout=max(1, int((wait + 1e-3) * 1e3)), flags=zmq.POLLIN):
                continue
            try:
                frames = await sock.recv_multipart(flags=zmq.DONTWAIT, copy=False)
            except zmq.Again:
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
