"""``resetfree-sim``'s process management: one learner and N simulated runtimes as OS
processes over loopback, the BC baseline in a child, deployed-policy evaluation on a thread.

Order of a run (:class:`Orchestrator`):

1. the run directory: ``run.json`` (what was asked), ``config.toml`` (the resolved learner
   config: profile → task preset → ``--config`` → ``--set``), ``logs/``, ``demos/`` (scripted
   expert demos, forward + backward, unless ``--demos`` names a directory);
2. ``python -m simulation.app.bc_baseline`` in a child (once per run: skipped when ``bc.json``
   exists);
3. ``python -m learner`` with every port 0; its bound endpoints are read from
   ``RUN_DIR/endpoints.json``; a run with a checkpoint is resumed (``--resume RUN_DIR``);
4. N × ``python -m runtime --robot sim:TASK --lockstep``, each with its own spill directory
   (so a resumed run continues each session) and ``--max-steps`` = its share of the steps
   left;
5. supervision: status polls, the progress line, evaluations when due, and a stop when the
   runtimes finish, the time limit passes, SIGINT/SIGTERM arrives or a child dies;
6. shutdown: runtimes first (paused when interrupted, then SIGTERM: they stop the robot and flush), a final
   evaluation when the run ended normally, then the learner (SIGTERM: it checkpoints).

Children run in their own sessions, so a Ctrl-C in the terminal reaches only this process,
which then stops them in that order.

The run directory and config are :mod:`simulation.app.run_setup`, the children's command lines
:mod:`simulation.app.run_commands`, child processes :mod:`simulation.app.processes`, the live
evaluation :mod:`simulation.app.live_eval`; the first three's public names stay importable from here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

from learner.config import LearnerConfig
from learner.errors import LearnerError
from simulation.app.bc_run import BCBaselineRun
from simulation.app.evaluator import EvaluatorConfig, PolicyEvaluator
from simulation.app.live_eval import LiveEvaluation
from protocol.atomic import write_text_atomic
from simulation.app.processes import (ChildProcess, StatusPoller, child_env, pick_endpoint, read_endpoints,
                                  wait_for_endpoints)
from simulation.app.progress import ProgressDisplay, Snapshot, StallWatch
from simulation.app.run_commands import (EVAL_SEED, bc_command, has_checkpoint, learner_command, runtime_command,
                                     runtime_spill_dir, steps_per_runtime)
from simulation.app.run_setup import (RESUMED_FIELDS, TASKS, UNBOUNDED_STEPS, OrchestratorError, RunSpec, config_toml,
                                  prepare_demos, preset_text, resolve_config, resumed_spec, run_config, to_toml)
from simulation.tasks.base import SimulationError

logger = logging.getLogger(__name__)

__all__ = [
    "EVAL_SEED", "RESUMED_FIELDS", "TASKS", "ChildProcess", "Orchestrator", "OrchestratorError", "RunOutcome",
    "RunSpec", "bc_command", "child_env", "has_checkpoint", "learner_command", "pick_endpoint", "prepare_demos",
    "preset_text", "read_endpoints", "resolve_config", "resumed_spec", "runtime_command", "runtime_spill_dir",
    "steps_per_runtime", "to_toml", "wait_for_endpoints",
]


# ============================================================================ the run
@dataclasses.dataclass(frozen=True, kw_only=True)
class RunOutcome:
    """How a run ended and what it reached."""

    reason: str
    """``finished`` (steps reached), ``time limit``, ``interrupted`` or ``failed: <child>``."""
    ok: bool
    """True when no child failed and every child exited cleanly."""
    env_steps: int
    """Learner env steps at the end."""
    updates: int
    """Learner updates at the end."""
    wall_s: float
    """Seconds this invocation ran."""
    success_final: float | None
    """Success rate of the last evaluation, None when none ran."""
    success_best: float | None
    """Best evaluated success rate, None when none ran."""
    bc_success: float | None
    """BC baseline success rate (mean over its seeds), None when not computed."""
    bc_success_seeds: list[float] | None
    """Each BC seed's success rate, None when not computed."""
    resets: int
    """Environment resets the runtimes reported (sum over runtimes; operator resets not included)."""
    interventions: int
    """Emulated operator resets the runtimes reported (``RunSpec.operator``; sum over runtimes)."""
    exit_codes: dict[str, int | None]
    """Child name → exit code."""

    def to_dict(self) -> dict[str, Any]:
        """Returns the outcome as JSON builtins."""
        return dataclasses.asdict(self)


