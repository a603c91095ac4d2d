"""The hostile peers' sockets of ``resetfree-bench hostile`` (:mod:`simulation.drills.bench_hostile`):
:class:`HostileSenders` puts the :class:`simulation.drills.hostile_peers.HostileGenerator`'s
messages on the learner's uplink (strangers and sessions that said hello), on both control
sockets, and on the runtime's weights channel (through the bench's fake learner), counting each
message sent into its channel's :class:`simulation.drills.hostile_report.Channel`."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import zmq
import zmq.asyncio

from protocol.codec import encode
from protocol.messages import Heartbeat
from simulation.drills.hostile_peers import FakeLearner, HostileGenerator
from simulation.drills.hostile_report import Channel

logger = logging.getLogger(__name__)


class HostileSenders:
    """Sends the hostile traffic of one run; every socket it opens stays open until the
    bench destroys ``ctx``, so what it counts as sent is delivered."""

    def __init__(self, ctx: zmq.asyncio.Context, gen: HostileGenerator, fake: FakeLearner,
                 channels: dict[str, Channel]) -> None:
        self.ctx, self.gen, self.fake = ctx, gen, fake
        self.channels = channels
        """The run's channels by name (filled before the first send)."""
        self.good: dict[str, np.ndarray] = {}
        """The valid actor weights the hostile blobs are made from and published between."""
        self.weights_version = 1
        self._kept: list[zmq.asyncio.Socket] = []

    async def _dealer(self, endpoint: str) -> zmq.asyncio.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(endpoint)
        return sock

    def keep(self, socks: list[zmq.asyncio.Socket]) -> None:
        """Keeps a hostile socket open until the end: a closed socket drops what it still
        queues (the receiver reads at its own pace), and "sent" must mean delivered."""
        self._kept.extend(socks)

    def _count(self, channel: str, kind: str) -> None:
        c = self.channels[channel]
        c.hostile += 1
        c.by_kind[kind] = c.by_kind.get(kind, 0) + 1

    async def learner_uplink(self, endpoint: str, count: int) -> None:
        """Half from strangers, half from session peers, on the learner's uplink at once."""
        await asyncio.gather(self._strangers(endpoint, count - count // 2), self._sessions(endpoint, count // 2))

    async def _strangers(self, endpoint: str, count: int) -> None:
        socks = [await self._dealer(endpoint) for _ in range(4)]
        try:
            for i in range(count):
                kind, frames = self.gen.stranger(i)
                await socks[i % len(socks)].send_multipart(frames)
                self._count("learner_uplink", kind)
                if i % 256 == 0:
                    await asyncio.sleep(0)
            await asyncio.sleep(0.5)  # let ZeroMQ push everything out before the sockets close
        finally:
            self.keep(socks)

    async def _sessions(self, endpoint: str, count: int, per_peer: int = 500) -> None:
        """Peers that say hello (accepted), then send batches whose values may not be trained
        on at the right seqs (refused, acked past) and a heartbeat every tenth (accepted)."""
        sent = 0
        while sent < count:
            sock = await self._dealer(endpoint)
            try:
                sid = self.gen.fresh_session("s")
                await sock.send_multipart(encode(self.gen.hello_for(sid, 0, 0)))
                self._count("learner_uplink", "session_hello")
                sent += 1
                seq = 0
                for j in range(min(per_peer, count - sent)):
                    if j % 10 == 9:
                        kind, frames = "session_heartbeat", encode(
                            Heartbeat(session_id=sid, role="runtime", sent_at=time.time(), stats=None))
                    else:
                        kind, frames = self.gen.poisoned(sid, seq, j)
                        seq += 4
                    await sock.send_multipart(frames)
                    self._count("learner_uplink", kind)
                    sent += 1
                    if j % 128 == 0:
                        await asyncio.sleep(0)
                await asyncio.sleep(0.2)
            finally:
                self.keep([sock])

    async def control(self, channel: str, endpoint: str, count: int) -> None:
        """Malformed and hostile commands (and valid ``status`` requests) on a control socket."""
        socks = [await self._dealer(endpoint) for _ in range(2)]
        try:
            for i in range(count):
                kind, frames = self.gen.control(i)
                await socks[i % 2].send_multipart(frames)
                self._count(channel, kind)
                if i % 256 == 0:
                    await asyncio.sleep(0)
            await asyncio.sleep(0.5)
        finally:
            self.keep(socks)

    async def runtime_weights(self, count: int) -> None:
        """Hostile blobs between good ones (:attr:`good`) on the weights channel, as the
        runtime's learner (a new version every fiftieth)."""
        version = self.weights_version
        for i in range(count):
            if i % 50 == 49:
                version += 1
            kind, frames = self.gen.weights(i, self.good, version)
            await self.fake.publish(frames)
            self._count("runtime_weights", kind)
            if i % 64 == 0:
                await asyncio.sleep(0.001)  # the runtime reads at its pace; the PUB queue holds the rest
        self.weights_version = version
