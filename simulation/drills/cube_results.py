"""The results of ``resetfree-bench cube-ood`` (:mod:`simulation.drills.cube_experiment`): how a
policy is scored on both splits (:func:`evaluate_source`, the record every ``eval.json`` and
``evals/step-<N>.json`` holds), and what the out directory holds, gathered into
``results.json``, ``results.md`` (split × method × seed, means, the paper's numbers,
interventions) and ``ood_vs_steps.png``."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from protocol.atomic import write_json_atomic, write_text_atomic
from simulation.drills.cube_config import TASK, CubeExperimentConfig, ExperimentError

logger = logging.getLogger(__name__)

SPLITS = ("id", "ood")
PAPER = {"id": {"bc": 1.0, "practised": 1.0}, "ood": {"bc": 0.20, "practised": 0.75}}
"""MEDAL++ (Sharma et al. 2023), real Franka, 20 trials per cell, after ~300k steps."""


def read_json(path: Path) -> dict[str, Any] | None:
    """Returns the JSON object at ``path``, None when there is none. Raises ExperimentError when unreadable."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ExperimentError(f"{path}: unreadable ({e}); delete it to redo that step") from e


def evaluate_source(source: Any, cfg: CubeExperimentConfig) -> dict[str, Any]:
    """Evaluates a :class:`simulation.tools.policies.PolicySource` on both splits (``cfg.trials``
    episodes each, the shared starts); returns ``{split: EvalResult dict}``. Blocks."""
    from simulation.evaluation import evaluate
    from simulation.app.run_commands import EVAL_SEED

    policy = source.build()

    def act(observation: Any) -> np.ndarray:
        return policy(observation if isinstance(observation, Mapping) else {"state": observation})

    results = {}
    for split in SPLITS:
        result = evaluate(act, TASK, episodes=cfg.trials, obs=cfg.obs, seed=EVAL_SEED, split=split)
        results[split] = {"success_rate": result.success_rate, "successes": result.successes,
                          "first_success": result.first_success, "wall_s": round(result.wall_s, 3)}
    return results


def collect(cfg: CubeExperimentConfig) -> dict[str, Any]:
    """Returns the results of what exists: the table, every curve, the interventions."""
    table: dict[str, dict[str, dict[str, Any]]] = {s: {"bc": {}, "practised": {}} for s in SPLITS}
    practice: dict[str, Any] = {}
    for seed in cfg.seeds:
        bc = read_json(cfg.out / "bc" / f"seed{seed}" / "eval.json")
        run_dir = cfg.practice_dir(seed)
        curve = [read_json(p) for p in sorted((run_dir / "evals").glob("step-*.json"))]
        points = [[c["env_steps"], c["id"]["success_rate"], c["ood"]["success_rate"]] for c in curve if c]
        final = points[-1] if points and points[-1][0] >= cfg.steps else None
        practice[str(seed)] = {"env_steps": points[-1][0] if points else 0, "curve": points,
                               "interventions": read_json(run_dir / "interventions.json")}
        for i, split in enumerate(SPLITS):
            table[split]["bc"][str(seed)] = bc[split]["success_rate"] if bc else None
            table[split]["practised"][str(seed)] = final[1 + i] if final else None
    for split in SPLITS:
        for method, cell in table[split].items():
            values = [v for v in cell.values() if v is not None]
            table[split][method] = {"seeds": cell, "mean": float(np.mean(values)) if values else None,
                                    "paper": PAPER[split][method]}
    complete = all(v is not None for s in SPLITS for m in table[s].values() for v in m["seeds"].values())
    return {"settings": cfg.settings(), "complete": complete, "table": table, "practice": practice}


