"""An in-process MEDAL++ practice loop for fast experiments (no processes, no sockets).

:func:`practice` runs the whole algorithm the way ``resetfree-sim`` does, minus the wire:
a :class:`~simulation.nonepisodic.NonEpisodic` task in state mode (reset only on the task's
schedule: the paper's 10k steps by default, EARL's with ``reset_schedule="earl"``),
forward/backward agents alternating every ``switch.interval`` steps, random actions during
the seed frames, a :class:`~learner.trainer.MedalTrainer` (REDQ agents, VICE
and MEDAL rewards) trained in lock-step — every update the UTD owes is done before the next
environment step — and EARL's deployed-policy evaluation
(:func:`simulation.evaluation.evaluate`) of the forward agent's mean action every
``eval_every`` steps. :func:`bc_baseline` trains and evaluates behaviour cloning on the same
forward demos by the same protocol, the bar the practice run has to clear (issue #7).

Wall-clock budgets count training only (environment steps + updates); evaluation time is
reported beside it, so a curve's minutes mean the same on a busy and on an idle machine
only up to CPU contention — the CLI in ``scripts/config_search.py`` runs one at a time.

The curve (:class:`EvalPoint`, :class:`PracticeResult`, ``curve.jsonl``) and the turn
statistics each point carries are :mod:`simulation.app.practice_curve`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from learner import checkpoint
from learner.bc import BCConfig, train_bc_from_demos
from learner.config import LearnerConfig, profile
from learner.networks import NetworkConfig, build_actor
from learner.trainer import MedalTrainer
from protocol.demos import Demos, concatenate, load_demos
from protocol.messages import BACKWARD, FORWARD
# EvalPoint and PracticeResult are practice()'s types: callers import them from here too.
from simulation.app.practice_curve import (EvalPoint, PracticeResult, TurnTally, append_curve, diagnostics,
                                          read_curve, write_curve)
from simulation.earl_import import BUNDLED_DEMOS
from simulation.evaluation import EvalResult, evaluate
from simulation.nonepisodic import NonEpisodic
from simulation.tasks import make, task_info
from simulation.tasks.base import RESET_SCHEDULES, ResetSchedule
from simulation.tools.demos_cli import generate

logger = logging.getLogger(__name__)



@dataclasses.dataclass(frozen=True, kw_only=True)
class PracticeConfig:
    """What a practice run does besides the learner's own config."""

    task: str = "tabletop"
    """EARL task in state mode: ``tabletop``, ``door`` or ``peg``."""
    max_env_steps: int = 100_000
    """Stop after this many environment steps."""
    max_minutes: float | None = None
    """Stop once training (steps + updates, evaluation excluded) has taken this long."""
    eval_every: int = 5_000
    """Environment steps between deployed-policy evaluations (EARL: 10k)."""
    eval_episodes: int = 10
    """Episodes per evaluation, from the initial-state distribution (EARL: 10)."""
    eval_seed: int = 10_000
    """Seed of evaluation episode 0 (episode i uses eval_seed + i; apart from demo seeds)."""
    reset_every: int | None = None
    """Steps between scheduled environment resets (0: never); None = the task's interval
    under :attr:`reset_schedule`."""
    reset_schedule: ResetSchedule = "paper"
    """The task's reset schedule when ``reset_every`` is None: ``paper`` (the default, every
    10k steps for tabletop, door and peg, as MEDAL++) or ``earl`` (EARL's own: door and
    tabletop 200k, peg 100k)."""
    goal_per_turn: bool = True
    """Draw the goal anew at every switch from the forward to the backward agent (the next
    forward turn practises towards it), as MEDAL's and the authors' loops do; False holds the
    goal drawn at a reset until the next reset. Matters for multi-goal tasks only (tabletop)."""
    seed: int = 0
    """Seed of the environment, the random seed actions and the trainer."""
    run_dir: Path | None = None
    """Where the run checkpoints (the trainer with its replay, at every evaluation) and writes
    ``curve.jsonl``; a run started on a directory with a checkpoint resumes from it. None:
    nothing is written."""

    def __post_init__(self) -> None:
        task_info(self.task)  # ValueError for an unknown task
        for name in ("max_env_steps", "eval_every", "eval_episodes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"PracticeConfig.{name} must be a positive int, got {value!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"PracticeConfig.max_minutes must be > 0 or None, got {self.max_minutes}")
        if self.reset_every is not None and self.reset_every < 0:
            raise ValueError(f"PracticeConfig.reset_every must be >= 0 or None, got {self.reset_every}")
        if self.reset_schedule not in RESET_SCHEDULES:
            raise ValueError(f"PracticeConfig.reset_schedule must be one of {RESET_SCHEDULES}, "
                             f"got {self.reset_schedule!r}")

    @property
    def reset_interval(self) -> int | None:
        """Steps between scheduled resets this config gives (None: never)."""
        if self.reset_every is not None:
            return self.reset_every or None
        return task_info(self.task).scheduled_reset_interval(self.reset_schedule)


def practice_config(task: str, *, seed: int = 0, overrides: Sequence[str] = ()) -> LearnerConfig:
    """Returns the learner config a state practice run of ``task`` uses: the ``sim`` profile,
    the task's shipped preset (``simulation/configs/<task>_state.toml``, as ``resetfree-sim``
    layers it), then ``overrides`` (``section.key=value``), with ``seed``. Raises ValueError
    on a bad override."""
    import tomllib

    from simulation.app.run_setup import preset_text

    cfg = profile("sim")
    text = preset_text(task, "state")
    if text is not None:
        cfg = LearnerConfig.from_dict(tomllib.loads(text), base=cfg)
    return cfg.with_overrides([*overrides, f"seed={seed}"])


def state_spec(task: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """Returns the learner's observation spec of ``task`` in state mode (``{"state": ...}``)."""
    return {"state": ((task_info(task).state_dim,), "float32")}


def load_task_demos(task: str, direction: str, *, source: str = "earl", episodes: int | None = None,
                    seed: int = 0, noise: float = 0.0) -> Demos:
    """Returns state demos of ``task`` in ``direction``.

    ``source="earl"`` loads EARL's own demos shipped with the package (``BUNDLED_DEMOS``); ``"expert"`` runs the
    scripted expert (``episodes`` default 10); a path loads a demo file, or from a directory
    (as ``resetfree-sim --demos`` takes) the file ``<task>_<direction>.npz``. ``episodes`` keeps
    the first that many episodes. Blocks while converting or simulating.

    Raises:
        ValueError: for an unknown source, or more episodes than the set holds.
        DemoFormatError / EarlImportError: for a broken file.
    """
    if source == "earl":
        path = BUNDLED_DEMOS / f"{task}_{direction}.npz"
        if not path.is_file():
            raise ValueError(f"source: the package ships no EARL demos for {task!r} ({path} is missing)")
        demos = load_demos(path)
    elif source == "expert":
        demos = generate(task, direction, episodes=episodes or 10, seed=seed, noise=noise)
    elif Path(source).is_dir():  # a run's demo directory: <task>_<direction>.npz
        demos = load_demos(Path(source) / f"{task}_{direction}.npz")
    elif Path(source).is_file():
        demos = load_demos(source)
    else:
        raise ValueError(f"source: must be 'earl', 'expert', a demo file or a directory of them, got {source!r}")
    if episodes is not None and episodes != demos.num_episodes:
        if episodes > demos.num_episodes:
            raise ValueError(f"episodes: asked for {episodes}, the set has {demos.num_episodes}")
        demos = concatenate([demos.episode(i) for i in range(episodes)])
    return demos


def actor_policy(act: Callable[[dict[str, np.ndarray]], np.ndarray]) -> Callable[[Any], np.ndarray]:
    """Wraps a dict-observation policy for :func:`evaluate`, which passes flat state vectors."""
    return lambda observation: act({"state": np.asarray(observation, dtype=np.float32)})


def practice(config: LearnerConfig, task: str | PracticeConfig, demos: tuple[Demos, Demos],
             *, on_eval: Callable[[EvalPoint], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> PracticeResult:
    """Runs MEDAL++ in-process on ``task`` (state mode) and returns its learning curve.

    ``config`` is the learner's (its ``switch.interval`` is the agent alternation);
    ``task`` a task name or a :class:`PracticeConfig`; ``demos`` the (forward, backward)
    state demos. ``on_eval`` is called with each curve point as it is measured. Stops at
    ``max_env_steps`` (then evaluates once more unless the last step was just evaluated),
    or — without a final evaluation — after ``max_minutes`` of training in this call or when
    ``should_stop()`` turns true. With ``PracticeConfig.run_dir`` the run checkpoints at every
    evaluation and at a stop, and resumes from its newest checkpoint: the trainer (networks,
    optimisers, discriminators, counters, RNGs, replay) exactly, the environment from a fresh
    reset on the same reset schedule. Blocks for the whole run (single process, the caller's
    torch thread settings).

    Raises:
        ValueError: for an unknown task or demos of another task's shape.
        TrainerError: when the demos give the trainer nothing to learn from.
        CheckpointError: when every checkpoint in ``run_dir`` is corrupt.
    """
    pcfg = task if isinstance(task, PracticeConfig) else PracticeConfig(task=task)
    spec = state_spec(pcfg.task)
    for d in demos:
        if d.observations["state"].shape[1:] != spec["state"][0]:
            raise ValueError(f"demos: state shape {d.observations['state'].shape[1:]} != task's {spec['state'][0]}")
    env = NonEpisodic(make(pcfg.task, obs="state"), reset_every=pcfg.reset_interval or 0)
    try:
        trainer = MedalTrainer(config, spec, env.action_space.shape[0], demos, seed=pcfg.seed)
        run = _PracticeRun(env, trainer, config, pcfg, on_eval, should_stop)
        return run.loop()
    finally:
        env.close()


class _PracticeRun:
    """The practice loop with its bookkeeping: act, step, ingest, train what is owed,
    evaluate on schedule, checkpoint."""

    def __init__(self, env: NonEpisodic, trainer: MedalTrainer, config: LearnerConfig, pcfg: PracticeConfig,
                 on_eval: Callable[[EvalPoint], None] | None, should_stop: Callable[[], bool] | None) -> None:
        self.env, self.trainer, self.config, self.pcfg = env, trainer, config, pcfg
        self.on_eval, self.should_stop = on_eval, should_stop
        self.curve: list[EvalPoint] = []
        self.train_s = 0.0
        self.turns = TurnTally()
        self.multi_goal = len(task_info(pcfg.task).state_goals) > 1
        if pcfg.run_dir is not None:
            self._resume(Path(pcfg.run_dir))

    def _resume(self, run_dir: Path) -> None:
        ckpt = checkpoint.load_latest(run_dir, with_replay=True)
        if ckpt is None:
            return
        self.trainer.load_state_dict(ckpt.state)
        if ckpt.replay is not None:
            self.trainer.load_replay_state(ckpt.replay)
        steps = self.trainer.env_steps
        # Points past the checkpoint (written just before a crash) are measured again.
        self.curve = [p for p in read_curve(run_dir) if p.env_steps <= steps]
        write_curve(run_dir, self.curve)
        self.train_s = float(ckpt.counters.get("train_s", self.curve[-1].train_minutes * 60 if self.curve else 0.0))
        logger.info("practice %s: resumed from %s at %d steps (%d evaluations so far)", self.pcfg.task, ckpt.path,
                    steps, len(self.curve))

    def loop(self) -> PracticeResult:
        pcfg, trainer, env = self.pcfg, self.trainer, self.env
        interval = self.config.switch.interval
        steps_done = trainer.env_steps  # > 0 on a resume
        rng = np.random.default_rng([pcfg.seed, steps_done])
        latest: dict[str, float] = {}
        eval_s = session_s = 0.0
        successes = 0
        obs, reset_info = env.reset(seed=pcfg.seed + steps_done)
        at_goal = (bool(reset_info["success"]), bool(reset_info["backward_success"]))  # per agent, at turn start
        turn_reached = False
        if env.reset_every is not None:  # keep the resets on the run's schedule across a resume
            env.steps_since_reset = steps_done % env.reset_every
        first = True
        evaluated_at = self.curve[-1].env_steps if self.curve else -1
        while steps_done < pcfg.max_env_steps:
            started = time.perf_counter()
            # 1. act: the scheduled agent (forward first), random during the seed frames
            agent = FORWARD if (steps_done // interval) % 2 == 0 else BACKWARD
            state = np.asarray(obs, dtype=np.float32)
            if trainer.seed_phase:
                action = rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32)
            else:
                action = trainer.agents[agent].act({"state": state}, explore=True)
            # 2. step and ingest (a scheduled reset also stores the pre-reset observation)
            obs, _, _, _, info = env.step(action)
            steps_done += 1
            successes += int(bool(info["success"]))
            turn_reached |= bool(info["success"] if agent == FORWARD else info["backward_success"])
            _ingest(trainer, agent, state, action, first, info)
            first = bool(info["env_reset"])  # the post-reset observation starts a new segment
            if steps_done % interval == 0:  # the end of this agent's turn: did it get there (at any step)?
                self.turns.add(agent, at_goal[agent], turn_reached)
                turn_reached = False
                now = info["reset_info"] if info["env_reset"] else info  # where the next turn starts
                if agent == FORWARD and pcfg.goal_per_turn and not info["env_reset"] and self.multi_goal:
                    # the forward transition ends at the old goal; the backward turn starts at the new one
                    trainer.end_segment({"state": np.asarray(obs, dtype=np.float32)[None]})
                    obs, now = env.unwrapped.draw_goal()
                    first = True
                at_goal = (bool(now["success"]), bool(now["backward_success"]))
            # 3. lock-step training: every update owed for the steps so far
            while trainer.credit[FORWARD] >= 1 or trainer.credit[BACKWARD] >= 1:
                latest.update(trainer.train_step())
            elapsed = time.perf_counter() - started
            self.train_s += elapsed
            session_s += elapsed
            # 4. deployed-policy evaluation on schedule and at the last step; a stop checkpoints only
            if steps_done % pcfg.eval_every == 0 or steps_done == pcfg.max_env_steps:
                t0 = time.perf_counter()
                self._evaluate(steps_done, latest)
                evaluated_at = steps_done
                eval_s += time.perf_counter() - t0
            stopping = ((pcfg.max_minutes is not None and session_s >= pcfg.max_minutes * 60)
                        or (self.should_stop is not None and self.should_stop()))
            if stopping:
                if evaluated_at != steps_done:
                    self._checkpoint()
                logger.info("practice %s: stopped at %d steps (resumable)", pcfg.task, steps_done)
                break
        if steps_done >= pcfg.max_env_steps and evaluated_at != steps_done:
            self._evaluate(steps_done, latest)
        return PracticeResult(curve=list(self.curve), env_steps=steps_done, updates=sum(trainer.updates),
                              train_minutes=self.train_s / 60, eval_minutes=eval_s / 60, env_resets=env.resets,
                              forward_successes=successes)

    def _evaluate(self, steps_done: int, latest: dict[str, float]) -> None:
        point = _evaluate_point(self.trainer, self.pcfg, steps_done, self.train_s, {**latest, **self.turns.pop()})
        self.curve.append(point)
        logger.info("practice %s: %d steps, %d updates, %.1f min: success %.2f%s", self.pcfg.task, point.env_steps,
                    point.updates, point.train_minutes, point.success_rate, diagnostics(point.metrics))
        if self.pcfg.run_dir is not None:
            append_curve(Path(self.pcfg.run_dir), point)  # before the checkpoint: see _resume
            self._checkpoint()
        if self.on_eval is not None:
            self.on_eval(point)

    def _checkpoint(self) -> None:
        if self.pcfg.run_dir is None:
            return
        t = self.trainer
        checkpoint.save_checkpoint(self.pcfg.run_dir, updates=t.env_steps, state=t.state_dict(),
                                   config=self.config.to_dict(), counters={**t.counters(), "train_s": self.train_s},
                                   replay=t.replay_state(), keep=2)


def _ingest(trainer: MedalTrainer, agent: int, state: np.ndarray, action: np.ndarray, first: bool,
            info: dict[str, Any]) -> None:
    """One step into the trainer; on a scheduled reset also the pre-reset final observation."""
    trainer.ingest(agent, {"state": state[None]}, action[None], np.array([first]), np.array([False]))
    if info["env_reset"]:
        final = np.asarray(info["final_observation"], dtype=np.float32)[None]
        trainer.ingest(agent, {"state": final}, np.zeros_like(action)[None], np.array([False]), np.array([True]))


def _evaluate_point(trainer: MedalTrainer, pcfg: PracticeConfig, env_steps: int, train_s: float,
                    metrics: dict[str, float]) -> EvalPoint:
    agent = trainer.agents[FORWARD]
    result = evaluate(actor_policy(lambda o: agent.act(o, explore=False)), pcfg.task,
                      episodes=pcfg.eval_episodes, seed=pcfg.eval_seed)
    return EvalPoint(env_steps=env_steps, updates=sum(trainer.updates), train_minutes=train_s / 60,
                     success_rate=result.success_rate, metrics=dict(metrics))


def bc_baseline(task: str, forward_demos: Demos, net_config: NetworkConfig, bc: BCConfig, *,
                episodes: int = 10, eval_seed: int = 10_000) -> EvalResult:
    """Trains BC on ``forward_demos`` and evaluates it like :func:`practice` evaluates.

    Returns the :class:`EvalResult`. Blocks for training and evaluation.
    """
    spec = state_spec(task)
    weights = train_bc_from_demos(forward_demos, spec, net_config, bc)
    policy = build_actor(spec, forward_demos.action_dim, net_config)
    policy.load_state_dict(weights)
    policy.eval()

    def act(observation: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return policy({"state": torch.as_tensor(observation["state"])[None]})[0].numpy()

    return evaluate(actor_policy(act), task, episodes=episodes, seed=eval_seed)
