"""When the training thread publishes each agent's actor weights (docs/architecture.md, "The
seed phase"; the rule is restated in :mod:`learner.service`).

:class:`Publication` holds the rule and the versions: nothing while the trainer is in its seed
phase — a runtime acts uniformly at random until it holds weights — then, once it is over,
each agent that has published nothing yet (:meth:`Publication.first`), and from then on each
agent every ``service.publish_every`` of its updates (:meth:`Publication.due`). An actor
holding a non-finite tensor is withheld, counted, and retried ``publish_every`` updates later.
Published tensors are cast to ``service.weights_dtype`` and handed to the service's callback.
The training thread (:class:`~learner.training_worker.TrainingWorker`) is the only caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from learner.config import LearnerConfig
from learner.trainer import MedalTrainer
from protocol.messages import AGENTS, BACKWARD, FORWARD, Weights
from protocol.tensors import weights_in_dtype

logger = logging.getLogger(__name__)


class Publication:
    """The publication rule for both agents' actors. Training thread only (not thread-safe)."""

    def __init__(self, trainer: MedalTrainer, cfg: LearnerConfig, publish: Callable[[Weights], None]) -> None:
        self.trainer, self.cfg = trainer, cfg
        self._publish_cb = publish
        self._published = [-1, -1]
        """Per agent: the version last published, or withheld as non-finite (-1: none yet)."""
        self.sent = [-1, -1]
        """Per agent: the version last really published (-1: none yet; the status figure)."""
        self.withheld = 0
        """Publications skipped because the actor held non-finite tensors."""

    def first(self) -> None:
        """Ends the runtimes' random actions once the seed phase is over: publishes each agent
        that has published nothing yet — after the update the iteration owed, and before
        ``trained_through`` reports the boundary's steps trained, so a lock-step runtime (at
        most a window ahead of ``trained_through``) has them on their way before it may go
        further. An agent that has not acted since the seed phase goes out untrained
        (version 0): it acts with it, as the paper's agents act with their policies once the
        seed frames are over."""
        if self.trainer.seed_phase:
            return
        for a in (FORWARD, BACKWARD):
            if self._published[a] < 0:
                self._publish(a)

    def due(self) -> None:
        """Publishes each agent ``service.publish_every`` of its updates after its last one."""
        for a in (FORWARD, BACKWARD):
            if self.trainer.updates[a] - max(self._published[a], 0) >= self.cfg.service.publish_every:
                self._publish(a)

    def _publish(self, agent: int) -> None:
        tensors = self.trainer.publishable_weights(agent)
        version = self.trainer.updates[agent]
        if tensors is None:
            self.withheld += 1
            self._published[agent] = max(self._published[agent], version)  # retry after publish_every more
            return
        tensors = weights_in_dtype(tensors, self.cfg.service.weights_dtype)
        self._publish_cb(Weights.create(agent=AGENTS[agent], version=version, tensors=tensors))
        self._published[agent] = self.sent[agent] = version
