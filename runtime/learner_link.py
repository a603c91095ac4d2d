"""The runtime's side of the learner connection, as the daemon's coroutines run it.

:class:`LearnerLink` owns the uplink client and the weights subscribers: the first hello
(retried until a learner answers), the sender (outbox → uplink in seq order, only what is on
disk, each batch as the spill record it was written as), the inbox (acks →
``Outbox.on_ack``, a reconnect's welcome → ``Outbox.rewind``, learner commands, refused
batches → quarantine), the weights subscriber (→ ``PolicySlot.offer``, resubscribing when a
welcome names a new endpoint), and lock-step's wait for the learner's ``trained_through``.
Everything runs on the daemon's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from protocol.errors import HandshakeError, PeerTimeout
from protocol.keys import client_keys
from protocol.messages import Ack, Command, Hello, LoopStats, Status, Welcome
from protocol.transport import (
    BATCH_REFUSED, ConnectionState, HandshakeRefused, UplinkClient, UplinkClientConfig, WeightsSubscriber,
    WeightsSubscriberConfig, weights_limits,
)
from runtime.config import LinkConfig
from runtime.errors import RuntimeFault
from runtime.outbox import Outbox
from runtime.policy_slot import PolicySlot
from runtime.quarantine import Quarantine

logger = logging.getLogger(__name__)

_LOCKSTEP_LOG_S = 10.0
"""Lock-step: seconds between "still waiting for the learner" lines while the learner is behind."""


class LearnerRefused(RuntimeFault):
    """The learner answered the hello with ``accepted=False``; the message holds its reason."""


_WILDCARD_HOSTS = ("0.0.0.0", "*", "::", "[::]")

_WELCOME_PATIENCE_S = 30.0
"""How long a missing welcome is routine (INFO) before it becomes a WARNING: a learner
started at the same time loads its demos and builds its networks first."""


def reachable_endpoint(advertised: str, learner: str) -> str:
    """Returns the weights endpoint to connect to: the learner's advertised one, with a
    wildcard bind address (``tcp://0.0.0.0:5556``) replaced by the host this runtime reaches
    the learner at (from ``--learner``), which is the host a remote robot PC can route to."""
    scheme, _, rest = advertised.partition("://")
    host, sep, port = rest.rpartition(":")
    if scheme != "tcp" or not sep or host not in _WILDCARD_HOSTS:
        return advertised
    learner_host = learner.partition("://")[2].rpartition(":")[0]
    return f"tcp://{learner_host}:{port}" if learner_host else advertised


class LearnerLink:
    """See the module docstring. Built once the outbox is open; :meth:`connect` first."""

    def __init__(self, config: LinkConfig, outbox: Outbox, quarantine: Quarantine, *,
                 hello: Callable[[], Hello], stats: Callable[[], LoopStats | None]) -> None:
        self.config, self.outbox, self.quarantine = config, outbox, quarantine
        keys = client_keys(config.keys_dir) if config.keys_dir else None
        self.client = UplinkClient(UplinkClientConfig(endpoint=config.learner, hello_timeout_s=config.hello_timeout_s,
                                                      peer_timeout_s=config.peer_timeout_s, keys=keys),
                                   hello, stats=stats, on_state=self._on_state)
        self.welcome: Welcome | None = None
        self.trained_through = 0
        """The learner's newest ``Ack.trained_through`` (from the welcome's ``resume_seq`` on)."""
        self.weights_endpoint = ""
        self.weights_active_at: dict[str, float] = {}
        """Agent → ``time.time()`` when its newest weights became active (for benchmarks)."""
        self.subscribers: list[WeightsSubscriber] = []
        """Every weights subscriber of this run (one per learner endpoint), for their counts."""
        self._progress = asyncio.Event()
        self._swapping = False
        self._endpoint_changed = asyncio.Event()

    def _on_state(self, state: ConnectionState) -> None:
        # a disconnect drops the outbox's memory copies at once (they are on disk)
        self.outbox.set_connected(state == ConnectionState.CONNECTED)

    @property
    def connected(self) -> bool:
        """Whether the uplink is connected now."""
        return self.client.state == ConnectionState.CONNECTED

    async def connect(self) -> Welcome:
        """Says hello until the learner answers; returns its welcome. Raises LearnerRefused on a refusal."""
        started = time.monotonic()
        while True:
            try:
                welcome = await self.client.connect()  # bounded by hello_timeout_s
            except HandshakeRefused as e:
                raise LearnerRefused(f"learner at {self.config.learner} refused this runtime: {e}") from e
            except (PeerTimeout, HandshakeError) as e:
                # a learner started at the same time takes a while: a person need act only later
                waited = time.monotonic() - started
                level = logging.INFO if waited < _WELCOME_PATIENCE_S else logging.WARNING
                logger.log(level, "runtime: no welcome yet after %.0f s (%s); retrying in %.1f s", waited, e,
                           self.config.connect_retry_s)
                await asyncio.sleep(self.config.connect_retry_s)
                continue
            logger.info("runtime: welcomed by %s (session %s, resume at seq %d, weights at %s)",
                        self.config.learner, welcome.session_id, welcome.resume_seq, welcome.weights_endpoint)
            self.welcome = welcome
            self.weights_endpoint = reachable_endpoint(welcome.weights_endpoint, self.config.learner)
            self.trained_through = welcome.resume_seq
            return welcome

    async def run_uplink(self) -> None:
        """Runs the uplink client (heartbeats, reconnects). Raises LearnerRefused on a refused re-hello."""
        try:
            await self.client.run()
        except HandshakeRefused as e:
            raise LearnerRefused(f"learner at {self.config.learner} refused this runtime: {e}") from e

    async def await_learner(self, target: int) -> None:
        """Lock-step: returns once the learner has trained through ``target`` and no weights
        blob is being verified."""
        log_at = time.monotonic() + _LOCKSTEP_LOG_S
        while self.trained_through < target or self._swapping:
            self._progress.clear()
            try:  # woken by progress; the deadline is only the next "still waiting" line
                async with asyncio.timeout(max(0.0, log_at - time.monotonic())):
                    await self._progress.wait()
            except TimeoutError:
                logger.info("runtime: lock-step: waiting for the learner (trained through %d, need %d)",
                            self.trained_through, target)
                log_at = time.monotonic() + _LOCKSTEP_LOG_S

    async def send_loop(self) -> None:
        """Sends written batches in seq order, each as the frame the writer thread encoded (no
        encoding on the loop); a rewind makes a batch in hand stale. Runs until cancelled: it
        waits on the outbox for a batch and on the client for a connection."""
        lost = self.outbox.lost_steps
        while True:
            out = await self.outbox.next_batch()
            if self.outbox.lost_steps != lost:
                # The learner waits for the skipped seqs and would never see them; when they
                # are the oldest unacked, a fresh hello declares them (docs/protocol.md).
                lost = self.outbox.lost_steps
                if self.outbox.head_lost:
                    self.client.reconnect()
            while out.generation == self.outbox.generation and not self.client.send_encoded(out.frames):
                if not self.connected:
                    await self.client.connected.wait()  # the reconnect's welcome rewinds (a new generation)
                else:
                    await self.client.writable()  # at the socket's high-water mark: room comes as it drains

    async def inbox_loop(self, on_command: Callable[[Command], Awaitable[Status]]) -> None:
        """Handles what the learner sends: acks, a reconnect's welcome, commands (answered with
        ``on_command``'s status), refused batches."""
        while True:
            msg = await self.client.recv()
            if isinstance(msg, Ack):
                self.outbox.on_ack(msg.seq)
                if self.outbox.head_lost:
                    self.client.reconnect()  # the new hello's oldest_seq declares the hole
                self.trained_through = max(self.trained_through, msg.trained_through)
                self._progress.set()
            elif isinstance(msg, Welcome):
                logger.info("runtime: reconnected; learner resumes at seq %d", msg.resume_seq)
                self.welcome = msg
                self.outbox.rewind(msg.resume_seq)
                endpoint = reachable_endpoint(msg.weights_endpoint, self.config.learner)
                if endpoint != self.weights_endpoint:
                    self.weights_endpoint = endpoint
                    self._endpoint_changed.set()  # the weights loop resubscribes
            elif isinstance(msg, Command):
                self.client.send(await on_command(msg))
            elif isinstance(msg, Status) and msg.state == BATCH_REFUSED:
                # before the ack that follows it releases the steps (docs/protocol.md, "Refused batches")
                await self.quarantine.take(self.outbox, msg)

    async def weights_loop(self, policy: PolicySlot) -> None:
        """Receives weights (reconnecting when a welcome names a new endpoint) and offers them to ``policy``."""
        keys = client_keys(self.config.keys_dir) if self.config.keys_dir else None
        while True:
            endpoint = self.weights_endpoint
            # sized for this policy's blob: the defaults stop at 32 MiB frames, and libzmq drops
            # a bigger one silently (the robot profile's pixel policy is 82 MiB)
            subscriber = WeightsSubscriber(WeightsSubscriberConfig(endpoint=endpoint, keys=keys,
                                                                   limits=weights_limits(policy.layout)))
            self.subscribers.append(subscriber)  # its counts stay in the status after it closes
            subscriber.connect()
            try:
                while endpoint == self.weights_endpoint:
                    weights = await self._next_weights(subscriber)
                    if weights is None:
                        continue  # the endpoint changed: resubscribe
                    self._swapping = True
                    try:
                        result = await policy.offer(weights)
                    finally:
                        self._swapping = False
                        self._progress.set()
                    if result.accepted:
                        self.weights_active_at[weights.agent] = time.time()
                    else:  # a refused blob must not make the learner's next good one look stale
                        subscriber.refused(weights)
            finally:
                subscriber.close()

    async def _next_weights(self, subscriber: WeightsSubscriber) -> Any:
        """Returns the next weights from ``subscriber``, or None as soon as a welcome names
        another weights endpoint."""
        self._endpoint_changed.clear()
        recv = asyncio.ensure_future(subscriber.recv())
        changed = asyncio.ensure_future(self._endpoint_changed.wait())
        try:
            await asyncio.wait({recv, changed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            if not recv.done():
                recv.cancel()
        return None if recv.cancelled() or not recv.done() else recv.result()

    async def drain_acks(self) -> None:
        """Waits (up to ``ack_wait_s``) until every written step is acked; logs what is left."""
        try:
            async with asyncio.timeout(self.config.ack_wait_s):
                await self.outbox.wait_all_acked()
            logger.info("runtime: %d steps done, all acked", self.outbox.next_seq)
        except TimeoutError:
            logger.warning("runtime: %d steps not acked within %.1f s; they stay in the spill log",
                           self.outbox.next_seq - self.outbox.acked_seq, self.config.ack_wait_s)

    def weights_figures(self) -> dict[str, int]:
        """The weights subscribers' counts over the run (``WeightsSubscriber.FIGURES``)."""
        return {k: sum(s.figures()[k] for s in self.subscribers) for k in WeightsSubscriber.FIGURES}

    def status_detail(self) -> dict[str, Any]:
        """The link's part of the runtime's status."""
        return dict(trained_through=self.trained_through, connected=self.connected,
                    weights_connection=self.subscribers[-1].connection if self.subscribers else "not connected",
                    weights_endpoint=self.weights_endpoint)

    def close(self) -> None:
        """Closes the uplink (the subscribers close with their loop)."""
        self.client.close()
