"""Deployed-policy evaluation of the learner's *published* forward policy during a run.

The orchestrator subscribes to the learner's weights channel (latest wins), keeps the newest
forward actor it has received, and every ``eval_every`` environment steps (counted by the
learner) evaluates it with :func:`simulation.evaluation.evaluate` in its own environment on a
worker thread, so the progress display never waits on it. Each evaluation appends one row to
``RUN_DIR/evals.csv`` and may write a video of its first episodes
(``RUN_DIR/videos/eval_<step>.mp4``, a GIF when the MP4 writer is unavailable).

``evals.csv`` columns: ``step`` (learner env steps when the evaluation was due),
``success_rate``, ``mean_return``, ``returns`` (space-separated per-episode returns),
``wall_s`` (seconds of run time, continued across resumes), ``weights_version`` (the
forward actor's version, i.e. the learner's update count when it was published).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from learner.networks import NetworkConfig, PolicyNetwork, as_network_config, build_actor
from protocol.spaces import ObsSpec
from simulation.evaluation import EvalResult, evaluate
from simulation.tasks import make
from simulation.tasks.base import ObsMode, SimulationError

logger = logging.getLogger(__name__)

EVAL_COLUMNS = ("step", "success_rate", "mean_return", "returns", "wall_s", "weights_version")
"""Header of ``evals.csv``, in order."""


class EvaluatorError(SimulationError):
    """Weights that do not fit the task's actor, or an unreadable ``evals.csv``."""


class EvalCancelled(EvaluatorError):
    """An evaluation stopped early because the run is shutting down."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalRecord:
    """One row of ``evals.csv``."""

    step: int
    """Learner env steps at which the evaluation was due."""
    success_rate: float
    """Fraction of successful episodes."""
    mean_return: float
    """Mean sparse return over the episodes."""
    returns: tuple[float, ...]
    """Per-episode returns."""
    wall_s: float
    """Run time in seconds when the evaluation finished."""
    weights_version: int = -1
    """Version of the evaluated forward actor (-1: not a learner policy, e.g. BC)."""

    def to_row(self) -> dict[str, str]:
        """Returns the record as CSV strings keyed by :data:`EVAL_COLUMNS`."""
        return {"step": str(self.step), "success_rate": f"{self.success_rate:.6g}",
                "mean_return": f"{self.mean_return:.6g}",
                "returns": " ".join(f"{r:g}" for r in self.returns), "wall_s": f"{self.wall_s:.3f}",
                "weights_version": str(self.weights_version)}

    @classmethod
    def from_row(cls, row: Mapping[str, str]) -> EvalRecord:
        """Parses one CSV row; raises EvaluatorError naming the bad column."""
        try:
            return cls(step=int(row["step"]), success_rate=float(row["success_rate"]),
                       mean_return=float(row["mean_return"]),
                       returns=tuple(float(x) for x in (row.get("returns") or "").split()),
                       wall_s=float(row.get("wall_s") or 0.0),
                       weights_version=int(row.get("weights_version") or -1))
        except (KeyError, ValueError, TypeError) as e:
            raise EvaluatorError(f"evals.csv: bad row {dict(row)!r}: {e}") from e


def append_eval(path: Path, record: EvalRecord) -> None:
    """Appends ``record`` to the CSV at ``path`` (header written when the file is new).

    Blocks on disk I/O; flushes and fsyncs so a crash loses at most the row being written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=EVAL_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(record.to_row())
        f.flush()
        try:
            os.fsync(f.fileno())
        except OSError as e:  # e.g. a filesystem without fsync: the row is still written
            logger.debug("fsync %s: %s", path, e)


def read_evals(path: Path) -> list[EvalRecord]:
    """Returns the rows of ``evals.csv`` sorted by step ([] when the file does not exist).

    Raises EvaluatorError for a malformed row.
    """
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        records = [EvalRecord.from_row(row) for row in csv.DictReader(f)]
    return sorted(records, key=lambda r: r.step)


