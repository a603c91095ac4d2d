"""Shared pieces of the transport: a context with its sockets and optional CURVE
authenticator (:class:`_Sockets`), the non-blocking zero-copy send, the loopback check that
decides whether a plaintext bind earns a SECURITY warning, config validation and the rate
limit for per-frame warnings."""

from __future__ import annotations

import logging
from typing import Sequence
from urllib.parse import urlsplit

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from protocol.codec import Limits
from protocol.errors import TransportClosed
from protocol.keys import CurveServerKeys, apply_server_keys

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


class _Sockets:
    """One context plus the optional ZAP authenticator; owns their shutdown."""

    def __init__(self) -> None:
        self.ctx = zmq.asyncio.Context()
        if _io_thread_scheduling is not None:  # before the first socket starts the I/O thread
            self.ctx.set(zmq.THREAD_SCHED_POLICY, _io_thread_scheduling[0])
            self.ctx.set(zmq.THREAD_PRIORITY, _io_thread_scheduling[1])
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
