"""The learner service: one asyncio process serving runtimes while one thread trains.

Event loop (one ``TaskGroup``): the uplink (:class:`~learner.uplink.LearnerUplink`: hello →
spaces and settings checked against the demos and the config → welcome; transitions →
:class:`~learner.admission.Admission`: admit → journal append in a thread → commit → hand to
training → ack), heartbeats, the control server (status, pause/resume) and the weights
publisher. This module composes them: it prepares the trainer and the journal, binds the
sockets, runs the tasks, answers the control channel and checkpoints on the way out.

The training thread (:class:`~learner.training_worker.TrainingWorker`) owns the
:class:`MedalTrainer`, so the event loop never waits on torch: it runs the updates owed,
publishes finite actor copies (below) and checkpoints. Preparation (building the trainer,
opening the journal, restoring a checkpoint, replaying the journal) runs in a worker thread
before any socket serves.

Publication and the seed phase (docs/architecture.md, "The seed phase"): the seed phase is
the first ``schedule.seed_frames`` steps the trainer ingests, and during it nothing is
published — a runtime acts uniformly at random until it holds weights for the acting agent,
so withholding them is what makes every seed-phase action random. The first iteration after
the seed phase (after the update it owes, if any) publishes both agents' weights; from then
on each agent's are published every ``publish_every`` of its updates. A learner resumed past
its seed phase publishes at once (the rule: :mod:`learner.publication`).

Exactly-once across crashes: a batch is acked only after its journal record is durable;
checkpoints store the journal position the trainer consumed and the matching
ReceiveTracker state; a resumed learner replays the journal after that position (and
rebuilds replay from older records when the checkpoint holds none) without counting twice
(:mod:`learner.admission`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from pathlib import Path
from typing import Any

import torch

from learner import checkpoint
from learner.admission import Admission
from learner.config import LearnerConfig
from learner.demo_dir import DemoSet
from learner.errors import ServiceError
from learner.journal import IngestJournal, JournalConfig, JournalError
from learner.metrics import Metrics
from learner.placement import pin_process, resolve_device
from learner.trainer import MedalTrainer
from learner.training_worker import TrainingWorker
from learner.uplink import LearnerUplink
from protocol.atomic import write_json_atomic
from protocol.keys import CurveServerKeys
from protocol.messages import Command, Status, Weights
from protocol.reliability import ReceiveTracker
from protocol.transport import ControlServer, ControlServerConfig, WeightsPublisher, WeightsPublisherConfig
from protocol.transport.common import handshake_figures

logger = logging.getLogger(__name__)

MODES = ("realtime", "lockstep")


class LearnerService:
    """The learner process's event-loop side. ``await run()``; ``request_stop()`` ends it."""

    def __init__(self, cfg: LearnerConfig, demos: DemoSet, *, run_dir: Path, resume: bool = False,
                 keys: CurveServerKeys | None = None) -> None:
        if cfg.agent.bc_proposal:
            raise ServiceError("agent.bc_proposal is for the in-process practice loop only: a runtime deploys the "
                               "actor alone, without the BC proposal and the critics that choose between them")
        self.cfg, self.demos, self.run_dir, self.resume, self.keys = cfg, demos, Path(run_dir), resume, keys
        self.endpoints: dict[str, str] = {}
        """Bound endpoints (``uplink``, ``weights``, ``control``) once started."""
        self.started = asyncio.Event()
        """Set once every socket is bound and the training thread runs."""
        self.admission = Admission(cfg, demos)
        """What the learner takes in: sessions, batches, the journal position, ingest counters."""
        self.uplink = LearnerUplink(cfg, self.admission, keys=keys)
        """The runtimes' channel: welcomes, refusals, acks."""
        self.worker: TrainingWorker | None = None
        self._journal: IngestJournal | None = None
        self._stop = asyncio.Event()
        self._worker_ended = asyncio.Event()
        self._closed = False
        self.published: deque[tuple[str, int]] = deque(maxlen=64)
        """(agent, version) of the latest publications."""
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
            self.endpoints = {"uplink": await self.uplink.server.start(), "weights": await self._weights.start(),
                              "control": await self._control.start()}
            self.uplink.weights_endpoint = self.endpoints["weights"]
            await asyncio.to_thread(self._write_run_files)
            self.worker.start()
            self.started.set()
            logger.info("learner serving: %s (mode %s, run dir %s)", self.endpoints, self.cfg.service.mode,
                        self.run_dir)
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self.uplink.server.run())
                    tg.create_task(self.uplink.serve())
                    tg.create_task(self._control.run())
                    tg.create_task(self._weights.run())
                    tg.create_task(self._watch())
                    tg.create_task(self.uplink.refresh_acks())
            except* _Stop:
                pass
        finally:
            await self._shutdown(metrics)

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
            self.uplink.server.close()
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
            trained=lambda d: loop.call_soon_threadsafe(self.uplink.on_trained, d),
            ended=lambda: loop.call_soon_threadsafe(self._worker_ended.set))
        self.admission.recover(self._journal, worker, position, has_replay)
        return worker

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
        admission, uplink, server, control = self.admission, self.uplink, self.uplink.server, self._control
        detail.update(ingest_rate=admission.ingest_rate(), sessions=len(server.peers()),
                      transitions_ingested=admission.position, duplicates_dropped=admission.duplicates_dropped,
                      lost_steps=admission.lost_steps,
                      malformed_rejected=server.malformed_count + server.stale_peer_messages
                      + control.malformed_count,
                      refused_sessions=uplink.refused_sessions, handler_errors=uplink.handler_errors,
                      refused_batches=admission.refused_batches, refused_steps=admission.refused_steps,
                      journal_refused_steps=admission.journal_refused_steps,
                      failed_replies=control.failed_replies,
                      dropped_sessions=uplink.rejected_batches,
                      journal_bytes=self._journal.bytes_used if self._journal else 0)
        received = server.received_count  # = accepted + rejected, whatever rejected it
        detail.update(handshake_figures(), uplink_received=received, uplink_accepted=uplink.uplink_accepted,
                      uplink_rejected=received - uplink.uplink_accepted, uplink_malformed=server.malformed_count,
                      uplink_stale=server.stale_peer_messages, gaps=admission.gaps,
                      journal_errors=admission.journal_errors,
                      control_accepted=control.accepted_count, control_malformed=control.malformed_count)
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
