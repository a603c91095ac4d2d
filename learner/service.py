"""The learner service: one asyncio process serving runtimes while one thread trains.

Event loop (one ``TaskGroup``): the uplink (hello → spaces and settings checked against the
demos and the config → welcome; transitions → admit → journal append in a thread → commit
→ hand to training → ack), heartbeats, the control server (status, pause/resume) and the
weights publisher. A session whose frames do not decode against its declared spaces gets a
refusing ``welcome`` naming the error and is dropped; other sessions are unaffected.

The training thread (:class:`~learner.training_worker.TrainingWorker`) owns the
:class:`MedalTrainer`, so the event loop never waits on torch: it runs the updates owed,
publishes finite actor copies (below) and checkpoints.

Publication and the seed phase (docs/architecture.md, "The seed phase"): the seed phase is
the first ``schedule.seed_frames`` steps the trainer ingests, and during it nothing is
published — a runtime acts uniformly at random until it holds weights for the acting agent,
so withholding them is what makes every seed-phase action random. The first iteration after
the seed phase (after the update it owes, if any) publishes both agents' weights; from then
on each agent's are published every ``publish_every`` of its updates. A learner resumed past
its seed phase publishes at once.

Exactly-once across crashes: a batch is acked only after its journal record is durable;
checkpoints store the journal position the trainer consumed and the matching
ReceiveTracker state; a resumed learner replays the journal after that position (and
rebuilds replay from older records when the checkpoint holds none) without counting twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from learner import checkpoint
from learner.config import LearnerConfig
from learner.demo_dir import DemoSet, describe_space
from learner.errors import ServiceError
from learner.journal import IngestJournal, JournalConfig, JournalError
from learner.metrics import Metrics
from learner.placement import pin_process, resolve_device
from learner.trainer import MedalTrainer
from learner.training_worker import TrainingWorker, WorkItem
from protocol.atomic import write_json_atomic
from protocol.errors import ProtocolError, SequenceGap
from protocol.keys import CurveServerKeys
from protocol.messages import (Ack, Command, Heartbeat, Hello, Status, TransitionBatch, Weights, Welcome,
                               batch_value_error)
from protocol.reliability import ReceiveTracker
from protocol.transport import (ControlServer, ControlServerConfig, UplinkServer, UplinkServerConfig,
                                WeightsPublisher, WeightsPublisherConfig, batch_refusal)
from protocol.transport.common import handshake_figures, worth_logging

logger = logging.getLogger(__name__)

MODES = ("realtime", "lockstep")


# ============================================================================ uplink with drop hook

class _Uplink(UplinkServer):
    """UplinkServer that reports which peer sent a frame that failed to decode."""

    def __init__(self, config: UplinkServerConfig, on_bad_peer: Callable[[bytes, str], None]) -> None:
        super().__init__(config)
        self._on_bad_peer = on_bad_peer

    def _malformed(self, peer: bytes, why: str) -> None:
        super()._malformed(peer, why)
        if peer in self.peers():
            self._on_bad_peer(peer, why)


# ============================================================================ the service

class LearnerService:
    """The learner process's event-loop side. ``await run()``; ``request_stop()`` ends it."""

    def __init__(self, cfg: LearnerConfig, demos: DemoSet, *, run_dir: Path, resume: bool = False,
                 keys: CurveServerKeys | None = None) -> None:
        self.cfg, self.demos, self.run_dir, self.resume, self.keys = cfg, demos, Path(run_dir), resume, keys
        self.endpoints: dict[str, str] = {}
        """Bound endpoints (``uplink``, ``weights``, ``control``) once started."""
        self.started = asyncio.Event()
        """Set once every socket is bound and the training thread runs."""
        self.tracker = ReceiveTracker()
        self.position = 0
        self.duplicates_dropped = 0
        self.lost_steps = 0
        """Steps a runtime declared lost by the gap rule (docs/protocol.md)."""
        self.rejected_batches = 0
        """Sessions dropped for frames that did not decode against their spaces."""
        self.refused_sessions = 0
        self.handler_errors = 0
        """Uplink messages whose handling raised (logged; the service keeps serving)."""
        self.refused_batches = 0
        """Batches refused at ingest for their values (non-finite, actions outside [-1, 1])."""
        self.refused_steps = 0
        """Steps in those batches (skipped: never journaled, never trained on)."""
        self.journal_refused_steps = 0
        """Steps of journal records skipped at start-up for their values (journals written
        before ingest checked them: non-finite, actions outside [-1, 1])."""
        self.gaps = 0
        """Batches dropped as starting beyond the next expected seq (the runtime resends)."""
        self.journal_errors = 0
        """Batches not acked because the journal append failed."""
        self.uplink_accepted = 0
        """Uplink messages handled without a rejection (``uplink_received`` minus every rejection)."""
        self.worker: TrainingWorker | None = None
        self._journal: IngestJournal | None = None
        self._streams: dict[str, int] = {}
        """Session -> replay stream (steps of one stream link into transitions)."""
        self._peer_of: dict[str, bytes] = {}
        self._trained: dict[str, int] = {}
        self._stop = asyncio.Event()
        self._worker_ended = asyncio.Event()
        self._closed = False
        self.published: deque[tuple[str, int]] = deque(maxlen=64)
        """(agent, version) of the latest publications."""
        self._ingest_times: deque[tuple[float, int]] = deque(maxlen=256)
        self._uplink = _Uplink(UplinkServerConfig(endpoint=cfg.service.uplink, keys=keys), self._drop_bad_peer)
        self._weights = WeightsPublisher(WeightsPublisherConfig(endpoint=cfg.service.weights, keys=keys))
        self._control = ControlServer(ControlServerConfig(endpoint=cfg.service.control, role="learner", keys=keys),
                                      self._on_command)

    def request_stop(self) -> None:
        """Asks ``run()`` to checkpoint and return. Call on the loop's thread (signal handler)."""
        self._stop.set()

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Prepares (restores and replays the journal when resuming), binds, serves until
        ``request_stop()`` or cancellation, then stops training, checkpoints and closes.

        Raises ServiceError on a fault of the training thread, the journal or the demos.
        """
        loop = asyncio.get_running_loop()
        metrics = Metrics(self.run_dir / "tb", progress_every_s=self.cfg.service.progress_every_s)
        try:
            self.worker = await asyncio.to_thread(self._prepare, loop, metrics)
            self.endpoints = {"uplink": await self._uplink.start(), "weights": await self._weights.start(),
                              "control": await self._control.start()}
            await asyncio.to_thread(self._write_run_files)
            self.worker.start()
            self.started.set()
            logger.info("learner serving: %s (mode %s, run dir %s)", self.endpoints, self.cfg.service.mode,
                        self.run_dir)
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._uplink.run())
                    tg.create_task(self._serve_uplink())
                    tg.create_task(self._control.run())
                    tg.create_task(self._weights.run())
                    tg.create_task(self._watch())
                    tg.create_task(self._refresh_acks())
            except* _Stop:
                pass
        finally:
            await self._shutdown(metrics)

    async def _refresh_acks(self) -> None:
        """Re-sends every session's latest ack once a second. Acks are cumulative and
        idempotent, so a lost one (a ROUTER drops what it cannot queue) costs at most a
        second instead of stalling a lock-step runtime that waits for ``trained_through``."""
        while True:
            await asyncio.sleep(1.0)
            peers = self._uplink.peers()
            for sid, peer in list(self._peer_of.items()):
                if peer in peers:
                    self._ack(peer, sid)

    async def _watch(self) -> None:
        """Returns when a stop is requested or the training thread ended; cancels the group."""
        stop, ended = asyncio.ensure_future(self._stop.wait()), asyncio.ensure_future(self._worker_ended.wait())
        try:
            await asyncio.wait({stop, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            ended.cancel()
        if not self._stop.is_set():
            raise ServiceError("training thread stopped") from (self.worker.error if self.worker else None)
        logger.info("learner: stop requested; checkpointing")
        raise _Stop

    async def _shutdown(self, metrics: Metrics) -> None:
        try:
            if self.worker is not None:
                await asyncio.to_thread(self.worker.stop)
        finally:
            self._closed = True
            self._uplink.close()
            self._weights.close()
            self._control.close()
            if self._journal is not None:
                await asyncio.to_thread(self._journal.close)
            metrics.close()
        if self.worker is not None and self.worker.error is not None:
            raise ServiceError(f"training failed: {self.worker.error}") from self.worker.error

    def _write_run_files(self) -> None:
        write_json_atomic(self.run_dir / "endpoints.json", self.endpoints)
        write_json_atomic(self.run_dir / "config.json", {"config": self.cfg.to_dict(),
                                                          "config_hash": self.cfg.config_hash()})

    # ------------------------------------------------------------------ preparation (thread)
    def _prepare(self, loop: asyncio.AbstractEventLoop, metrics: Metrics) -> TrainingWorker:
        cfg = self.cfg
        pin_process(cfg.service.cpus)
        torch.set_num_threads(cfg.service.torch_threads)
        trainer = MedalTrainer(cfg, self.demos.obs_spec, self.demos.action_dim,
                               (self.demos.forward, self.demos.backward), resolve_device(cfg.service.device),
                               seed=cfg.seed)
        retention = cfg.service.journal_retention_steps or 2 * cfg.replay.capacity
        try:
            self._journal = IngestJournal.open(JournalConfig(directory=self.run_dir / "journal",
                                                             retention_steps=retention,
                                                             fsync=cfg.service.journal_fsync))
        except JournalError as e:
            raise ServiceError(str(e)) from e
        has_ckpt = bool(checkpoint.checkpoint_dirs(self.run_dir))
        if not self.resume and (self._journal.end > 0 or has_ckpt):
            raise ServiceError(f"{self.run_dir} already holds a run; pass --resume {self.run_dir} or another --run-dir")
        tracker, position, ckpt_positions, has_replay = ReceiveTracker(), 0, {}, False
        if self.resume:
            ckpt = checkpoint.load_latest(self.run_dir, with_replay=cfg.replay.save_in_checkpoint)
            if ckpt is not None:
                trainer.load_state_dict(ckpt.state)
                has_replay = ckpt.replay is not None
                if has_replay:
                    trainer.load_replay_state(ckpt.replay)
                service = ckpt.state["service"]
                tracker, position = ReceiveTracker.from_state(service["tracker"]), int(service["position"])
                ckpt_positions = {n: (position if n == ckpt.updates else 0)
                                  for n, _ in checkpoint.checkpoint_dirs(self.run_dir)}
                logger.info("resumed %s: journal position %d, env_steps %d", ckpt.path, position, trainer.env_steps)
        worker = TrainingWorker(
            trainer, cfg, run_dir=self.run_dir, journal=self._journal, ingested=tracker.committed_seqs(),
            position=position,
            ckpt_positions=ckpt_positions, metrics=metrics,
            publish=lambda w: loop.call_soon_threadsafe(self._weights_out, w),
            trained=lambda d: loop.call_soon_threadsafe(self._on_trained, d),
            ended=lambda: loop.call_soon_threadsafe(self._worker_ended.set))
        self._replay_journal(worker, position, has_replay)
        return worker

    def _replay_journal(self, worker: TrainingWorker, position: int, has_replay: bool) -> None:
        """Re-ingests journal records: before ``position`` into replay only (unless the
        checkpoint restored it), from ``position`` on as new data. Blocks."""
        assert self._journal is not None
        self.tracker = ReceiveTracker.from_state(ReceiveTracker.state_of(worker.ingested))
        self._streams = {}
        refilled = replayed = 0
        old: list[WorkItem] = []
        ends: dict[str, int] = {}
        for pos, batch in self._journal.records_from(self._journal.start):
            sid = batch.session_id
            if sid in ends and batch.first_seq != ends[sid]:
                self._streams.pop(sid)  # a hole the gap rule skipped: start a new stream
            ends[sid] = batch.end_seq
            why = batch_value_error(batch)
            if why:  # a journal written before ingest checked values: its bad records stay out of training
                self.journal_refused_steps += batch.size
                self._streams.pop(sid, None)  # the steps after it start a new stream
                if pos >= position and batch.end_seq > self.tracker.committed(sid):
                    self.tracker.skip_to(sid, batch.end_seq)  # acked long ago: never asked for again
                logger.warning("journal: record of session %s, steps %d..%d, skipped: %s (%d steps so far)", sid,
                               batch.first_seq, batch.end_seq - 1, why, self.journal_refused_steps)
                continue
            item = WorkItem(pos, self._stream_of(sid), batch)
            if pos < position:
                if not has_replay:
                    old.append(item)
                continue
            if batch.first_seq > self.tracker.admitted(sid):  # a refused or declared-lost hole: skipped then too
                self.tracker.skip_to(sid, batch.first_seq)
            fresh = self.tracker.admit(batch)
            if fresh is None:
                continue
            self.tracker.commit(batch.session_id, fresh.end_seq)
            worker.ingest(dataclasses.replace(item, batch=fresh))
            replayed += fresh.size
        if old:
            refilled = worker.trainer.refill((i.stream, i.batch) for i in old)
        self.position = max(position, self._journal.end)
        if refilled or replayed:
            logger.info("journal: refilled replay with %d steps, re-ingested %d steps", refilled, replayed)

    # ------------------------------------------------------------------ uplink
    async def _serve_uplink(self) -> None:
        while True:
            peer, msg = await self._uplink.recv()
            before = self._rejections()
            try:
                await self._on_uplink_message(peer, msg)
            except Exception as e:  # noqa: BLE001 — one peer's message must never end the service
                self.handler_errors += 1
                if worth_logging(self.handler_errors):
                    logger.exception("uplink: handling %s from peer %s failed (%d so far); still serving: %s",
                                     msg.TYPE, peer.hex(), self.handler_errors, e)
            # every delivered message is accepted or rejected (the transport counts the rest)
            self.uplink_accepted += self._rejections() == before

    def _rejections(self) -> tuple[int, ...]:
        """The counters a rejected uplink message moves (refused, malformed, gap, failed, raised)."""
        return (self.refused_sessions, self.refused_batches, self.handler_errors, self.gaps, self.journal_errors,
                self._uplink.malformed_count)

    async def _on_uplink_message(self, peer: bytes, msg: Any) -> None:
        if isinstance(msg, Hello):
            self._on_hello(peer, msg)
        elif isinstance(msg, TransitionBatch):
            await self._on_batch(peer, msg)
        elif not isinstance(msg, Heartbeat):
            # Out of protocol on the uplink (docs/protocol.md): counted like any malformed frame.
            self._uplink.malformed_count += 1
            logger.warning("uplink: unexpected %s from session %s ignored", msg.TYPE, self._uplink.session_of(peer))

    def check_hello(self, hello: Hello) -> str:
        """Returns why ``hello`` is refused (spaces or settings differ), or "" to accept it."""
        want_obs, want_act = self.demos.observation_space, self.demos.action_space
        if dict(hello.observation_space) != want_obs:
            return (f"observation_space: runtime declares {describe_space(hello.observation_space)}; "
                    f"the learner's demos have {describe_space(want_obs)}")
        if hello.action_space != want_act:
            return (f"action_space: runtime declares {hello.action_space.dtype} {tuple(hello.action_space.shape)}; "
                    f"the learner's demos have {want_act.dtype} {tuple(want_act.shape)}")
        settings = self.cfg.session_settings()
        if hello.config_hash != settings.config_hash():
            return (f"config_hash: runtime sent {hello.config_hash[:12]}…, the learner expects "
                    f"{settings.config_hash()[:12]}… for settings {settings.to_dict()}")
        return ""

    def _on_hello(self, peer: bytes, hello: Hello) -> None:
        reason = self.check_hello(hello)
        resume = 0
        declared = hello.oldest_seq - self.tracker.committed(hello.session_id)
        if not reason and declared > self.cfg.service.max_declared_loss:
            reason = (f"hello.oldest_seq: declares {declared} steps lost ({self.tracker.committed(hello.session_id)}.."
                      f"{hello.oldest_seq - 1}), more than service.max_declared_loss="
                      f"{self.cfg.service.max_declared_loss}; no runtime's spill log holds that many")
        if not reason:
            try:
                resume = self.tracker.resume_point(hello.session_id, hello.next_seq)
            except ProtocolError as e:
                reason = str(e)
        if reason:
            self._refuse(peer, hello.session_id, reason)
            return
        if hello.oldest_seq > resume:
            resume = self._skip_lost(hello.session_id, resume, hello.oldest_seq)
        if hello.task != self.demos.task:
            logger.warning("session %s: task %r differs from the demos' %r", hello.session_id, hello.task,
                           self.demos.task)
        self._peer_of[hello.session_id] = peer
        self._uplink.send(peer, Welcome(session_id=hello.session_id, accepted=True, reason="", resume_seq=resume,
                                        net_config=self.cfg.network.to_dict(),
                                        weights_endpoint=self.endpoints["weights"]))
        logger.info("session %s (%s/%s) accepted, resume from seq %d", hello.session_id, hello.robot, hello.task,
                    resume)

    def _refuse(self, peer: bytes, session_id: str, reason: str) -> None:
        self.refused_sessions += 1
        logger.warning("session %s refused: %s", session_id, reason)
        self._uplink.send(peer, Welcome(session_id=session_id, accepted=False, reason=reason[:1024],
                                        resume_seq=self.tracker.committed(session_id), net_config={},
                                        weights_endpoint=""))
        self._uplink.drop_peer(peer)

    def _drop_bad_peer(self, peer: bytes, why: str) -> None:
        session = self._uplink.session_of(peer) or "?"
        self.rejected_batches += 1
        self._refuse(peer, session, f"dropped: {why}")

    async def _on_batch(self, peer: bytes, batch: TransitionBatch) -> None:
        sid = batch.session_id
        try:
            fresh = self.tracker.admit(batch)
        except SequenceGap as e:
            self.gaps += 1
            logger.info("session %s: %s; asking for a resend", sid, e)
            self._ack(peer, sid)
            return
        self.duplicates_dropped += batch.size - (fresh.size if fresh is not None else 0)
        if fresh is None:
            self._ack(peer, sid)
            return
        why = batch_value_error(fresh)  # before the journal and the ack: nothing non-finite is ever kept
        if why:
            self._refuse_batch(peer, fresh, why)
            return
        assert self._journal is not None and self.worker is not None
        position = self.position
        try:
            await asyncio.to_thread(self._journal.append, position, fresh)
        except JournalError as e:
            self.journal_errors += 1
            self.tracker.rewind(sid)
            logger.error("session %s: journal append failed, batch %d..%d not acked: %s", sid, fresh.first_seq,
                         fresh.end_seq - 1, e)
            return
        self.position = position + fresh.size
        self.tracker.commit(sid, fresh.end_seq)
        self._ingest_times.append((time.monotonic(), self.position))
        self.worker.submit(WorkItem(position, self._stream_of(sid), fresh))
        self._ack(peer, sid)

    def _refuse_batch(self, peer: bytes, fresh: TransitionBatch, why: str) -> None:
        """Refuses a batch whose values may not be trained on (docs/protocol.md, "Refused
        batches"): tells the runtime which seqs and why, skips them (never journaled, a new
        replay stream after them) and acks past them, so the runtime quarantines the batch
        instead of resending it forever."""
        sid = fresh.session_id
        self.refused_batches += 1
        self.refused_steps += fresh.size
        if worth_logging(self.refused_batches):
            logger.warning("session %s: batch %d..%d refused (%d so far): %s", sid, fresh.first_seq,
                           fresh.end_seq - 1, self.refused_batches, why)
        self.tracker.commit(sid, fresh.end_seq)
        self._streams[sid] = max(self._streams.values(), default=-1) + 1  # no transition spans the hole
        self._uplink.send(peer, batch_refusal(sid, fresh.first_seq, fresh.end_seq, why))
        self._ack(peer, sid)

    def _skip_lost(self, sid: str, start: int, oldest: int) -> int:
        """The gap rule (docs/protocol.md): the runtime declared in its hello that it can no
        longer send ``start..oldest-1``; count them lost, loudly, and resume at ``oldest``."""
        lost = self.tracker.skip_to(sid, oldest)
        self.lost_steps += lost
        logger.warning("session %s: the runtime lost steps %d..%d (%d steps) before they were ingested; "
                       "continuing from %d", sid, start, oldest - 1, lost, oldest)
        # A new replay stream, so no transition links the steps on either side of the hole.
        self._streams[sid] = max(self._streams.values(), default=-1) + 1
        return oldest

    def _stream_of(self, sid: str) -> int:
        if sid not in self._streams:
            self._streams[sid] = max(self._streams.values(), default=-1) + 1
        return self._streams[sid]

    def _ack(self, peer: bytes, sid: str) -> None:
        if not self._uplink.send(peer, Ack(session_id=sid, seq=self.tracker.committed(sid),
                                           trained_through=self._trained.get(sid, 0))):
            logger.debug("session %s: ack not queued (peer gone or at its HWM); the refresher retries", sid)

    def _on_trained(self, changed: dict[str, int]) -> None:
        self._trained.update(changed)
        peers = self._uplink.peers()
        for sid in changed:
            peer = self._peer_of.get(sid)
            if peer is not None and peer in peers:
                self._ack(peer, sid)

    def _weights_out(self, weights: Weights) -> None:
        if self._closed:
            return  # the final publication raced the shutdown
        self._weights.publish(weights)
        self.published.append((weights.agent, weights.version))

    # ------------------------------------------------------------------ control
    def status_detail(self) -> dict[str, Any]:
        """Returns the status figures (see the module docstring and the integration contract)."""
        assert self.worker is not None
        with self.worker.lock:
            detail = dict(self.worker.figures)
        rate = 0.0
        if len(self._ingest_times) >= 2 and time.monotonic() - self._ingest_times[-1][0] < 5.0:
            (t0, p0), (t1, p1) = self._ingest_times[0], self._ingest_times[-1]
            rate = (p1 - p0) / (t1 - t0) if t1 > t0 else 0.0
        detail.update(ingest_rate=rate, sessions=len(self._uplink.peers()), transitions_ingested=self.position,
                      duplicates_dropped=self.duplicates_dropped, lost_steps=self.lost_steps,
                      malformed_rejected=self._uplink.malformed_count + self._uplink.stale_peer_messages
                      + self._control.malformed_count,
                      refused_sessions=self.refused_sessions, handler_errors=self.handler_errors,
                      refused_batches=self.refused_batches, refused_steps=self.refused_steps,
                      journal_refused_steps=self.journal_refused_steps,
                      failed_replies=self._control.failed_replies,
                      dropped_sessions=self.rejected_batches,
                      journal_bytes=self._journal.bytes_used if self._journal else 0)
        received = self._uplink.received_count  # = accepted + rejected, whatever rejected it
        detail.update(handshake_figures(), uplink_received=received, uplink_accepted=self.uplink_accepted,
                      uplink_rejected=received - self.uplink_accepted, uplink_malformed=self._uplink.malformed_count,
                      uplink_stale=self._uplink.stale_peer_messages, gaps=self.gaps, journal_errors=self.journal_errors,
                      control_accepted=self._control.accepted_count, control_malformed=self._control.malformed_count)
        return detail

    async def _on_command(self, cmd: Command) -> Status:
        assert self.worker is not None
        ok, message = True, ""
        if cmd.kind in ("pause", "resume"):
            self.worker.pause(cmd.kind == "pause")
            message = f"training {'paused' if cmd.kind == 'pause' else 'resumed'}"
        elif cmd.kind != "status":
            ok, message = False, f"{cmd.kind} is a runtime command; the learner does not carry it out"
        state = "paused" if self.worker.paused else "running"
        return Status(request_id=cmd.request_id, role="learner", state=state, detail=self.status_detail(), ok=ok,
                      message=message)


class _Stop(Exception):
    """Raised inside the TaskGroup to end it on a requested stop."""


async def serve(service: LearnerService) -> None:
    """Runs ``service`` and treats a requested stop as a clean end. Raises ServiceError on faults."""
    try:
        await service.run()
    except* _Stop:
        logger.info("learner stopped cleanly")