class Orchestrator:
    """Runs one ``resetfree-sim`` run (see the module docstring). Use :meth:`run` once.

    Size: one responsibility, the run's lifecycle (start, supervise, shut down in order), whose
    steps all share the children, their statuses and the interrupt; the run directory, the
    command lines, the processes, the evaluation, the BC child and the progress line already
    live in modules of their own.
    """

    def __init__(self, spec: RunSpec, display: ProgressDisplay | None = None) -> None:
        self.spec = resumed_spec(spec) if spec.resume else spec
        self.display = display if display is not None else ProgressDisplay(interval=self.spec.display_every)
        self.learner: ChildProcess | None = None
        self.runtimes: list[ChildProcess] = []
        self.evaluation: LiveEvaluation | None = None
        self.learner_detail: dict[str, Any] = {}
        self.runtime_details: list[dict[str, Any]] = []
        self.bc = BCBaselineRun(self.spec.run_dir, self.display)
        self.seed_steps: int | None = None
        self._pollers: dict[str, StatusPoller] = {}
        self._interrupted = False
        self._started = time.monotonic()
        self._stall = StallWatch(self.display, self.spec.stall_warn_s)

    # ------------------------------------------------------------------ public
    def interrupt(self) -> None:
        """Asks the run to stop cleanly (what SIGINT/SIGTERM do). Call from the event loop."""
        if not self._interrupted:
            self.display.message("stopping: runtimes first, then the learner checkpoints …")
        self._interrupted = True

    async def run(self) -> RunOutcome:
        """Runs until the steps are done, the time limit passes, an interrupt or a child failure.

        Returns the :class:`RunOutcome`; every child has exited when it returns. Blocks
        (in the event loop) for the whole run; demo generation blocks the loop at the start.
        """
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.interrupt)
        reason = "failed: setup"
        try:
            cfg, demos = self._prepare()
            self.bc.start(bc_command(self.spec, demos), wanted=self.spec.bc)
            uplink, weights = await self._start_learner(cfg, demos)
            if await self._start_runtimes(cfg, uplink):
                async with asyncio.TaskGroup() as tg:
                    assert self.evaluation is not None
                    receiver = tg.create_task(self.evaluation.receive_weights(weights))
                    try:
                        reason = await self._supervise()
                    finally:
                        receiver.cancel()
            else:
                reason = "finished"
        except (SimulationError, LearnerError, ValueError, OSError) as e:  # OrchestratorError, demos, config
            self.display.message(f"resetfree-sim: {type(e).__name__}: {e}")
            reason = f"failed: {e}".splitlines()[0]
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            outcome = await self._shutdown(reason)
        return outcome

    # ------------------------------------------------------------------ setup
    def _prepare(self) -> tuple[LearnerConfig, Path]:
        spec = self.spec
        if spec.resume and not spec.run_dir.is_dir():
            raise OrchestratorError(f"--resume {spec.run_dir}: no such run directory")
        (spec.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        try:
            # config.toml records what the learner really runs with (its flags win over the file),
            # endpoints included: port 0, the bound ones in endpoints.json
            cfg = run_config(spec)
        except ValueError as e:
            raise OrchestratorError(f"config: {e}") from e
        write_text_atomic(spec.run_dir / "config.toml", config_toml(cfg))
        write_text_atomic(spec.run_dir / "run.json", json.dumps(spec.to_json(), indent=1) + "\n")
        demos = prepare_demos(spec)
        evaluator = PolicyEvaluator(
            EvaluatorConfig(task=spec.task, obs=spec.obs, every=spec.eval_every, episodes=spec.eval_episodes,
                            seed=EVAL_SEED, video=spec.video), spec.run_dir, cfg.network)
        self.evaluation = LiveEvaluation(evaluator, spec.run_dir, self.display, self._started)
        self.seed_steps = cfg.schedule.seed_frames
        return cfg, demos

    async def _start_learner(self, cfg: LearnerConfig, demos: Path) -> tuple[str, str]:
        spec = self.spec
        endpoints_file = spec.run_dir / "endpoints.json"
        endpoints_file.unlink(missing_ok=True)  # a stale file would name dead ports
        resume = has_checkpoint(spec.run_dir)
        self.learner = ChildProcess("learner", learner_command(spec, cfg, demos, resume=resume),
                                    spec.run_dir / "logs" / "learner.log")
        self.learner.start()
        endpoints = await wait_for_endpoints(endpoints_file, self.learner, spec.start_timeout)
        self._pollers["learner"] = StatusPoller(pick_endpoint(endpoints, "control"))
        return pick_endpoint(endpoints, "uplink", "bind"), pick_endpoint(endpoints, "weights")

    async def _start_runtimes(self, cfg: LearnerConfig, uplink: str) -> bool:
        """Starts the runtimes; returns False when the run has no steps left."""
        spec = self.spec
        deadline = time.monotonic() + spec.start_timeout
        while "env_steps" not in self.learner_detail:  # a resumed learner knows its steps only now
            if self.learner is None or not self.learner.running:
                code = None if self.learner is None else self.learner.poll()
                tail = "" if self.learner is None else self.learner.tail()
                raise OrchestratorError(f"the learner exited with code {code} during start-up:\n{tail}")
            if time.monotonic() > deadline:
                raise OrchestratorError("the learner does not answer status on its control endpoint")
            await self._poll_learner()
        done = int(self.learner_detail.get("env_steps", 0) or 0)
        share = steps_per_runtime(spec.steps, done, spec.robots)
        if share == 0:
            self.display.message(f"{done:,} of {spec.steps:,} env steps already done")
            return False
        for index in range(spec.robots):
            spill = runtime_spill_dir(spec.run_dir, index)
            spill.mkdir(parents=True, exist_ok=True)
            (spill / "endpoints.json").unlink(missing_ok=True)
            child = ChildProcess(f"runtime{index}", runtime_command(spec, index, uplink, max_steps=share,
                                                                    switch_every=cfg.switch.interval),
                                 spec.run_dir / "logs" / f"runtime{index}.log")
            child.start()
            self.runtimes.append(child)
            self.runtime_details.append({})
        return True

    # ------------------------------------------------------------------ supervision
    async def _supervise(self) -> str:
        next_status = 0.0
        while True:
            if self._interrupted:
                return "interrupted"
            if self.spec.max_wall_s is not None and time.monotonic() - self._started >= self.spec.max_wall_s:
                return "time limit"
            failure = self._check_children()
            if failure is not None:
                return failure
            if all(rt.poll() == 0 for rt in self.runtimes):
                return "finished"
            self.bc.check()
            assert self.evaluation is not None
            self.evaluation.collect()
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + self.spec.status_every
                await self._poll_all()
            self.evaluation.maybe_start(self.learner_detail)
            self._check_stall()
            self.display.update(self.snapshot())
            await asyncio.sleep(0.1)

    def _check_stall(self) -> None:
        """Reports (once per stall) when the env steps have not moved for ``stall_warn_s``."""
        self._stall.check(self.learner_detail, self.runtime_details)

    def _check_children(self) -> str | None:
        for child in [c for c in (self.learner, *self.runtimes) if c is not None]:
            code = child.poll()
            if code is None or (code == 0 and child is not self.learner):
                continue
            self.display.message(f"{child.name} exited unexpectedly with code {code}; "
                                 f"last lines of {child.log_path}:\n{child.tail()}")
            return f"failed: {child.name} exited with code {code}"
        return None

    async def _request(self, name: str, kind: str, timeout: float = 1.0) -> dict[str, Any] | None:
        poller = self._pollers.get(name)
        return None if poller is None else await poller.request(kind, timeout)

    async def _poll_learner(self) -> None:
        detail = await self._request("learner", "status")
        if detail is not None:
            self.learner_detail = detail

    async def _poll_all(self) -> None:
        await self._poll_learner()
        for index, child in enumerate(self.runtimes):
            if not child.running:
                continue
            name = child.name
            if name not in self._pollers:
                found = read_endpoints(runtime_spill_dir(self.spec.run_dir, index) / "endpoints.json")
                if not found:
                    continue
                self._pollers[name] = StatusPoller(pick_endpoint(found, "control"))
            detail = await self._request(name, "status")
            if detail is not None:
                self.runtime_details[index] = detail

    # ------------------------------------------------------------------ shutdown
    async def _shutdown(self, reason: str) -> RunOutcome:
        clean_end = reason in ("finished", "time limit")
        running = [rt for rt in self.runtimes if rt.running]
        if running and not clean_end:  # hold them at once (a requested stop, not an e-stop), then SIGTERM
            await asyncio.gather(*(self._request(rt.name, "pause") for rt in running))
        await asyncio.gather(*(rt.stop(self.spec.stop_timeout) for rt in self.runtimes))
        if self.evaluation is not None:
            await self.evaluation.finish(cancel=not clean_end)
        if clean_end:
            if self.evaluation is not None and self.learner is not None and self.learner.running:
                await self._poll_learner()
                await self.evaluation.final(int(self.learner_detail.get("env_steps", 0) or 0))
            await self._settle_learner()
        else:
            await self._poll_learner()
        learner_code = await self.learner.stop(self.spec.stop_timeout) if self.learner is not None else None
        await self.bc.finish(wait=clean_end)
        if self.evaluation is not None:
            self.evaluation.close()
        for poller in self._pollers.values():
            poller.close()
        if self.learner is not None:
            self.display.update(self.snapshot(), force=True)
        self.display.close()
        return self._outcome(reason, learner_code)

    async def _settle_learner(self, timeout: float = 60.0) -> None:
        """Polls the learner until it owes no update for the steps it ingested, so the
        outcome's ``env_steps`` and ``updates`` are the run's final figures (in lock-step the
        updates for the runtimes' last batches run after they stopped; a status polled during
        the run may fall between a batch's ingest and its updates). Gives up after ``timeout``
        s, or at once when the learner is paused, gone or does not report ``updates_owed``."""
        deadline = time.monotonic() + timeout
        while True:
            await self._poll_learner()
            detail = self.learner_detail
            if (not detail.get("updates_owed") or detail.get("paused") or time.monotonic() >= deadline
                    or self.learner is None or not self.learner.running):
                return
            await asyncio.sleep(0.2)

    def _outcome(self, reason: str, learner_code: int | None) -> RunOutcome:
        codes: dict[str, int | None] = {"learner": learner_code}
        codes.update({rt.name: rt.poll() for rt in self.runtimes})
        if self.bc.child is not None:
            codes["bc"] = self.bc.exit_code()
        records = self.evaluation.evaluator.records if self.evaluation is not None else []
        # A child stopped by us may die of the SIGTERM itself when it had not yet installed its
        # handler (still importing): it had nothing to flush, so that counts as clean too.
        ok = not reason.startswith("failed") and all(c in (0, -signal.SIGTERM) for n, c in codes.items() if n != "bc")
        return RunOutcome(
            reason=reason, ok=ok, env_steps=int(self.learner_detail.get("env_steps", 0) or 0),
            updates=int(self.learner_detail.get("updates", 0) or 0), wall_s=time.monotonic() - self._started,
            success_final=records[-1].success_rate if records else None,
            success_best=max(r.success_rate for r in records) if records else None,
            bc_success=self.bc.success, bc_success_seeds=self.bc.success_seeds,
            resets=sum(int(d.get("env_resets", 0) or 0) for d in self.runtime_details),
            interventions=sum(int(d.get("interventions", 0) or 0) for d in self.runtime_details), exit_codes=codes)

    def snapshot(self) -> Snapshot:
        """Returns what the progress display shows now."""
        learner = self.learner_detail
        first = self.runtime_details[0] if self.runtime_details else {}
        last = self.evaluation.last if self.evaluation is not None else None
        return Snapshot(env_steps=int(learner.get("env_steps", 0) or 0), updates=int(learner.get("updates", 0) or 0),
                        utd=float(learner.get("utd", 0.0) or 0.0), agent=str(first.get("agent", "-")),
                        seed_phase=bool(learner.get("seed_phase", False)), seed_steps=self.seed_steps,
                        success=last.success_rate if last else None,
                        success_step=last.step if last else None,
                        bc_success=self.bc.success, bc_state=self.bc.state(interrupted=self._interrupted),
                        evaluating=self.evaluation is not None and self.evaluation.running,
                        target_steps=self.spec.steps if self.spec.steps < UNBOUNDED_STEPS else None)
