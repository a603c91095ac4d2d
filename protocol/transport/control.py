"""The control channel: a process's :class:`ControlServer` (ROUTER) answers
:class:`ControlClient` (DEALER) commands with statuses, request/reply."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

import zmq
import zmq.asyncio

from protocol.codec import Limits, decode, encode
from protocol.errors import PeerTimeout, ProtocolError, TransportClosed
from protocol.keys import CurveClientKeys, CurveServerKeys
from protocol.messages import Command, Status
from protocol.transport.common import DEFAULT_ENDPOINT, _buffers, _positive, _send_nowait, _Sockets, _worth_logging

logger = logging.getLogger(__name__)

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
        self.accepted_count = 0
        """Requests that decoded as a Command and were answered (``accepted + malformed`` is
        every message received)."""
        self.failed_replies = 0
        """Replies that failed: the handler raised, or the status could not be encoded or sent.
        Logged and counted; the server keeps serving."""

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
        except Exception as e:  # noqa: BLE001 — a failing handler answers ok=False, the server keeps serving
            self.failed_replies += 1
            logger.exception("control: %s handler failed (%d so far): %s", cmd.kind, self.failed_replies, e)
            message = f"handler failed: {type(e).__name__}: {e}"
        logger.warning("control: %s failed: %s", cmd.kind, message)
        return self._error(cmd, message)

    def _error(self, cmd: Command, message: str) -> Status:
        return Status(request_id=cmd.request_id, role=self.config.role, state="error", detail={}, ok=False,
                      message=message[:1024])

    def _reply(self, sock: zmq.asyncio.Socket, peer: bytes, cmd: Command, status: Status) -> None:
        """Sends ``status``; a reply that cannot be encoded or sent is logged and counted in
        ``failed_replies`` (an encodable error status goes instead), never raised."""
        try:
            frames = encode(status)
        except ProtocolError as e:
            self.failed_replies += 1
            logger.error("control: the reply to %s #%d is not encodable (%d so far): %s", cmd.kind, cmd.request_id,
                         self.failed_replies, e)
            frames = encode(self._error(cmd, f"reply not encodable: {e}"))
        try:
            if not _send_nowait(sock, [peer, *frames]):
                self.failed_replies += 1
                logger.warning("control: reply to %s #%d dropped (peer gone or at its HWM)", cmd.kind, cmd.request_id)
        except ProtocolError as e:
            self.failed_replies += 1
            logger.error("control: reply to %s #%d not sent (%d so far): %s", cmd.kind, cmd.request_id,
                         self.failed_replies, e)

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
                self.accepted_count += 1
                status = await self._answer(cmd)
                self._reply(sock, peer, cmd, status)
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
            self._zmq.secure_client(sock, self.config.keys, self.config.endpoint)
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
