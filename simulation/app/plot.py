"""``resetfree-plot RUN_DIR...``: success rate vs environment steps, as in MEDAL++'s Figure 2.

Runs are grouped by task (one panel each). Within a panel the curve is the mean success
rate over the runs (seeds) with a band (min–max, or ±1 std), each run interpolated onto the
evaluation steps they all cover; the BC baseline (``bc.json``) is a dashed horizontal line.

    resetfree-plot runs/seed0 runs/seed1 runs/seed2 --out tabletop.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from simulation.cli import doc_help
from simulation.app.evaluator import EvaluatorError, read_evals

logger = logging.getLogger(__name__)

Band = Literal["minmax", "std"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunCurve:
    """One run's evaluations and metadata, as read from its directory."""

    run_dir: Path
    """The run directory."""
    task: str
    """Task name from ``run.json`` (``unknown`` when absent)."""
    steps: np.ndarray
    """Evaluation env steps, increasing."""
    success: np.ndarray
    """Success rate at each step."""
    bc_success: float | None
    """BC baseline success rate from ``bc.json``, or None."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Aggregate:
    """Mean and band over several runs on a common step grid."""

    steps: np.ndarray
    """Grid of env steps."""
    mean: np.ndarray
    """Mean success over runs."""
    low: np.ndarray
    """Lower edge of the band."""
    high: np.ndarray
    """Upper edge of the band."""
    runs: int
    """Number of runs aggregated."""


def read_run(run_dir: Path) -> RunCurve:
    """Reads ``evals.csv``, ``run.json`` and ``bc.json`` of ``run_dir``.

    Returns a :class:`RunCurve` (empty arrays when nothing was evaluated yet). Raises
    EvaluatorError for a malformed ``evals.csv`` and ValueError for a malformed JSON file.
    """
    records = read_evals(run_dir / "evals.csv")
    task = "unknown"
    meta_path = run_dir / "run.json"
    if meta_path.exists():
        task = str(_read_json(meta_path).get("task", task))
    bc = None
    bc_path = run_dir / "bc.json"
    if bc_path.exists():
        value = _read_json(bc_path).get("success_rate")
        bc = float(value) if value is not None else None
    steps = np.array([r.step for r in records], dtype=np.float64)
    success = np.array([r.success_rate for r in records], dtype=np.float64)
    return RunCurve(run_dir=run_dir, task=task, steps=steps, success=success, bc_success=bc)


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def aggregate(curves: Sequence[RunCurve], band: Band = "minmax") -> Aggregate:
    """Aggregates runs onto the union of their evaluation steps up to the shortest run's end.

    Each run is linearly interpolated between its own evaluations (a single-run input is
    returned as is). Returns an :class:`Aggregate`; raises ValueError when no run has an
    evaluation or ``band`` is unknown.
    """
    if band not in ("minmax", "std"):
        raise ValueError(f"band: must be minmax or std, got {band!r}")
    curves = [c for c in curves if c.steps.size]
    if not curves:
        raise ValueError("no run has any evaluation")
    end = min(float(c.steps[-1]) for c in curves)
    start = max(float(c.steps[0]) for c in curves)
    grid = np.unique(np.concatenate([c.steps for c in curves]))
    grid = grid[(grid >= start) & (grid <= end)]
    if grid.size == 0:  # runs evaluated at disjoint steps: fall back to the shortest run's
        grid = min(curves, key=lambda c: float(c.steps[-1])).steps
    values = np.stack([np.interp(grid, c.steps, c.success) for c in curves])
    mean = values.mean(axis=0)
    if band == "minmax":
        low, high = values.min(axis=0), values.max(axis=0)
    else:
        std = values.std(axis=0)
        low, high = np.clip(mean - std, 0.0, 1.0), np.clip(mean + std, 0.0, 1.0)
    return Aggregate(steps=grid, mean=mean, low=low, high=high, runs=len(curves))


def steps_label(steps: float, _position: object = None) -> str:
    """Formats an axis tick of environment steps compactly (``20k``, ``1.5M``): full numbers
    overlapped one another at a panel's width."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(steps) >= scale:
            return f"{steps / scale:g}{suffix}"
    return f"{steps:g}"


FIGURE_DPI = 100
"""Pixels per inch of the PNG: a one-task figure is 1000 x 700 pixels."""
PANEL_SIZE = (10.0, 7.0)
"""Inches of a one-task figure; each further task adds :data:`EXTRA_PANEL_WIDTH`."""
EXTRA_PANEL_WIDTH = 6.0
"""Inches of width each panel after the first adds."""


