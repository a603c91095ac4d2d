"""A practice run's learning curve (:mod:`simulation.app.practice`) and what each point carries.

:class:`EvalPoint` is one evaluation with the trainer's latest metrics, :class:`PracticeResult`
the run's outcome; the curve file in a run directory (``curve.jsonl``, one point per line) is
read, appended to and rewritten here; :class:`TurnTally` counts each agent's turns between two
evaluations (the ``practice/*`` metrics of a point) and :func:`diagnostics` picks the metrics
a point's log line shows.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from protocol.atomic import write_text_atomic
from protocol.messages import BACKWARD, FORWARD

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalPoint:
    """One point of a learning curve."""

    env_steps: int
    """Environment steps so far."""
    updates: int
    """Agent updates so far (both agents)."""
    train_minutes: float
    """Training wall clock so far (evaluation excluded)."""
    success_rate: float
    """Deployed-policy success of the forward agent (mean action)."""
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    """The latest value of each trainer metric (``forward/values/q_mean``, ``vice/loss``…)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class PracticeResult:
    """The outcome of :func:`simulation.app.practice.practice`."""

    curve: list[EvalPoint]
    """Every evaluation, in order (the last one is at the end of the run)."""
    env_steps: int
    """Environment steps taken."""
    updates: int
    """Agent updates done (both agents)."""
    train_minutes: float
    """Training wall clock (evaluation excluded)."""
    eval_minutes: float
    """Wall clock spent evaluating."""
    env_resets: int
    """Scheduled environment resets during the run."""
    forward_successes: int
    """Steps of the practice stream itself on which the task counted as solved."""

    @property
    def final_success(self) -> float:
        """Success rate at the last evaluation (0.0 when none ran)."""
        return self.curve[-1].success_rate if self.curve else 0.0

    @property
    def best_success(self) -> float:
        """Best success rate over the curve (0.0 when none ran)."""
        return max((p.success_rate for p in self.curve), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        """Returns the result as JSON-ready builtins."""
        out = dataclasses.asdict(self)
        out.update(final_success=self.final_success, best_success=self.best_success)
        return out


CURVE_FILE = "curve.jsonl"
"""A practice run's evaluations, one JSON object (:class:`EvalPoint`) per line."""


class TurnTally:
    """Each agent's turns since the last evaluation: in how many the agent's goal was reached
    at some step (the task solved, as EARL counts success; backward: the scene back in its
    initial configuration), and of the turns that started away from that goal, in how many it
    was reached — for the backward agent, the resets the practice stream got without a human.
    Seed-phase turns (random actions) count."""

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self.turns, self.reached, self.away, self.away_reached = [0, 0], [0, 0], [0, 0], [0, 0]

    def add(self, agent: int, started_at_goal: bool, reached: bool) -> None:
        """Counts one ended turn of ``agent``: whether it started at its goal, whether it reached it."""
        self.turns[agent] += 1
        self.reached[agent] += int(reached)
        if not started_at_goal:
            self.away[agent] += 1
            self.away_reached[agent] += int(reached)

    def pop(self) -> dict[str, float]:
        """Returns, per agent (``forward``/``backward``), ``practice/<agent>_turns`` and
        ``…_turns_started_away`` (counts) and the fractions ``…_turns_reached`` and
        ``…_turns_away_reached`` (each absent when its count is 0) since the last call, and
        starts counting again."""
        out: dict[str, float] = {}
        for agent, name in ((FORWARD, "forward"), (BACKWARD, "backward")):
            key = f"practice/{name}_turns"
            out[key], out[f"{key}_started_away"] = float(self.turns[agent]), float(self.away[agent])
            if self.turns[agent]:
                out[f"{key}_reached"] = self.reached[agent] / self.turns[agent]
            if self.away[agent]:
                out[f"{key}_away_reached"] = self.away_reached[agent] / self.away[agent]
        self._clear()
        return out


_DIAGNOSTICS = (("practice/backward_turns_away_reached", "resets"), ("forward/values/q_mean", "Qf"),
                ("forward/q/bound", "bound"), ("backward/values/q_mean", "Qb"), ("backward/q/bound", "bound"),
                ("forward/charts/entropy", "Hf"), ("backward/charts/alpha", "αb"),
                ("vice/logits_pos", "vice+"), ("vice/logits_neg", "vice-"),
                ("forward/proposal/acted_fraction", "BC acted"), ("forward/proposal/target_fraction", "BC target"))


def diagnostics(metrics: dict[str, float]) -> str:
    """Returns the quantities that reveal a diverging or collapsing run, rounded for a log line
    (`` (label value, ...)``, or empty when ``metrics`` has none of them)."""
    parts = [f"{label} {metrics[key]:.3g}" for key, label in _DIAGNOSTICS if key in metrics]
    return f" ({', '.join(parts)})" if parts else ""


def read_curve(run_dir: Path) -> list[EvalPoint]:
    """Returns the evaluations a practice run wrote to ``run_dir`` (``curve.jsonl``), in order."""
    path = Path(run_dir) / CURVE_FILE
    if not path.is_file():
        return []
    return [EvalPoint(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def append_curve(run_dir: Path, point: EvalPoint) -> None:
    """Appends ``point`` to ``run_dir``'s curve file (created with the directory), fsync'd."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / CURVE_FILE, "a") as f:
        f.write(json.dumps(dataclasses.asdict(point), sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_curve(run_dir: Path, points: list[EvalPoint]) -> None:
    """Replaces ``run_dir``'s curve file with ``points`` (atomically)."""
    write_text_atomic(run_dir / CURVE_FILE,
                      "".join(json.dumps(dataclasses.asdict(p), sort_keys=True) + "\n" for p in points))
