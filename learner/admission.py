"""The learner's one admission point: what it takes in from runtimes, and in which order.

:class:`Admission` decides whether a runtime's ``hello`` opens its session (spaces and
settings against the demos and the config, the declared-loss limit, the resume point, the gap
rule) and what becomes of each ``transitions`` batch: deduplicated by ``(session_id, seq)``
in the :class:`~protocol.reliability.ReceiveTracker` (the learner's one dedupe), its values
checked, appended to the ingest journal, committed and handed to the training thread — in
that order, so a batch is acked only once its journal record is durable. It owns the journal
position, each session's replay stream and the ingest counters of the status. It sends
nothing: :class:`~learner.uplink.LearnerUplink` answers the runtime with what it decides.

Threads: everything runs on the service's event loop (the journal append in a worker thread
it awaits), except :meth:`Admission.recover`, which runs in the preparation thread before any
socket serves. Exactly-once across crashes: a checkpoint stores the journal position the
trainer consumed and the matching tracker state; :meth:`Admission.recover` replays the journal
after that position (and rebuilds replay from older records when the checkpoint holds none)
without counting twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque

from learner.config import LearnerConfig
from learner.demo_dir import DemoSet, describe_space
from learner.journal import IngestJournal, JournalError
from learner.training_worker import TrainingWorker, WorkItem
from protocol.errors import ProtocolError, SequenceGap
from protocol.messages import Hello, Status, TransitionBatch
from protocol.reliability import ReceiveTracker
from protocol.transport import batch_refusal
from protocol.transport.common import worth_logging
from protocol.value_checks import batch_value_error

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What the uplink answers a ``transitions`` batch with: the refusal, if any, then the ack."""

    refusal: Status | None = None
    """A ``batch_refused`` status naming the refused seqs and why (docs/protocol.md, "Refused
    batches"), sent before the ack; None when the batch was not refused."""
    ack: bool = True
    """Whether to ack (False when the journal append failed: nothing was kept, the runtime resends)."""


