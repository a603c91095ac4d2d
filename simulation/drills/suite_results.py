"""The results of the EARL learning suite (:mod:`simulation.drills.bench_suite`): each run's
evaluation curve, its seed's figure of merit (the mean of its last :data:`LAST_EVALS`
evaluations) and, gathered over tasks and seeds, ``results.json``, ``results.md`` (one row per
task, every seed shown) and ``suite.png`` (success vs environment steps, the BC line, the
issue's goals and the papers' reported numbers as marks)."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol.atomic import write_json_atomic

if TYPE_CHECKING:
    from simulation.drills.bench_suite import SuiteSpec

logger = logging.getLogger(__name__)

GOALS: dict[str, float] = {"door": 0.95, "tabletop": 0.90, "peg": 0.80}
"""The issue's goals at ≤ 300k steps (state observations, 3 seeds, mean of the last three evaluations)."""

ANCHORS: dict[str, list[tuple[str, float, float]]] = {
    # (label, env steps, success) as the papers report them (success read off their figures/tables)
    "door": [("MEDAL++ (pixels)", 600_000, 0.80), ("RISC", 1_000_000, 0.96), ("MEDAL (state)", 1_000_000, 0.66),
             ("oracle episodic RL", 1_000_000, 0.84)],
    "tabletop": [("MEDAL++ (pixels)", 600_000, 0.80), ("RISC", 1_000_000, 0.90), ("MEDAL (state)", 1_000_000, 0.40),
                 ("oracle episodic RL", 1_000_000, 1.00)],
    "peg": [("MEDAL++ (pixels)", 600_000, 0.70), ("RISC", 1_000_000, 0.21), ("MEDAL (state)", 1_000_000, 0.0),
            ("oracle episodic RL", 1_000_000, 1.00)],
}
"""Reference marks for the plot: MEDAL++ (Sharma et al. 2023, Fig. 2), RISC (Kim et al. 2023;
peg 0.10–0.32, drawn at the middle), MEDAL (Sharma et al. 2022, state) and EARL's oracle."""

LAST_EVALS = 3
"""Evaluations averaged per seed for its number."""


def read_curve(run_dir: Path) -> list[dict[str, Any]]:
    """Returns the evaluations a run wrote (``curve.jsonl``, :func:`simulation.app.practice_curve.read_curve`)
    as dicts, in order; [] when none."""
    from simulation.app.practice_curve import read_curve as read_points

    return [dataclasses.asdict(p) for p in read_points(run_dir)]


def seed_score(points: Sequence[dict[str, Any]]) -> float | None:
    """The mean of the last :data:`LAST_EVALS` evaluations (None when there are none)."""
    if not points:
        return None
    last = [p["success_rate"] for p in points[-LAST_EVALS:]]
    return sum(last) / len(last)


def collect(spec: SuiteSpec) -> dict[str, Any]:
    """Returns every task's seeds, curves, numbers and BC baseline as JSON builtins."""
    tasks: dict[str, Any] = {}
    for task in spec.tasks:
        bc_path = spec.out / task / "bc.json"
        bc = json.loads(bc_path.read_text()) if bc_path.is_file() else None
        seeds = {}
        for seed in spec.seeds:
            points = read_curve(spec.out / task / f"seed{seed}")
            seeds[str(seed)] = {
                "score": seed_score(points),
                "env_steps": points[-1]["env_steps"] if points else 0,
                "curve": [[p["env_steps"], p["success_rate"]] for p in points],
            }
        scores = [s["score"] for s in seeds.values() if s["score"] is not None]
        tasks[task] = {
            "seeds": seeds,
            "mean": sum(scores) / len(scores) if scores else None,
            "complete": all(s["env_steps"] >= spec.steps for s in seeds.values()),
            "bc": bc,
            "goal": GOALS.get(task),
        }
    return {"steps": spec.steps, "eval_episodes": spec.eval_episodes, "last_evals": LAST_EVALS,
            "overrides": list(spec.overrides), "goal_per_turn": spec.goal_per_turn,
            "reset_every": spec.reset_every, "tasks": tasks}


def markdown_table(results: dict[str, Any]) -> str:
    """Returns the results as a Markdown table (one row per task, every seed shown)."""
    lines = [f"Success (mean of the last {results['last_evals']} evaluations of {results['eval_episodes']} "
             f"episodes per seed; target {results['steps'] // 1000}k steps)", "",
             "| task | seeds (score @ steps) | mean | BC seeds | BC mean | goal |", "|---|---|---|---|---|---|"]
    for task, t in results["tasks"].items():
        seeds = ", ".join(f"{s}: {_fmt(v['score'])} @ {v['env_steps'] // 1000}k" for s, v in t["seeds"].items())
        bc = t["bc"]
        bc_seeds = ", ".join(f"{x:.2f}" for x in bc["success_seeds"]) if bc else "–"
        lines.append(f"| {task} | {seeds} | {_fmt(t['mean'])}{'' if t['complete'] else ' (running)'} | {bc_seeds} | "
                     f"{_fmt(bc['success'] if bc else None)} | {_fmt(t['goal'])} |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def plot(results: dict[str, Any], out: Path) -> Path:
    """Writes the Figure-2-style plot: one panel per task (the mean over seeds where every seed
    has an evaluation, their spread, and each seed's own curve). Returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = list(results["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        t = results["tasks"][task]
        curves = [np.array(s["curve"], dtype=float) for s in t["seeds"].values() if s["curve"]]
        if curves:
            common = min(len(c) for c in curves)
            steps = curves[0][:common, 0]
            ys = np.stack([c[:common, 1] for c in curves])
            ax.plot(steps, ys.mean(0), color="C0", label=f"resetfree ({len(curves)} seeds)")
            ax.fill_between(steps, ys.min(0), ys.max(0), color="C0", alpha=0.2)
            for c in curves:  # each seed on its own, so one carried further than the others shows
                ax.plot(c[:, 0], c[:, 1], color="C0", lw=0.6, alpha=0.45)
        if t["bc"]:
            ax.axhline(t["bc"]["success"], color="C3", ls="--", label=f"BC ({len(t['bc']['success_seeds'])} seeds)")
        if t["goal"] is not None:
            ax.axhline(t["goal"], color="0.5", ls=":", lw=1, label="goal")
        right = max(results["steps"], 1)
        for i, (label, _steps, value) in enumerate(ANCHORS.get(task, [])):
            ax.plot([right], [value], marker="<>^v"[i % 4], color=f"C{i + 4}", ls="none", label=label, clip_on=False)
        ax.set_title(task)
        ax.set_xlabel("environment steps")
        ax.set_xlim(0, right * 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:.0f}k"))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("success (deployed policy)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_results(spec: SuiteSpec) -> dict[str, Any]:
    """Writes ``results.json``, ``results.md`` and ``suite.png`` for what exists; returns the results."""
    results = collect(spec)
    write_json_atomic(spec.out / "results.json", results)
    (spec.out / "results.md").write_text(markdown_table(results))
    plot(results, spec.out / "suite.png")
    return results
