"""resetfree-plot: evals.csv round trip, aggregation over seeds, the PNG and the CLI."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from simulation.app.evaluator import EvalRecord, EvaluatorError, append_eval, read_evals
from simulation.app.plot import RunCurve, aggregate, build_figure, main, plot_runs, read_run, steps_label


def _run(tmp: Path, name: str, points: list[tuple[int, float]], *, task: str = "tabletop",
         bc: float | None = None) -> Path:
    run = tmp / name
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"task": task}))
    for step, success in points:
        append_eval(run / "evals.csv", EvalRecord(step=step, success_rate=success, mean_return=success * 10,
                                                  returns=(success * 10, 0.0), wall_s=step / 100,
                                                  weights_version=step // 2))
    if bc is not None:
        (run / "bc.json").write_text(json.dumps({"success_rate": bc}))
    return run


def _curve(steps: list[float], success: list[float]) -> RunCurve:
    return RunCurve(run_dir=Path("."), task="t", steps=np.array(steps), success=np.array(success), bc_success=None)


def test_evals_csv_round_trip_and_append(tmp_path: Path) -> None:
    path = tmp_path / "evals.csv"
    first = EvalRecord(step=200, success_rate=0.5, mean_return=3.25, returns=(6.5, 0.0), wall_s=1.5,
                       weights_version=40)
    append_eval(path, first)
    append_eval(path, EvalRecord(step=100, success_rate=0.0, mean_return=0.0, returns=(0.0, 0.0), wall_s=0.5))
    rows = read_evals(path)
    assert [r.step for r in rows] == [100, 200]  # sorted by step
    assert rows[1] == first and rows[0].weights_version == -1
    assert path.read_text().splitlines()[0] == "step,success_rate,mean_return,returns,wall_s,weights_version"
    assert read_evals(tmp_path / "missing.csv") == []


def test_malformed_row_names_it(tmp_path: Path) -> None:
    path = tmp_path / "evals.csv"
    path.write_text("step,success_rate,mean_return,returns,wall_s\nten,0.5,1,1 1,2\n")
    with pytest.raises(EvaluatorError, match="ten"):
        read_evals(path)


def test_aggregate_mean_and_minmax_on_common_steps() -> None:
    a = _curve([100, 200, 300], [0.0, 0.5, 1.0])
    b = _curve([100, 200, 300, 400], [0.2, 0.3, 0.4, 0.9])
    agg = aggregate([a, b])
    np.testing.assert_array_equal(agg.steps, [100, 200, 300])  # up to the shortest run
    np.testing.assert_allclose(agg.mean, [0.1, 0.4, 0.7])
    np.testing.assert_allclose(agg.low, [0.0, 0.3, 0.4])
    np.testing.assert_allclose(agg.high, [0.2, 0.5, 1.0])
    assert agg.runs == 2


def test_aggregate_interpolates_between_evaluations_and_std_band() -> None:
    a = _curve([0, 200], [0.0, 1.0])
    b = _curve([0, 100, 200], [0.0, 1.0, 1.0])
    agg = aggregate([a, b], band="std")
    np.testing.assert_array_equal(agg.steps, [0, 100, 200])
    np.testing.assert_allclose(agg.mean, [0.0, 0.75, 1.0])  # a is 0.5 at 100 by interpolation
    np.testing.assert_allclose(agg.high - agg.mean, [0.0, 0.25, 0.0])


def test_aggregate_refuses_nothing_and_bad_band() -> None:
    with pytest.raises(ValueError, match="no run"):
        aggregate([_curve([], [])])
    with pytest.raises(ValueError, match="band"):
        aggregate([_curve([1], [0.0])], band="iqr")  # type: ignore[arg-type]


def test_plot_writes_png_with_panels_per_task_and_bc(tmp_path: Path) -> None:
    runs = [_run(tmp_path, "s0", [(100, 0.0), (200, 0.5)], bc=0.2),
            _run(tmp_path, "s1", [(100, 0.1), (200, 0.7)], bc=0.4),
            _run(tmp_path, "door", [(100, 0.3)], task="door")]
    curve = read_run(runs[0])
    assert curve.task == "tabletop" and curve.bc_success == 0.2 and list(curve.steps) == [100, 200]
    out = plot_runs(runs, tmp_path / "fig" / "curves.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not list(out.parent.glob("*.tmp*"))  # written atomically


def test_cli_reports_runs_without_evaluations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty), "--out", str(tmp_path / "x.png")]) == 1
    assert "no evaluations" in capsys.readouterr().err
    run = _run(tmp_path, "r", [(10, 1.0)])
    assert main([str(run), "--out", str(tmp_path / "y.png"), "--band", "std"]) == 0
    assert (tmp_path / "y.png").exists()


def test_step_ticks_are_compact() -> None:
    assert [steps_label(x) for x in (0, 500, 20_000, 150_000, 1_500_000)] == ["0", "500", "20k", "150k", "1.5M"]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_one_evaluation_is_plotted_from_step_zero_on_a_readable_image(tmp_path: Path) -> None:
    run = _run(tmp_path, "r", [(10_000, 0.5)])
    fig = build_figure([read_run(run)])
    left, right = fig.axes[0].get_xlim()
    assert left == 0 and 10_000 < right <= 11_000  # not a zoom onto 9.5k-10.5k around the point
    out = plot_runs([run], tmp_path / "curves.png")
    assert _png_size(out) == (1000, 700)


def test_runs_of_different_tasks_get_a_panel_each_and_the_cli_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = [_run(tmp_path, "door0", [(100, 0.2), (200, 0.4)], task="door"),
            _run(tmp_path, "door1", [(100, 0.3), (200, 0.5)], task="door"),
            _run(tmp_path, "peg0", [(100, 0.1)], task="peg"),
            _run(tmp_path, "cube0", [], task="cube")]  # nothing evaluated yet
    fig = build_figure([read_run(r) for r in runs], title="seeds")
    assert [ax.get_title() for ax in fig.axes] == ["seeds: door", "seeds: peg"]
    assert main([*map(str, runs), "--out", str(tmp_path / "c.png")]) == 0
    captured = capsys.readouterr()
    assert "2 panels, one per task: door (2 runs), peg (1 run)" in captured.out
    assert "cube0 (cube) has no evaluations yet; left out" in captured.err
    width, height = _png_size(tmp_path / "c.png")
    assert width > 1000 and height == 700  # wider for the second panel