class Admission:
    """Admits sessions and batches (event loop); see the module docstring."""

    def __init__(self, cfg: LearnerConfig, demos: DemoSet) -> None:
        self.cfg, self.demos = cfg, demos
        self.tracker = ReceiveTracker()
        self.position = 0
        """Journal position: steps journaled so far (the next admitted batch's position)."""
        self.duplicates_dropped = 0
        self.lost_steps = 0
        """Steps a runtime declared lost by the gap rule (docs/protocol.md)."""
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
        self._journal: IngestJournal | None = None
        self._worker: TrainingWorker | None = None
        self._streams: dict[str, int] = {}
        """Session -> replay stream (steps of one stream link into transitions)."""
        self._ingest_times: deque[tuple[float, int]] = deque(maxlen=256)

    # ------------------------------------------------------------------ sessions
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

    def open_session(self, hello: Hello) -> tuple[int, str]:
        """Returns ``(resume_seq, "")`` when ``hello`` opens (or resumes) its session — the steps
        it declares lost are skipped by the gap rule first — or ``(0, reason)`` when it is refused."""
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
            return 0, reason
        if hello.oldest_seq > resume:
            resume = self._skip_lost(hello.session_id, resume, hello.oldest_seq)
        if hello.task != self.demos.task:
            logger.warning("session %s: task %r differs from the demos' %r", hello.session_id, hello.task,
                           self.demos.task)
        return resume, ""

    def _skip_lost(self, sid: str, start: int, oldest: int) -> int:
        """The gap rule (docs/protocol.md): the runtime declared in its hello that it can no
        longer send ``start..oldest-1``; count them lost, loudly, and resume at ``oldest``."""
        lost = self.tracker.skip_to(sid, oldest)
        self.lost_steps += lost
        logger.warning("session %s: the runtime lost steps %d..%d (%d steps) before they were ingested; "
                       "continuing from %d", sid, start, oldest - 1, lost, oldest)
        # A new replay stream, so no transition links the steps on either side of the hole.
        self._new_stream(sid)
        return oldest

    # ------------------------------------------------------------------ batches
    async def admit(self, batch: TransitionBatch, *, frame: memoryview | bytes | None = None) -> Verdict:
        """Dedupes, checks, journals (awaiting a worker thread), commits and hands ``batch``'s
        fresh steps to the training thread; returns what to answer the runtime. ``frame``: the
        batch's single-frame encoding as it arrived (the runtime's spill record), journaled as
        it is when the whole batch is fresh, so a batch is encoded once on its way from the
        runtime's outbox to the replay; None, or a batch trimmed by the dedupe, is encoded here."""
        sid = batch.session_id
        try:
            fresh = self.tracker.admit(batch)
        except SequenceGap as e:
            self.gaps += 1
            logger.info("session %s: %s; asking for a resend", sid, e)
            return Verdict()
        self.duplicates_dropped += batch.size - (fresh.size if fresh is not None else 0)
        if fresh is None:
            return Verdict()
        why = batch_value_error(fresh)  # before the journal and the ack: nothing non-finite is ever kept
        if why:
            return Verdict(refusal=self._refuse(fresh, why))
        assert self._journal is not None and self._worker is not None
        position = self.position
        try:
            if frame is not None and fresh is batch:
                await asyncio.to_thread(self._journal.append_encoded, position, frame, fresh.size)
            else:
                await asyncio.to_thread(self._journal.append, position, fresh)
        except JournalError as e:
            self.journal_errors += 1
            self.tracker.rewind(sid)
            logger.error("session %s: journal append failed, batch %d..%d not acked: %s", sid, fresh.first_seq,
                         fresh.end_seq - 1, e)
            return Verdict(ack=False)
        self.position = position + fresh.size
        self.tracker.commit(sid, fresh.end_seq)
        self._ingest_times.append((time.monotonic(), self.position))
        self._worker.submit(WorkItem(position, self._stream_of(sid), fresh))
        return Verdict()

    def _refuse(self, fresh: TransitionBatch, why: str) -> Status:
        """Refuses a batch whose values may not be trained on (docs/protocol.md, "Refused
        batches"): skips its seqs (never journaled, a new replay stream after them), so the ack
        passes them and the runtime quarantines the batch instead of resending it forever.
        Returns the refusal naming the seqs and why."""
        sid = fresh.session_id
        self.refused_batches += 1
        self.refused_steps += fresh.size
        if worth_logging(self.refused_batches):
            logger.warning("session %s: batch %d..%d refused (%d so far): %s", sid, fresh.first_seq,
                           fresh.end_seq - 1, self.refused_batches, why)
        self.tracker.commit(sid, fresh.end_seq)
        self._new_stream(sid)  # no transition spans the hole
        return batch_refusal(sid, fresh.first_seq, fresh.end_seq, why)

    def _new_stream(self, sid: str) -> int:
        self._streams[sid] = max(self._streams.values(), default=-1) + 1
        return self._streams[sid]

    def _stream_of(self, sid: str) -> int:
        return self._streams[sid] if sid in self._streams else self._new_stream(sid)

    def ingest_rate(self) -> float:
        """Returns the steps journaled per second over the latest batches (0 after 5 s without one)."""
        if len(self._ingest_times) >= 2 and time.monotonic() - self._ingest_times[-1][0] < 5.0:
            (t0, p0), (t1, p1) = self._ingest_times[0], self._ingest_times[-1]
            return (p1 - p0) / (t1 - t0) if t1 > t0 else 0.0
        return 0.0

    # ------------------------------------------------------------------ start-up (preparation thread)
    def recover(self, journal: IngestJournal, worker: TrainingWorker, position: int, has_replay: bool) -> None:
        """Takes the journal and the training worker, and re-ingests journal records: before
        ``position`` (the checkpoint's) into replay only (unless the checkpoint restored it),
        from ``position`` on as new data. Blocks; call before serving."""
        self._journal, self._worker = journal, worker
        self.tracker = ReceiveTracker.from_state(ReceiveTracker.state_of(worker.ingested))
        self._streams = {}
        refilled = replayed = 0
        old: list[WorkItem] = []
        ends: dict[str, int] = {}
        for pos, batch in journal.records_from(journal.start):
            sid = batch.session_id
            if sid in ends and batch.first_seq != ends[sid]:
                self._streams.pop(sid, None)  # a hole the gap rule skipped: start a new stream
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
        self.position = max(position, journal.end)
        if refilled or replayed:
            logger.info("journal: refilled replay with %d steps, re-ingested %d steps", refilled, replayed)