def markdown(results: dict[str, Any]) -> str:
    """Returns ``results.md``: the success table and the interventions per seed."""
    s = results["settings"]
    seeds = [str(x) for x in s["seeds"]]
    lines = [f"# Cube grasp, ID vs OOD starts ({s['obs']} observations)", "",
             f"Success over {s['trials']} trials per cell; practised = the policy after {s['steps']:,} autonomous "
             f"steps (robot profile, no scheduled environment reset{_operator_text(s)}); BC = {s['bc_steps']:,} "
             f"steps on the same "
             f"{s['demos']} forward demos.{'' if results['complete'] else ' **Incomplete** (– not run yet).'}", "",
             "| split | method | " + " | ".join(f"seed {x}" for x in seeds) + " | mean | paper |",
             "|---|---|" + "---|" * len(seeds) + "---|---|"]
    for split, methods in results["table"].items():
        for method, cell in methods.items():
            values = " | ".join(_pct(cell["seeds"][x]) for x in seeds)
            lines.append(f"| {split.upper()} | {method} | {values} | {_pct(cell['mean'])} | {_pct(cell['paper'])} |")
    lines += ["", "## Interventions needed (backward turns that left the cube out of reach)", "",
              "| seed | env steps | backward turns | failed turns | interventions | out of reach at the end |",
              "|---|---|---|---|---|---|"]
    for seed, p in results["practice"].items():
        iv = p["interventions"]
        if iv:
            stop = f" (replay stopped at {iv['diverged_at']:,})" if iv.get("diverged_at") is not None else ""
            lines.append(f"| {seed} | {iv['env_steps']:,} | {iv['turns']} | {iv['failed_turns']} | "
                         f"{iv['interventions']}{stop} | {'yes' if iv['out_of_reach_at_end'] else 'no'} |")
        else:
            lines.append(f"| {seed} | {p['env_steps']:,} | – | – | – | – |")
    first = next((p["interventions"] for p in results["practice"].values() if p["interventions"]), None)
    if first:
        lines += ["", f"Reachable: {first['region']}."]
    return "\n".join(lines) + "\n"


def _operator_text(settings: dict[str, Any]) -> str:
    if settings.get("operator"):
        return "; an emulated operator reset the scene whenever a backward turn left the cube out of reach"
    return "; nobody put a lost cube back"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def plot(results: dict[str, Any], out: Path) -> Path:
    """Writes OOD (and ID, dashed) success vs practice steps, per seed and their mean, with
    BC's mean as a horizontal line and the paper's numbers as marks. Returns ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    from simulation.app.plot import save_figure, steps_label

    fig, ax = plt.subplots(figsize=(10.0, 5.0))
    curves = [np.array(p["curve"], dtype=float) for p in results["practice"].values() if p["curve"]]
    for i, curve in enumerate(curves):
        ax.plot(curve[:, 0], curve[:, 2], color="C0", alpha=0.35, lw=1, label="OOD, each seed" if i == 0 else None)
    if curves:
        # seeds stopped and resumed at different steps: their mean on the union of their
        # evaluation steps (each curve interpolated), up to the shortest one's end
        grid = np.unique(np.concatenate([c[:, 0] for c in curves]))
        grid = grid[grid <= min(c[-1, 0] for c in curves)]
        for column, color, style, split in ((2, "C0", "-", "OOD"), (1, "C2", "--", "ID")):
            mean = np.mean([np.interp(grid, c[:, 0], c[:, column]) for c in curves], axis=0)
            ax.plot(grid, mean, color=color, ls=style, lw=2.5 if column == 2 else 1.5,
                    marker="o" if column == 2 else None, label=f"practised, {split} (mean of {len(curves)})")
    for split, color, style in (("ood", "C3", "-"), ("id", "C3", ":")):
        mean = results["table"][split]["bc"]["mean"]
        if mean is not None:
            ax.axhline(mean, color=color, ls=style, lw=1.5, label=f"BC, {split.upper()} (mean)")
    right = max(results["settings"]["steps"], 1)
    ax.plot([right], [PAPER["ood"]["practised"]], marker="*", ms=12, color="C0", ls="none",
            label="paper: practised, OOD", clip_on=False)
    ax.plot([right], [PAPER["ood"]["bc"]], marker="*", ms=12, color="C3", ls="none", label="paper: BC, OOD",
            clip_on=False)
    ax.set(xlabel="autonomous practice steps", ylabel="success", xlim=(0, right * 1.03), ylim=(-0.03, 1.03),
           title=f"cube grasp from OOD starts ({results['settings']['obs']})")
    ax.xaxis.set_major_formatter(FuncFormatter(steps_label))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    try:
        return save_figure(fig, out)
    finally:
        plt.close(fig)


def write_results(cfg: CubeExperimentConfig) -> dict[str, Any]:
    """Writes ``results.json``, ``results.md`` and ``ood_vs_steps.png``; returns the results."""

    results = collect(cfg)
    write_json_atomic(cfg.out / "results.json", results)
    write_text_atomic(cfg.out / "results.md", markdown(results))
    plot(results, cfg.out / "ood_vs_steps.png")
    return results