def space_obs_spec(space: gym.spaces.Space) -> dict[str, tuple[tuple[int, ...], str]]:
    """Returns the actor's observation spec for an environment's observation space.

    State mode (a ``Box``) becomes ``{"state": ((D,), "float32")}`` as the simulated robot
    wraps it; pixel mode (a ``Dict``) maps each key to its shape and dtype.
    Raises EvaluatorError for any other space.
    """
    if isinstance(space, gym.spaces.Box):
        return {"state": (tuple(int(d) for d in space.shape), "float32")}
    if isinstance(space, gym.spaces.Dict):
        return {k: (tuple(int(d) for d in s.shape), str(np.dtype(s.dtype))) for k, s in space.spaces.items()}
    raise EvaluatorError(f"unsupported observation space {space!r}")


def task_spec(task: str, obs: ObsMode) -> tuple[dict[str, tuple[tuple[int, ...], str]], int]:
    """Returns ``(obs_spec, action_dim)`` of ``task`` in ``obs`` mode. Blocks to build an env."""
    env = make(task, obs=obs)
    try:
        return space_obs_spec(env.observation_space), int(env.action_space.shape[0])
    finally:
        env.close()


class ActorPolicy:
    """Runs a :class:`PolicyNetwork` as an evaluation policy (deterministic ``tanh(mu)``)."""

    def __init__(self, network: PolicyNetwork) -> None:
        self.network = network.eval()

    @torch.no_grad()
    def __call__(self, observation: Any) -> np.ndarray:
        """Returns the action for one observation (a state vector or a pixel dict)."""
        if isinstance(observation, Mapping):
            batch = {k: torch.as_tensor(np.asarray(v))[None] for k, v in observation.items()}
        else:
            batch = {"state": torch.as_tensor(np.asarray(observation, dtype=np.float32))[None]}
        return self.network(batch)[0].numpy().astype(np.float32)


