"""A TCP partition proxy for the fault drill (``resetfree-bench faults``).

:class:`PartitionProxy` forwards TCP byte streams (ZeroMQ's ZMTP passes through unchanged)
from a local port to a target. ``partition()`` aborts every live connection and refuses new
ones (accepted and reset at once, so the port stays ours) until ``heal()``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProxyConfig:
    """One forwarded TCP port."""

    target_host: str
    """Host the proxy connects to."""
    target_port: int
    """Port the proxy connects to."""
    listen_host: str = "127.0.0.1"
    """Address the proxy listens on."""
    listen_port: int = 0
    """Port the proxy listens on (0: a free port; see ``start()``)."""
    connect_timeout_s: float = 2.0
    """Deadline for connecting to the target; past it the client connection is reset."""
    idle_timeout_s: float = 60.0
    """A direction silent this long is closed (ZeroMQ heartbeats every second)."""

    def __post_init__(self) -> None:
        for name in ("target_port", "listen_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"ProxyConfig.{name} must be a TCP port, got {getattr(self, name)!r}")
        for name in ("connect_timeout_s", "idle_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ProxyConfig.{name} must be > 0, got {getattr(self, name)!r}")


class PartitionProxy:
    """A TCP forwarder that can cut every connection through it. Runs on the caller's loop.

    ``start()``, then ``partition()`` / ``heal()`` at will, ``close()`` at the end.
    """

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.partitioned = False
        """Whether connections are being refused."""
        self.connections = 0
        """Connections forwarded since start."""
        self.refused = 0
        """Connections reset because of a partition or an unreachable target."""
        self.bytes_forwarded = 0
        """Bytes forwarded in both directions."""

    async def start(self) -> int:
        """Starts listening; returns the bound port. Does not block."""
        self._server = await asyncio.start_server(self._handle, self.config.listen_host, self.config.listen_port)
        port = int(self._server.sockets[0].getsockname()[1])
        logger.info("proxy %s:%d -> %s:%d", self.config.listen_host, port, self.config.target_host,
                    self.config.target_port)
        return port

    def partition(self) -> int:
        """Aborts every live connection and refuses new ones; returns how many were cut."""
        self.partitioned = True
        cut = len(self._links)
        for client, upstream in list(self._links):
            client.transport.abort()
            upstream.transport.abort()
        logger.warning("proxy :%s partitioned: %d connections cut", self.config.target_port, cut)
        return cut

    def heal(self) -> None:
        """Accepts and forwards connections again."""
        self.partitioned = False
        logger.warning("proxy :%s healed", self.config.target_port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            if self.partitioned:
                self.refused += 1
                writer.transport.abort()
                return
            try:
                async with asyncio.timeout(self.config.connect_timeout_s):
                    up_reader, up_writer = await asyncio.open_connection(self.config.target_host,
                                                                         self.config.target_port)
            except (OSError, TimeoutError) as e:
                self.refused += 1
                logger.debug("proxy: target :%d unreachable: %s", self.config.target_port, e)
                writer.transport.abort()
                return
            await self._forward(reader, writer, up_reader, up_writer)
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
        link = (writer, up_writer)
        self._links.add(link)
        self.connections += 1
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pump(reader, up_writer, writer))
                group.create_task(self._pump(up_reader, writer, up_writer))
        except* (OSError, TimeoutError) as eg:
            logger.debug("proxy link closed: %s", eg.exceptions[0])
        finally:
            self._links.discard(link)
            writer.transport.abort()
            up_writer.transport.abort()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    other: asyncio.StreamWriter) -> None:
        """Copies ``src`` to ``dst`` until EOF, then aborts both sides of the link."""
        while True:
            async with asyncio.timeout(self.config.idle_timeout_s):
                data = await src.read(1 << 16)
            if not data or self.partitioned:
                break
            dst.write(data)
            self.bytes_forwarded += len(data)
            async with asyncio.timeout(self.config.idle_timeout_s):
                await dst.drain()
        # One side closed: ZeroMQ must see the whole connection go so it reconnects.
        dst.transport.abort()
        other.transport.abort()

    async def close(self) -> None:
        """Stops listening and aborts every connection; waits (bounded) for the handlers."""
        if self._server is not None:
            self._server.close()
        for client, upstream in list(self._links):
            client.transport.abort()
            upstream.transport.abort()
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        if self._server is not None:
            async with asyncio.timeout(2.0):
                await self._server.wait_closed()
            self._server = None