def group_by_task(curves: Sequence[RunCurve]) -> tuple[dict[str, list[RunCurve]], list[RunCurve]]:
    """Returns the runs with evaluations grouped by task (tasks sorted; one panel each) and
    the runs left out because they have no evaluation yet."""
    groups: dict[str, list[RunCurve]] = {}
    for curve in curves:
        if curve.steps.size:
            groups.setdefault(curve.task, []).append(curve)
    empty = [c for c in curves if not c.steps.size]
    return dict(sorted(groups.items())), empty


def build_figure(curves: Sequence[RunCurve], *, band: Band = "minmax", label: str = "resetfree (MEDAL++)",
                 title: str | None = None) -> Any:
    """Returns the matplotlib ``Figure`` of ``curves``: one panel per task, the x-axis from 0
    steps. Raises ValueError when no run has an evaluation."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window; safe on a worker thread
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    groups, _ = group_by_task(curves)
    if not groups:
        raise ValueError(f"no evaluations in {[str(c.run_dir) for c in curves]}")
    width, height = PANEL_SIZE
    fig = Figure(figsize=(width + EXTRA_PANEL_WIDTH * (len(groups) - 1), height), layout="constrained")
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, (task, group) in zip(axes, groups.items()):
        agg = aggregate(group, band)
        ax.plot(agg.steps, agg.mean, color="tab:blue", lw=2, label=f"{label} (n={agg.runs})")
        ax.fill_between(agg.steps, agg.low, agg.high, color="tab:blue", alpha=0.25, lw=0)
        if agg.steps.size == 1:
            ax.plot(agg.steps, agg.mean, "o", color="tab:blue")
        bcs = [c.bc_success for c in group if c.bc_success is not None]
        if bcs:
            ax.axhline(float(np.mean(bcs)), color="tab:gray", ls="--", lw=1.5, label="BC")
        ax.set_title(task if title is None else (title if len(groups) == 1 else f"{title}: {task}"), fontsize=15)
        ax.set_xlabel("environment steps", fontsize=13)
        ax.xaxis.set_major_formatter(FuncFormatter(steps_label))
        # from 0, so one evaluation at 10k is not a zoom onto 9.5k-10.5k, and runs read
        # as the distance travelled since the start
        ax.set_xlim(0, max(float(agg.steps[-1]), 1.0) * 1.05)
        ax.set_ylabel("success rate", fontsize=13)
        ax.tick_params(labelsize=12)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=12)
    return fig


def plot_runs(run_dirs: Sequence[Path], out: Path, *, band: Band = "minmax", label: str = "resetfree (MEDAL++)",
              title: str | None = None) -> Path:
    """Plots the runs in ``run_dirs`` (one panel per task) to the PNG ``out``.

    Returns ``out``. Raises ValueError when no run has an evaluation, EvaluatorError for a
    malformed ``evals.csv``. Blocks on rendering and disk I/O; safe off the main thread.
    """
    fig = build_figure([read_run(Path(d)) for d in run_dirs], band=band, label=label, title=title)
    return save_figure(fig, out)


def save_figure(fig: Any, out: Path) -> Path:
    """Writes ``fig`` to the PNG ``out`` atomically (a viewer never sees half a PNG); returns
    ``out``. Blocks on rendering and disk I/O."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=FIGURE_DPI)
    tmp.replace(out)
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resetfree-plot", description=doc_help(__doc__)[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories (seeds)")
    parser.add_argument("--out", type=Path, default=Path("curves.png"), help="output PNG (default curves.png)")
    parser.add_argument("--band", choices=("minmax", "std"), default="minmax",
                        help="spread over runs: min-max (default) or +-1 std")
    parser.add_argument("--label", default="resetfree (MEDAL++)", help="legend label of the curve")
    parser.add_argument("--title", default=None,
                        help="panel title (default: the task; with several tasks it is prefixed to each)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs ``resetfree-plot``. Returns 0, or 1 with one line on stderr on a reported error.

    Runs of different tasks get one panel each; what was plotted (tasks, runs per task) is
    printed, and a run without evaluations is named on stderr rather than dropped silently.
    """
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        curves = [read_run(d) for d in args.run_dirs]
        groups, empty = group_by_task(curves)
        for curve in empty:
            if groups:
                print(f"resetfree-plot: {curve.run_dir} ({curve.task}) has no evaluations yet; left out",
                      file=sys.stderr)
        fig = build_figure(curves, band=args.band, label=args.label, title=args.title)
        out = save_figure(fig, args.out)
    except (ValueError, EvaluatorError, OSError) as e:
        print(f"resetfree-plot: error: {e}", file=sys.stderr)
        return 1
    panels = ", ".join(f"{task} ({len(group)} run{'s' if len(group) != 1 else ''})" for task, group in groups.items())
    print(f"wrote {out}: {panels}" if len(groups) == 1
          else f"wrote {out}: {len(groups)} panels, one per task: {panels}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
