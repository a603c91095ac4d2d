"""``resetfree-sim``'s live evaluation: the published forward policy, evaluated while the run
goes on.

:class:`LiveEvaluation` subscribes to the learner's weights, hands them to the
:class:`~simulation.app.evaluator.PolicyEvaluator`, starts an evaluation in its worker thread
when one falls due (every ``--eval-every`` env steps, once a forward policy exists), reports
each result on the console and refreshes ``curves.png``. An evaluation is a measurement, not
the run: one that fails is reported and training goes on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import mujoco

from learner.networks import actor_layout
from protocol.transport import WeightsSubscriber, WeightsSubscriberConfig, weights_limits
from simulation.app.evaluator import EvalCancelled, EvalRecord, EvaluatorError, PolicyEvaluator
from simulation.app.plot import plot_runs
from simulation.app.progress import ProgressDisplay
from simulation.tasks.base import SimulationError

logger = logging.getLogger(__name__)

FINAL_EVAL_TIMEOUT_S = 600.0
"""How long a run's end waits for an evaluation in progress or its final one."""


class LiveEvaluation:
    """See the module docstring. Call its methods on the event loop."""

    def __init__(self, evaluator: PolicyEvaluator, run_dir: Path, display: ProgressDisplay, started: float) -> None:
        self.evaluator, self.run_dir, self.display, self._started = evaluator, Path(run_dir), display, started
        self.last: EvalRecord | None = evaluator.records[-1] if evaluator.records else None
        """The newest evaluation (a resumed run shows its latest until the next one)."""
        self._cancel = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eval")
        self._future: asyncio.Future[EvalRecord] | None = None
        self._told_no_policy = False

    @property
    def running(self) -> bool:
        """Whether an evaluation is in progress."""
        return self._future is not None

    async def receive_weights(self, endpoint: str) -> None:
        """Subscribes to the learner's weights at ``endpoint`` and offers each blob to the
        evaluator (which keeps the forward agent's). Runs until cancelled."""
        # sized for the evaluated actor's blob (the robot profile's pixel policy is over the
        # default frame limit, and libzmq would drop the learner without a word)
        ev = self.evaluator
        layout = await asyncio.to_thread(actor_layout, ev.obs_spec, ev.action_dim, ev.net_config)
        subscriber = WeightsSubscriber(WeightsSubscriberConfig(endpoint=endpoint, limits=weights_limits(layout)))
        try:
            subscriber.connect()
            while True:
                weights = await subscriber.recv()
                if ev.offer_weights(weights.agent, weights.version, weights.tensors):
                    logger.debug("forward weights v%d received", weights.version)
        finally:
            subscriber.close()

    def maybe_start(self, learner_detail: dict[str, Any]) -> None:
        """Starts an evaluation when one is due at the learner's ``env_steps`` and none runs."""
        env_steps = int(learner_detail.get("env_steps", 0) or 0)
        ev = self.evaluator
        if ev.latest_version is None and not self._told_no_policy and env_steps >= ev.next_due:
            # The learner publishes no weights during its seed phase (the runtimes act at random
            # then): an evaluation falling in it waits for the first forward policy.
            self._told_no_policy = True
            self.display.message(f"evaluation due at {ev.next_due:,} env steps: no forward policy yet "
                                 f"(learner seed_phase {learner_detail.get('seed_phase')}); it runs when the "
                                 "first weights arrive")
        if self._future is None and ev.due(env_steps):
            self._start(ev.mark_started(env_steps))

    def collect(self) -> None:
        """Reports a finished evaluation (or its failure); does nothing while one runs."""
        future = self._future
        if future is None or not future.done():
            return
        self._future = None
        try:
            self.last = future.result()
        except EvalCancelled as e:
            logger.info("%s", e)
            return
        except (EvaluatorError, SimulationError, mujoco.FatalError, RuntimeError, ValueError, OSError) as e:
            # an evaluation is a measurement, not the run: report it and keep training
            logger.error("evaluation failed", exc_info=e)
            self.display.message(f"evaluation failed: {type(e).__name__}: {e}")
            return
        self.display.message(f"eval @ {self.last.step:,} env steps: success {self.last.success_rate:.0%}, "
                             f"mean return {self.last.mean_return:.1f}")

    async def finish(self, *, cancel: bool) -> None:
        """Waits for an evaluation in progress (asking it to stop first when ``cancel``)."""
        if self._future is None:
            return
        if cancel:
            self._cancel.set()
        await asyncio.wait([self._future], timeout=FINAL_EVAL_TIMEOUT_S)
        self.collect()

    async def final(self, env_steps: int) -> None:
        """At a clean end: evaluates the newest policy at ``env_steps`` unless that step is
        evaluated already (or there is no policy). Waits for it."""
        ev = self.evaluator
        last = ev.records[-1].step if ev.records else -1
        if env_steps <= last or ev.latest_version is None:
            return
        self._start(ev.mark_started(env_steps))
        await self.finish(cancel=False)

    def close(self) -> None:
        """Ends the worker thread (after :meth:`finish`). Blocks."""
        self._executor.shutdown(wait=True)

    def _start(self, step: int) -> None:
        loop = asyncio.get_running_loop()
        self._future = loop.run_in_executor(self._executor, self._evaluate, step, time.monotonic() - self._started)

    def _evaluate(self, step: int, wall_s: float) -> EvalRecord:
        """Worker thread: evaluates, then refreshes ``curves.png``."""
        record = self.evaluator.evaluate_latest(step, wall_s, cancel=self._cancel)
        try:
            plot_runs([self.run_dir], self.run_dir / "curves.png")
        except (ValueError, OSError) as e:
            logger.warning("curves.png not refreshed: %s", e)
        return record
