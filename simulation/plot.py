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
from typing import Literal

import numpy as np

from simulation.evaluator import EvaluatorError, read_evals

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


def plot_runs(run_dirs: Sequence[Path], out: Path, *, band: Band = "minmax", label: str = "resetfree (MEDAL++)",
              title: str | None = None) -> Path:
    """Plots the runs in ``run_dirs`` (one panel per task) to the PNG ``out``.

    Returns ``out``. Raises ValueError when no run has an evaluation, EvaluatorError for a
    malformed ``evals.csv``. Blocks on rendering and disk I/O; safe off the main thread.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window; safe on a worker thread
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    curves = [read_run(Path(d)) for d in run_dirs]
    tasks = sorted({c.task for c in curves if c.steps.size})
    if not tasks:
        raise ValueError(f"no evaluations in {[str(d) for d in run_dirs]}")
    fig = Figure(figsize=(4.2 * len(tasks), 3.4), layout="constrained")
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks):
        group = [c for c in curves if c.task == task]
        agg = aggregate(group, band)
        ax.plot(agg.steps, agg.mean, color="tab:blue", lw=2, label=f"{label} (n={agg.runs})")
        ax.fill_between(agg.steps, agg.low, agg.high, color="tab:blue", alpha=0.25, lw=0)
        if agg.steps.size == 1:
            ax.plot(agg.steps, agg.mean, "o", color="tab:blue")
        bcs = [c.bc_success for c in group if c.bc_success is not None]
        if bcs:
            ax.axhline(float(np.mean(bcs)), color="tab:gray", ls="--", lw=1.5, label="BC")
        ax.set_title(title or task)
        ax.set_xlabel("environment steps")
        ax.xaxis.set_major_formatter(FuncFormatter(steps_label))
        ax.set_ylabel("success rate")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(out)  # atomic: a viewer never sees half a PNG
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resetfree-plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories (seeds)")
    parser.add_argument("--out", type=Path, default=Path("curves.png"), help="output PNG (default curves.png)")
    parser.add_argument("--band", choices=("minmax", "std"), default="minmax",
                        help="spread over runs: min-max (default) or +-1 std")
    parser.add_argument("--label", default="resetfree (MEDAL++)", help="legend label of the curve")
    parser.add_argument("--title", default=None, help="panel title (default: the task)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs ``resetfree-plot``. Returns 0, or 1 with one line on stderr on a reported error."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        out = plot_runs(args.run_dirs, args.out, band=args.band, label=args.label, title=args.title)
    except (ValueError, EvaluatorError, OSError) as e:
        print(f"resetfree-plot: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
