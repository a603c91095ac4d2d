"""Shared pieces of the transport: a context with its sockets and optional CURVE
authenticator (:class:`_Sockets`), the non-blocking zero-copy send, the loopback check that
decides whether a plaintext bind earns a SECURITY warning, config validation and the rate
limit for per-frame warnings."""

from __future__ import annotations

import asyncio
import logging
import socket as _socket
import time
from collections.abc import Callable
from typing import Sequence
from urllib.parse import urlsplit

import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from protocol.codec import Limits
from protocol.errors import TransportClosed
from protocol.keys import CurveClientKeys, CurveServerKeys, apply_client_keys, apply_server_keys

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "tcp://127.0.0.1:0"
_LOOPBACK_HOSTS = {"localhost", "::1", "[::1]"}


def _positive(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not value > 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be > 0, got {value!r}")


def _buffer_size(obj: object, *names: str) -> None:
    """A kernel socket buffer: a byte count, or -1 for the kernel's own autotuning."""
    for name in names:
        value = getattr(obj, name)
        if not (value == -1 or value >= 4096):
            raise ValueError(f"{type(obj).__name__}.{name} must be -1 (the kernel's autotuning) or at least 4096 "
                             f"bytes, got {value!r}")


def _worth_logging(count: int) -> bool:
    """Rate limit for per-frame warnings: the first 10, then every 1000th. A flood of junk
    must not turn into a flood of log writes on the event loop that also runs the robot."""
    return count <= 10 or count % 1000 == 0


worth_logging = _worth_logging
"""Public name of the rate limit above, for the processes' own per-message warnings."""


def _is_loopback(endpoint: str) -> bool:
    if not endpoint.startswith("tcp://"):
        return True  # ipc:// and inproc:// never leave the machine
    host = urlsplit(endpoint).hostname or ""
    return host in _LOOPBACK_HOSTS or host.startswith("127.")


_io_thread_scheduling: tuple[int, int] | None = None


def set_io_thread_scheduling(policy: int, priority: int) -> None:
    """Makes the ZeroMQ I/O threads of every context created from now on run with OS
    scheduling ``policy`` (e.g. ``os.SCHED_FIFO``) at ``priority`` (libzmq's
    ``ZMQ_THREAD_SCHED_POLICY`` / ``ZMQ_THREAD_PRIORITY``). A real-time runtime sets them one
    level below its control loop: otherwise they inherit the loop's own level, and a 10 MB
    weights blob arriving on the loop's core holds the tick back until it is read."""
    global _io_thread_scheduling
    _io_thread_scheduling = (policy, priority)


def start_zero_copy_collector() -> None:
    """Starts pyzmq's garbage-collector thread now, in the calling thread, instead of at the
    first zero-copy send (which would start it wherever that send happens). The thread frees
    a sent buffer once libzmq is done with it; a real-time caller starts it before lowering
    its helper threads, so it does not run at the control loop's own priority."""
    from zmq.utils.garbage import gc as zero_copy_gc

    if not zero_copy_gc.is_alive():
        zero_copy_gc.start()


# ============================================================================ CURVE handshakes
HANDSHAKES: dict[str, int] = {"refused": 0, "failed": 0}
"""Process-wide CURVE handshake counts: ``refused`` — clients this process's servers refused
(an unknown key, no key at all, a broken handshake); ``failed`` — handshakes this process's
clients had refused by a server. Logged (rate-limited) as they happen; status reports them."""

_HANDSHAKE_FAILED = {zmq.EVENT_HANDSHAKE_FAILED_AUTH: "authentication refused",
                     zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol error",
                     zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake failed"}
_MONITORED = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | sum(_HANDSHAKE_FAILED)
_CONNECTION_EVENTS = zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_HANDSHAKE_SUCCEEDED
"""What a client that follows its connection's state (``on_event``) watches in addition."""
_security_announced = False


def handshake_figures() -> dict[str, int]:
    """Returns the process's refused/failed CURVE handshake counts (for a status)."""
    return {"handshakes_refused": HANDSHAKES["refused"], "handshakes_failed": HANDSHAKES["failed"]}


def announce_security(curve: bool, what: str) -> None:
    """Logs once per process whether CURVE is on (at its first bind or keyed connect)."""
    global _security_announced
    if _security_announced:
        return
    _security_announced = True
    if curve:
        logger.info("security: CURVE on (%s): authenticated, encrypted; unknown keys are refused and logged", what)
    else:
        logger.info("security: CURVE off (%s): plaintext; keep it to loopback or a trusted network", what)


def _reason(event: int, value: int) -> str:
    """Returns ZeroMQ's reason for a failed handshake event, in words."""
    text = _HANDSHAKE_FAILED.get(event, "handshake failed")
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"{text} (ZAP status {value}: the server does not know this client's key)"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        names = {getattr(zmq, n): n for n in dir(zmq) if n.startswith("PROTOCOL_ERROR_")}
        name = names.get(value, str(value))
        hint = " (the client offers no CURVE key, or the wrong mechanism)" if "MECHANISM" in name else ""
        return f"{text}: {name}{hint}"
    return f"{text}: {zmq.strerror(value) if value else 'no detail'}"


def _peer_address(fd: int) -> str:
    """Returns ``host:port`` of the TCP peer on ``fd`` (a libzmq connection), or ``?``."""
    try:
        with _socket.fromfd(fd, _socket.AF_INET, _socket.SOCK_STREAM) as dup:  # a dup: libzmq's fd stays open
            host, port = dup.getpeername()[:2]
            return f"{host}:{port}"
    except OSError:
        return "?"


class _RateLimitedLog:
    """At most one line per ``interval_s`` (the rest are counted and reported with the next)."""

    def __init__(self, interval_s: float = 5.0) -> None:
        self.interval_s, self._last, self._suppressed = interval_s, -1e9, 0

    def __call__(self, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self._suppressed += 1
            return
        self._last, suppressed, self._suppressed = now, self._suppressed, 0
        logger.log(level, msg + (f" ({suppressed} more since the last report)" if suppressed else ""), *args)


class _RateLimitedByReason:
    """One :class:`_RateLimitedLog` per reason: a flood of one refusal never hides another kind."""

    def __init__(self) -> None:
        self._logs: dict[str, _RateLimitedLog] = {}

    def __call__(self, reason: str, level: int, msg: str, *args: object) -> None:
        self._logs.setdefault(reason, _RateLimitedLog())(level, msg, *args)

    def reset(self) -> None:
        """Forgets every reason's last line (tests)."""
        self._logs.clear()


_zap_log = _RateLimitedLog()
_refused_log = _RateLimitedByReason()
_failed_log = _RateLimitedLog()


class _Authenticator(AsyncioAuthenticator):
    """The ZAP handler, which also logs every client it refuses with the client's address,
    key and the reason (rate-limited). The count is the socket monitor's (``HANDSHAKES``)."""

    _reply: tuple[bytes, bytes] | None = None

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self._reply = None
        await super().handle_zap_message(msg)
        if self._reply is None or self._reply[0] == b"200":
            return
        address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else "?"
        mechanism = msg[5].decode("ascii", "replace") if len(msg) > 5 else "?"
        key = z85.encode(msg[6]).decode() if len(msg) > 6 and len(msg[6]) == 32 else "none"
        _zap_log(logging.WARNING, "security: refused a %s client from %s (key %s): %s", mechanism, address, key,
                 self._reply[1].decode("utf-8", "replace"))

    def _send_zap_reply(self, request_id: bytes, status_code: bytes, status_text: bytes,
                        user_id: str = "anonymous") -> None:
        self._reply = (status_code, status_text)
        super()._send_zap_reply(request_id, status_code, status_text, user_id)


async def _watch(monitor: zmq.asyncio.Socket, role: str, endpoint: str,
                 on_event: Callable[[int], None] | None = None) -> None:
    """Reads a socket's monitor events: counts and logs refused (server) or failed (client)
    CURVE handshakes, and passes every event's kind to ``on_event``. A server learns a
    failure before the connection's DISCONNECTED event, which names the connection: the pair
    gives the peer's address (best effort)."""
    peers: dict[int, str] = {}
    pending: list[str] = []
    while True:
        event = parse_monitor_message(await monitor.recv_multipart())
        kind, value = event["event"], event["value"]
        if on_event is not None:
            on_event(kind)
        if kind == zmq.EVENT_ACCEPTED:
            peers[value] = _peer_address(value)
            if len(peers) > 4096:  # bounded whatever a flood of connections does
                peers.pop(next(iter(peers)))
        elif kind in _HANDSHAKE_FAILED:
            reason = _reason(kind, value)
            if role == "client":
                HANDSHAKES["failed"] += 1
                _failed_log(logging.ERROR, "security: the server at %s refused this client's handshake: %s "
                            "(%d so far)", endpoint, reason, HANDSHAKES["failed"])
            else:
                HANDSHAKES["refused"] += 1
                pending.append(reason)
                del pending[:-64]
        elif kind == zmq.EVENT_DISCONNECTED:
            address = peers.pop(value, "?")
            if role == "server" and pending:
                reason = pending.pop(0)
                _refused_log(reason, logging.WARNING, "security: %s refused a client from %s: %s (%d refused so far)",
                             endpoint, address, reason, HANDSHAKES["refused"])


def _public_key(certificate: object) -> str:
    """The Z85 public key of a CURVE certificate file, for a log line ('?' when unreadable)."""
    try:
        public, _ = zmq.auth.load_certificate(str(certificate))
    except (OSError, ValueError):
        return "?"
    return public.decode("ascii") if isinstance(public, bytes) else str(public)


class _Sockets:
    """One context plus the optional ZAP authenticator; owns their shutdown."""

    def __init__(self) -> None:
        self.ctx = zmq.asyncio.Context()
        if _io_thread_scheduling is not None:  # before the first socket starts the I/O thread
            self.ctx.set(zmq.THREAD_SCHED_POLICY, _io_thread_scheduling[0])
            self.ctx.set(zmq.THREAD_PRIORITY, _io_thread_scheduling[1])
        self.auth: AsyncioAuthenticator | None = None
        self._watchers: list[asyncio.Task[None]] = []

    def watch(self, sock: zmq.asyncio.Socket, role: str, endpoint: str,
              on_event: Callable[[int], None] | None = None) -> None:
        """Counts and logs ``sock``'s failed CURVE handshakes (``role`` "server" or "client")
        in a task on the running loop, and with ``on_event`` also reports its connection
        events (connected, retried, handshake succeeded, disconnected) to it; without a
        running loop it does nothing. A socket has one monitor: watch it once."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        monitor = sock.get_monitor_socket(_MONITORED | (_CONNECTION_EVENTS if on_event is not None else 0))
        monitor.linger = 0
        self._watchers.append(loop.create_task(_watch(monitor, role, endpoint, on_event),
                                               name=f"zmq-monitor {endpoint}"))

    def secure_client(self, sock: zmq.asyncio.Socket, keys: CurveClientKeys | None, endpoint: str,
                      on_event: Callable[[int], None] | None = None) -> None:
        """Applies ``keys`` (if any) to a connecting socket and watches its handshakes (and,
        with ``on_event``, its connection events, keyed or not)."""
        announce_security(keys is not None, f"client of {endpoint}" if keys is None else
                          f"client of {endpoint}, server key pinned: {_public_key(keys.server_public_key_file)} "
                          f"from {keys.server_public_key_file}")
        if keys is not None:
            apply_client_keys(sock, keys)
        if keys is not None or on_event is not None:
            self.watch(sock, "client", endpoint, on_event)

    def socket(self, kind: int, *, limits: Limits | None = None) -> zmq.asyncio.Socket:
        sock = self.ctx.socket(kind)
        sock.linger = 0
        if limits is not None:
            # libzmq drops a peer that sends a bigger frame before we ever see it.
            sock.setsockopt(zmq.MAXMSGSIZE, limits.max_frame_bytes)
        return sock

    def bind(self, sock: zmq.asyncio.Socket, endpoint: str, keys: CurveServerKeys | None) -> str:
        announce_security(keys is not None, f"server at {endpoint}" if keys is None else
                          f"server key {_public_key(keys.secret_key_file)} from {keys.secret_key_file}, "
                          f"allowed clients in {keys.allowed_clients_dir}")
        if keys is not None:
            if self.auth is None:
                self.auth = _Authenticator(self.ctx)
                self.auth.start()
                self.auth.configure_curve(domain="*", location=str(keys.allowed_clients_dir))
            apply_server_keys(sock, keys)
        elif not _is_loopback(endpoint):
            logger.warning("SECURITY: binding %s WITHOUT CURVE keys: anyone who can reach this address "
                           "can talk to this socket; run `resetfree-keys generate` and configure keys", endpoint)
        sock.bind(endpoint)
        bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        if keys is not None:
            self.watch(sock, "server", bound)
        return bound

    def close(self) -> None:
        for task in self._watchers:
            task.cancel()
        self._watchers.clear()
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