def load_policy(obs_spec: ObsSpec, action_dim: int, net_config: NetworkConfig | Mapping[str, Any],
                tensors: Mapping[str, np.ndarray | torch.Tensor]) -> ActorPolicy:
    """Builds the actor and loads ``tensors`` into it strictly.

    Returns an :class:`ActorPolicy`. Raises EvaluatorError when names or shapes disagree.
    """
    network = build_actor(obs_spec, action_dim, net_config)
    state = {k: torch.as_tensor(np.array(v, copy=True)) if isinstance(v, np.ndarray) else v
             for k, v in tensors.items()}
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise EvaluatorError(f"weights do not fit the {obs_spec} actor: {e}") from e
    return ActorPolicy(network)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvaluatorConfig:
    """Deployed-policy evaluation during a run."""

    task: str
    """Task evaluated."""
    obs: ObsMode = "state"
    """Observation mode of the policy."""
    every: int = 10_000
    """Learner env steps between evaluations (EARL: 10k)."""
    episodes: int = 10
    """Episodes per evaluation (EARL: 10)."""
    seed: int = 10_000
    """Episode i of every evaluation resets with ``seed + i`` (the same starts each time)."""
    video: bool = True
    """Record the first ``video_episodes`` episodes of each evaluation."""
    video_episodes: int = 2
    """Episodes recorded per evaluation."""

    def __post_init__(self) -> None:
        for name in ("every", "episodes", "video_episodes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"EvaluatorConfig.{name} must be a positive int, got {value!r}")
        if self.obs not in ("state", "pixels"):
            raise ValueError(f"EvaluatorConfig.obs must be state or pixels, got {self.obs!r}")


class PolicyEvaluator:
    """Evaluates the newest forward weights when the learner's env steps cross a due step.

    Thread-safe: :meth:`offer_weights` and :meth:`due` are called from the orchestrator's
    event loop, :meth:`evaluate_latest` runs on a worker thread (one at a time).
    """

    def __init__(self, cfg: EvaluatorConfig, run_dir: Path, net_config: NetworkConfig | Mapping[str, Any],
                 *, wall_offset: float = 0.0) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.net_config = net_config
        self.obs_spec, self.action_dim = task_spec(cfg.task, cfg.obs)
        self._lock = threading.Lock()
        self._latest: tuple[int, dict[str, np.ndarray]] | None = None
        past = read_evals(self.csv_path)
        self.records: list[EvalRecord] = past
        self.wall_offset = max(wall_offset, past[-1].wall_s if past else 0.0)
        last = past[-1].step if past else 0
        self.next_due = (last // cfg.every + 1) * cfg.every
        """The env step at which the next evaluation is due."""

    @property
    def csv_path(self) -> Path:
        """Returns ``RUN_DIR/evals.csv``."""
        return self.run_dir / "evals.csv"

    @property
    def latest_version(self) -> int | None:
        """Returns the version of the newest forward weights held, or None."""
        with self._lock:
            return None if self._latest is None else self._latest[0]

    def offer_weights(self, agent: str, version: int, tensors: Mapping[str, np.ndarray]) -> bool:
        """Keeps ``tensors`` when they are forward weights newer than those held; returns whether kept."""
        if agent != "forward":
            return False
        with self._lock:
            if self._latest is not None and version <= self._latest[0]:
                return False
            self._latest = (version, dict(tensors))
        return True

    def due(self, env_steps: int) -> bool:
        """Returns whether an evaluation is due at ``env_steps`` and forward weights are held."""
        return env_steps >= self.next_due and self.latest_version is not None

    def mark_started(self, env_steps: int) -> int:
        """Advances the schedule past ``env_steps``; returns the step to record the evaluation at."""
        self.next_due = (env_steps // self.cfg.every + 1) * self.cfg.every
        return env_steps

    def evaluate_latest(self, step: int, wall_s: float, cancel: threading.Event | None = None) -> EvalRecord:
        """Evaluates the newest forward weights; appends the row to ``evals.csv``.

        ``wall_s`` is this invocation's run time; the resumed offset is added. Blocks for
        the whole evaluation (run it on a worker thread) unless ``cancel`` is set, which
        stops it at the next step with EvalCancelled (no row written). Raises
        EvaluatorError when no weights are held or they do not fit the actor.
        """
        with self._lock:
            if self._latest is None:
                raise EvaluatorError("no forward weights received yet")
            version, tensors = self._latest
        actor = load_policy(self.obs_spec, self.action_dim, self.net_config, tensors)

        def policy(observation: Any) -> np.ndarray:
            if cancel is not None and cancel.is_set():
                raise EvalCancelled(f"evaluation at {step} env steps cancelled")
            return actor(observation)

        # H.264 MP4; write_video falls back to eval_<step>.gif when the MP4 writer is unavailable
        video = self.run_dir / "videos" / f"eval_{step}.mp4" if self.cfg.video else None
        result = evaluate(policy, self.cfg.task, episodes=self.cfg.episodes, obs=self.cfg.obs,
                          seed=self.cfg.seed, video_path=video, video_episodes=self.cfg.video_episodes)
        record = record_of(result, step=step, wall_s=self.wall_offset + wall_s, weights_version=version)
        best_before = max((r.success_rate for r in self.records), default=-1.0)
        append_eval(self.csv_path, record)
        self.records.append(record)
        if record.success_rate > best_before:
            self._keep_best(tensors, record)
        logger.info("eval at %d env steps (forward v%d): success %.2f, mean return %.1f", step, version,
                    record.success_rate, record.mean_return)
        return record


    @property
    def best_dir(self) -> Path:
        """Returns ``RUN_DIR/best-policy``: the forward policy of the best evaluation so far."""
        return self.run_dir / "best-policy"

    def _keep_best(self, tensors: Mapping[str, np.ndarray], record: EvalRecord) -> None:
        """Saves the evaluated policy as the run's best (the first of equal scores stays), so
        a later decline loses nothing: ``resetfree-eval --policy RUN_DIR/best-policy``."""
        from simulation.tools.policies import PolicyLoadError, save_policy

        try:
            path = save_policy(self.best_dir, tensors, obs_spec=self.obs_spec,
                               net_config=as_network_config(self.net_config),
                               updates=record.step, info={"task": self.cfg.task, "env_steps": record.step,
                                                          "weights_version": record.weights_version,
                                                          "success_rate": record.success_rate})
        except PolicyLoadError as e:
            logger.error("eval at %d env steps: the best policy so far could not be kept: %s", record.step, e)
            return
        logger.info("eval at %d env steps: best so far (success %.2f), kept in %s", record.step,
                    record.success_rate, path)


def record_of(result: EvalResult, *, step: int, wall_s: float, weights_version: int = -1) -> EvalRecord:
    """Returns the :class:`EvalRecord` of an :class:`EvalResult`."""
    return EvalRecord(step=step, success_rate=result.success_rate,
                      mean_return=float(np.mean(result.returns)) if result.returns else 0.0,
                      returns=tuple(float(r) for r in result.returns), wall_s=wall_s,
                      weights_version=weights_version)
