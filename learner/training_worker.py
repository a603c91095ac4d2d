"""The learner's training thread: it owns the :class:`~learner.trainer.MedalTrainer`, so the
service's event loop never waits on torch.

It drains ingested batches, runs the updates owed (credit = UTD × steps after the seed phase;
``realtime`` interleaves ingest and updates and reports the achieved UTD, ``lockstep``
finishes every owed update before ingesting more), reports ``trained_through`` per session
(every update owed for the steps below it is done), publishes finite actor copies (when:
:mod:`learner.publication`), and checkpoints every ``checkpoint_every`` updates and on stop.
Publication and the seed phase: see :mod:`learner.service`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from learner import checkpoint
from learner.config import LearnerConfig
from learner.errors import ServiceError
from learner.journal import IngestJournal
from learner.metrics import Metrics
from learner.publication import Publication
from learner.trainer import MedalTrainer
from protocol.messages import BACKWARD, FORWARD, TransitionBatch, Weights
from protocol.reliability import ReceiveTracker

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WorkItem:
    """One committed batch on its way to the training thread."""

    position: int
    """Journal position of the batch's first step."""
    stream: int
    """The trainer stream of the batch's session."""
    batch: TransitionBatch
    """The fresh (deduplicated) steps."""



class TrainingWorker:
    """The thread that owns the trainer. ``submit`` from the loop; ``start``; ``stop`` (blocks)."""

    def __init__(self, trainer: MedalTrainer, cfg: LearnerConfig, *, run_dir: Path, journal: IngestJournal,
                 ingested: dict[str, int], position: int, ckpt_positions: dict[int, int], metrics: Metrics,
                 publish: Callable[[Weights], None], trained: Callable[[dict[str, int]], None],
                 ended: Callable[[], None] = lambda: None) -> None:
        self.trainer, self.cfg, self.run_dir, self.journal = trainer, cfg, run_dir, journal
        self.mode = cfg.service.mode
        self.ingested = dict(ingested)
        """Session → the seq after the last step the trainer took in (checkpointed with it).
        Only a record: the service is the one admission point, so every item is fresh."""
        self.position = position
        self.ckpt_positions = ckpt_positions
        self.metrics = metrics
        self._trained_cb, self._ended_cb = trained, ended
        self._publication = Publication(trainer, cfg, publish)
        self._inbox: queue.Queue[WorkItem | None] = queue.Queue()
        """Committed batches; None wakes a waiting thread to re-read ``_stop``/``_paused``."""
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._main, name="learner-training", daemon=True)
        self._trained: dict[str, int] = {}
        self._last_ckpt = self._last_log = sum(trainer.updates)
        self.disk_bytes = directory_bytes(self.run_dir)
        """Bytes under the run directory, measured at start and after every checkpoint."""
        self._latest_metrics: dict[str, float] = {}
        self._rate: deque[tuple[float, int]] = deque(maxlen=64)
        self.error: BaseException | None = None
        """The exception that ended the thread, if any."""
        self.figures: dict[str, Any] = {}
        """The latest counters (read under ``lock``)."""
        self._update_figures()

    @property
    def lock(self) -> threading.Lock:
        """Guards ``figures``."""
        return self._lock

    def submit(self, item: WorkItem) -> None:
        """Queues a committed batch for the trainer. Thread-safe, never blocks."""
        self._inbox.put(item)

    def pause(self, paused: bool) -> None:
        """Stops (True) or restarts (False) updates; ingest continues. Thread-safe."""
        (self._paused.set if paused else self._paused.clear)()
        self._inbox.put(None)  # wake the thread if it waits for data

    @property
    def paused(self) -> bool:
        """Whether updates are paused."""
        return self._paused.is_set()

    def start(self) -> None:
        """Starts the thread (which publishes nothing while the trainer is in its seed phase)."""
        self._thread.start()

    def stop(self, timeout: float = 120.0) -> None:
        """Stops the thread after ingesting what is queued and writing a checkpoint; blocks
        up to ``timeout`` s. Raises ServiceError when the thread does not end in time."""
        self._stop.set()
        self._inbox.put(None)  # wake the thread if it waits for data
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise ServiceError(f"training thread did not stop within {timeout} s")

    def alive(self) -> bool:
        """Whether the thread runs."""
        return self._thread.is_alive()

    # ------------------------------------------------------------------ thread body
    def _main(self) -> None:
        try:
            torch.set_num_threads(self.cfg.service.torch_threads)
            self._publication.first()  # past the seed phase already (a resumed run, or seed_frames = 0)
            while not self._stop.is_set():
                self._iteration()
            self._drain(block=False)
            self.checkpoint()
        except BaseException as e:  # the loop's watcher reports it and shuts the service down
            logger.exception("training thread failed: %s", e)
            self.error = e
        finally:
            self._ended_cb()  # on the thread, last: the service's watcher wakes on it

    def _iteration(self) -> None:
        owed = self._owed()
        if not owed:
            # Every update owed for what was ingested is done: say so *before* waiting for more
            # data. A lock-step runtime may be waiting for exactly this report; reporting it only
            # after the wait below cost one 50 ms drain timeout per batch.
            self._settle()
        if self.mode == "realtime" or not owed:
            self._drain(block=not owed)
            owed = self._owed()
        if owed:
            self._train_once()
        if not owed:
            self._settle()  # what the drain brought in owed nothing (the seed phase): report it now
        else:
            self._publication.first()
        self._update_figures()
        if self.metrics.progress(self.progress_figures()):
            self.metrics.write(self.trainer.env_steps, {"charts/utd": self.figures["utd"],
                                                        "timing/updates_per_s": self.figures["updates_per_s"]})

    def _settle(self) -> None:
        """Publishes the first weights once the seed phase is over, then reports
        ``trained_through`` when no update is owed (a pause holds it)."""
        self._publication.first()
        if not self._owed_any():
            self._report_trained()

    def _owed_any(self) -> bool:
        t = self.trainer
        return not t.seed_phase and any(t.credit[a] >= 1 and t.replay[a].has_transition() for a in (0, 1))

    def _owed_count(self) -> int:
        """Updates owed for the steps ingested so far (0 in the seed phase): the status figure
        ``updates_owed``, which a lock-step run's end waits to see at 0."""
        t = self.trainer
        if t.seed_phase:
            return 0
        return int(sum(t.credit[a] for a in (0, 1) if t.credit[a] >= 1 and t.replay[a].has_transition()))

    def _owed(self) -> bool:
        return not self._paused.is_set() and self._owed_any()

    def _drain(self, *, block: bool) -> None:
        try:
            item = self._inbox.get() if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        items = [item]
        while True:
            try:
                items.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        for it in items:
            if it is not None:
                self.ingest(it)

    def ingest(self, item: WorkItem) -> None:
        """Feeds one committed batch to the trainer (training thread, or before it starts)."""
        batch = item.batch
        # The service admits (dedupes) every batch before it is journaled and forwarded, in seq
        # order; a hole ahead of it is one the runtime declared lost and the service skipped.
        if batch.first_seq < self.ingested.get(batch.session_id, 0):
            raise ServiceError(f"training worker: session {batch.session_id} steps {batch.first_seq}..{batch.end_seq - 1} "
                               f"arrived after step {self.ingested[batch.session_id] - 1} (the service admits in order)")
        self.trainer.ingest_batch(batch, stream=item.stream)
        self.ingested[batch.session_id] = batch.end_seq
        self.position = max(self.position, item.position + item.batch.size)

    def _train_once(self) -> None:
        t = self.trainer
        metrics = t.train_step(should_stop=self._stop.is_set)  # a stop waits for one update, not a step
        self._rate.append((time.monotonic(), sum(t.updates)))
        # Discriminator rounds run on their own schedule, so a step's metrics rarely hold
        # them: log the latest value of every metric, not only the logging step's own.
        self._latest_metrics.update(metrics)
        if sum(t.updates) - self._last_log >= self.cfg.service.log_every and metrics:
            self._last_log = sum(t.updates)
            self.metrics.write(t.env_steps, self._latest_metrics)
            self._latest_metrics = {}
        self._publication.due()
        if sum(t.updates) - self._last_ckpt >= self.cfg.service.checkpoint_every:
            self.checkpoint()

    def _report_trained(self) -> None:
        changed = {sid: v for sid, v in self.ingested.items() if self._trained.get(sid) != v}
        if changed:
            self._trained.update(changed)
            self._trained_cb(changed)

    def checkpoint(self) -> Path:
        """Writes a checkpoint with the journal position and tracker; trims the journal. Blocks."""
        t = self.trainer
        total = sum(t.updates)
        service = {"position": self.position, "tracker": ReceiveTracker.state_of(self.ingested)}
        replay = t.replay_state() if self.cfg.replay.save_in_checkpoint else None
        path = checkpoint.save_checkpoint(self.run_dir, updates=total, state={**t.state_dict(), "service": service},
                                          config=self._checkpoint_config(), counters=t.counters(), replay=replay,
                                          keep=self.cfg.service.keep_checkpoints)
        self._last_ckpt = total
        self.ckpt_positions[total] = self.position
        on_disk = {n for n, _ in checkpoint.checkpoint_dirs(self.run_dir)}
        for n in [n for n in self.ckpt_positions if n not in on_disk]:
            del self.ckpt_positions[n]
        self.journal.trim(min(self.ckpt_positions.values()))
        self._check_disk()
        return path

    def _check_disk(self) -> None:
        """Measures the run directory (after a checkpoint, when it is largest) and warns above
        ``service.disk_warn_gib``."""
        self.disk_bytes = directory_bytes(self.run_dir)
        cap = self.cfg.service.disk_warn_gib
        if self.disk_bytes > cap * 2**30:
            logger.warning("disk: the run directory %s holds %.1f GiB, over service.disk_warn_gib = %g: lower "
                           "service.keep_checkpoints or replay.save_in_checkpoint, or raise the cap", self.run_dir,
                           self.disk_bytes / 2**30, cap)

    def _checkpoint_config(self) -> dict:
        """The resolved config plus the observation spec and action size, so a checkpoint
        alone rebuilds the actor (``resetfree-eval --policy RUN_DIR``)."""
        t = self.trainer
        spec = {name: [list(shape), dtype] for name, (shape, dtype) in t.obs_spec.items()}
        return {**self.cfg.to_dict(), "obs_spec": spec, "action_dim": t.action_dim}

    # ------------------------------------------------------------------ figures
    def _update_figures(self) -> None:
        t = self.trainer
        post_seed = max(0, t.env_steps - t.sched.seed_frames)
        ups = 0.0
        if len(self._rate) >= 2 and self._rate[-1][0] > self._rate[0][0]:
            ups = (self._rate[-1][1] - self._rate[0][1]) / (self._rate[-1][0] - self._rate[0][0])
        with self._lock:
            self.figures = {
                "env_steps": t.env_steps, "updates": sum(t.updates),
                "utd": sum(t.updates) / post_seed if post_seed else 0.0, "updates_per_s": ups,
                "weights_version_forward": self._publication.sent[FORWARD],
                "weights_version_backward": self._publication.sent[BACKWARD],
                "seed_phase": t.seed_phase, "skipped_nonfinite": t.skipped_nonfinite,
                "weights_withheld": self._publication.withheld, "trained_position": self.position,
                "paused": self._paused.is_set(), "mode": self.mode, "updates_owed": self._owed_count(),
            }

    def progress_figures(self) -> dict[str, Any]:
        """Returns the figures for the console line."""
        with self._lock:
            f = dict(self.figures)
        out = {k: f[k] for k in ("env_steps", "updates", "utd", "updates_per_s", "seed_phase",
                                 "weights_version_forward", "weights_version_backward")}
        out["disk_gib"] = round(self.disk_bytes / 2**30, 2)
        return out


def directory_bytes(path: Path) -> int:
    """Returns the bytes of the files under ``path`` (0 when it does not exist; files that
    vanish during the walk — a checkpoint being rotated — are skipped)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total
