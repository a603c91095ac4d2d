"""The learner's end of the uplink: it answers runtimes with what :mod:`learner.admission`
decides.

Event loop only. Each message a runtime sends is handled in turn: ``hello`` → a welcome, or a
refusing welcome naming the reason; ``transitions`` → the admission's verdict → a batch
refusal and/or the session's ack; heartbeats are the transport's. A session whose frames do
not decode against its declared spaces gets a refusing ``welcome`` naming the error and is
dropped; other sessions are unaffected. One peer's message never ends the service: a handler
that raises is logged and counted. Acks carry ``trained_through``, which the training thread
reports (through the loop's ``call_soon_threadsafe``), and are re-sent every second.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from learner.admission import Admission
from learner.config import LearnerConfig
from protocol.keys import CurveServerKeys
from protocol.messages import Ack, Heartbeat, Hello, TransitionBatch, Welcome
from protocol.transport import UplinkServer, UplinkServerConfig
from protocol.transport.common import worth_logging

logger = logging.getLogger(__name__)


class _Server(UplinkServer):
    """UplinkServer that reports which peer sent a frame that failed to decode."""

    def __init__(self, config: UplinkServerConfig, on_bad_peer: Callable[[bytes, str], None]) -> None:
        super().__init__(config)
        self._on_bad_peer = on_bad_peer

    def _malformed(self, peer: bytes, why: str) -> None:
        super()._malformed(peer, why)
        if peer in self.peers():
            self._on_bad_peer(peer, why)


class LearnerUplink:
    """Serves the uplink for an :class:`~learner.admission.Admission` (event loop).

    Run ``server.run()``, :meth:`serve` and :meth:`refresh_acks` as tasks once ``server`` is
    started and :attr:`weights_endpoint` is set."""

    def __init__(self, cfg: LearnerConfig, admission: Admission, *, keys: CurveServerKeys | None = None) -> None:
        self.cfg, self.admission = cfg, admission
        self.server = _Server(UplinkServerConfig(endpoint=cfg.service.uplink, keys=keys), self._drop_bad_peer)
        self.weights_endpoint = ""
        """The weights PUB endpoint a welcome names (set by the service once it is bound)."""
        self.refused_sessions = 0
        self.handler_errors = 0
        """Uplink messages whose handling raised (logged; the service keeps serving)."""
        self.rejected_batches = 0
        """Sessions dropped for frames that did not decode against their spaces."""
        self.uplink_accepted = 0
        """Uplink messages handled without a rejection (``uplink_received`` minus every rejection)."""
        self._peer_of: dict[str, bytes] = {}
        self._trained: dict[str, int] = {}

    async def serve(self) -> None:
        """Handles every message the server delivers, in order, until cancelled."""
        while True:
            peer, msg, frame = await self.server.recv_framed()
            before = self._rejections()
            try:
                await self._on_message(peer, msg, frame)
            except Exception as e:  # noqa: BLE001 — one peer's message must never end the service
                self.handler_errors += 1
                if worth_logging(self.handler_errors):
                    logger.exception("uplink: handling %s from peer %s failed (%d so far); still serving: %s",
                                     msg.TYPE, peer.hex(), self.handler_errors, e)
            # every delivered message is accepted or rejected (the transport counts the rest)
            self.uplink_accepted += self._rejections() == before

    async def refresh_acks(self) -> None:
        """Re-sends every session's latest ack once a second. Acks are cumulative and
        idempotent, so a lost one (a ROUTER drops what it cannot queue) costs at most a
        second instead of stalling a lock-step runtime that waits for ``trained_through``."""
        while True:
            await asyncio.sleep(1.0)
            peers = self.server.peers()
            for sid, peer in list(self._peer_of.items()):
                if peer in peers:
                    self._ack(peer, sid)

    def on_trained(self, changed: dict[str, int]) -> None:
        """Records the sessions' new ``trained_through`` and acks their peers at once."""
        self._trained.update(changed)
        peers = self.server.peers()
        for sid in changed:
            peer = self._peer_of.get(sid)
            if peer is not None and peer in peers:
                self._ack(peer, sid)

    def _rejections(self) -> tuple[int, ...]:
        """The counters a rejected uplink message moves (refused, malformed, gap, failed, raised)."""
        a = self.admission
        return (self.refused_sessions, a.refused_batches, self.handler_errors, a.gaps, a.journal_errors,
                self.server.malformed_count)

    async def _on_message(self, peer: bytes, msg: Any, frame: memoryview | None = None) -> None:
        if isinstance(msg, Hello):
            self._on_hello(peer, msg)
        elif isinstance(msg, TransitionBatch):
            await self._on_batch(peer, msg, frame)
        elif not isinstance(msg, Heartbeat):
            # Out of protocol on the uplink (docs/protocol.md): counted like any malformed frame.
            self.server.malformed_count += 1
            logger.warning("uplink: unexpected %s from session %s ignored", msg.TYPE, self.server.session_of(peer))

    def _on_hello(self, peer: bytes, hello: Hello) -> None:
        resume, reason = self.admission.open_session(hello)
        if reason:
            self._refuse(peer, hello.session_id, reason)
            return
        self._peer_of[hello.session_id] = peer
        self.server.send(peer, Welcome(session_id=hello.session_id, accepted=True, reason="", resume_seq=resume,
                                       net_config=self.cfg.network.to_dict(), weights_endpoint=self.weights_endpoint))
        logger.info("session %s (%s/%s) accepted, resume from seq %d", hello.session_id, hello.robot, hello.task,
                    resume)

    def _refuse(self, peer: bytes, session_id: str, reason: str) -> None:
        self.refused_sessions += 1
        logger.warning("session %s refused: %s", session_id, reason)
        self.server.send(peer, Welcome(session_id=session_id, accepted=False, reason=reason[:1024],
                                       resume_seq=self.admission.tracker.committed(session_id), net_config={},
                                       weights_endpoint=""))
        self.server.drop_peer(peer)

    def _drop_bad_peer(self, peer: bytes, why: str) -> None:
        session = self.server.session_of(peer) or "?"
        self.rejected_batches += 1
        self._refuse(peer, session, f"dropped: {why}")

    async def _on_batch(self, peer: bytes, batch: TransitionBatch, frame: memoryview | None) -> None:
        verdict = await self.admission.admit(batch, frame=frame)
        if verdict.refusal is not None:
            self.server.send(peer, verdict.refusal)
        if verdict.ack:
            self._ack(peer, batch.session_id)

    def _ack(self, peer: bytes, sid: str) -> None:
        if not self.server.send(peer, Ack(session_id=sid, seq=self.admission.tracker.committed(sid),
                                          trained_through=self._trained.get(sid, 0))):
            logger.debug("session %s: ack not queued (peer gone or at its HWM); the refresher retries", sid)
