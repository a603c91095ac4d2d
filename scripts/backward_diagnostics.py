"""What a practice run's backward agent does, read off its latest checkpoint (issue #16).

    python scripts/backward_diagnostics.py RUN_DIR [--starts 5] [--turns 10] [--set K=V ...]

``RUN_DIR`` is one run of the learning suite (``<suite>/<task>/seed<N>``); the task and seed
come from its path, the learner overrides from the suite's ``suite.json`` (plus ``--set``), so
the trainer is rebuilt exactly as the run built it. Prints one JSON object with:

* ``turns``: both agents alternating ``switch.interval``-step turns from ``--starts`` initial
  states, exploring (as in practice), no training. Per agent: turns, turns that started away
  from the agent's target region (forward: not solved; backward: not at the initial region),
  and how many of those reached it at some step.
* ``medal_reward`` / ``vice_reward``: the mean reward per step (and the 10th/90th percentile)
  that the checkpoint's discriminators give to initial states (``--starts`` × 10 resets), goal
  states (the last ``goal_frames`` frames of each forward demo), all forward-demo states, the
  backward demos' states, and the states of the backward turns above.
* ``backward``: the backward agent's logged entropy, its target and α at the checkpoint (from
  ``curve.jsonl``), and the largest entropy its action space allows (``|A|·ln 2``).

Blocks for the roll-outs (about a minute per 10k environment steps on one core).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from learner import checkpoint
from learner.trainer import MedalTrainer
from protocol.messages import BACKWARD, FORWARD
from simulation.nonepisodic import NonEpisodic
from simulation.app.practice import load_task_demos, practice_config, state_spec
from simulation.tasks import make, task_info

logger = logging.getLogger(__name__)

START_SEED = 20_000
"""Seed of roll-out start 0 (start i uses START_SEED + i), apart from evaluation and demo seeds."""


def run_identity(run_dir: Path) -> tuple[str, int, list[str]]:
    """Returns ``(task, seed, overrides)`` of a suite run directory ``<suite>/<task>/seed<N>``.

    Raises ValueError when the path does not have that shape."""
    match = re.fullmatch(r"seed(\d+)", run_dir.name)
    if match is None:
        raise ValueError(f"{run_dir}: expected a suite run directory <suite>/<task>/seed<N>")
    suite_json = run_dir.parent.parent / "suite.json"
    overrides = json.loads(suite_json.read_text())["overrides"] if suite_json.exists() else []
    return run_dir.parent.name, int(match.group(1)), list(overrides)


def rewards(trainer: MedalTrainer, states: np.ndarray) -> dict[str, dict[str, float]]:
    """Returns the MEDAL and VICE reward statistics of ``states`` (rows of the state vector)."""
    obs = {"state": torch.as_tensor(np.asarray(states, np.float32))}
    out = {}
    with torch.no_grad():
        for name, agent in (("medal_reward", BACKWARD), ("vice_reward", FORWARD)):
            r = trainer.reward(agent, obs).numpy()
            out[name] = {"mean": round(float(r.mean()), 3), "p10": round(float(np.percentile(r, 10)), 3),
                         "p90": round(float(np.percentile(r, 90)), 3), "n": len(r)}
    return out


def alternate(trainer: MedalTrainer, task: str, starts: int, turns: int, interval: int) -> tuple[dict, np.ndarray]:
    """Rolls both agents out in alternating turns (exploring) from ``starts`` initial states.

    Returns the per-agent turn tally and the states the backward agent visited."""
    env = NonEpisodic(make(task, obs="state"), reset_every=0)
    tally = {name: {"turns": 0, "started_away": 0, "reached_from_away": 0} for name in ("forward", "backward")}
    visited = []
    for start in range(starts):
        obs, info = env.reset(seed=START_SEED + start)
        at_target = (info["success"], info["backward_success"])
        for turn in range(turns):
            agent = turn % 2
            name, key = ("forward", "success") if agent == FORWARD else ("backward", "backward_success")
            reached = False
            for _ in range(interval):
                action = trainer.agents[agent].act({"state": np.asarray(obs, np.float32)}, explore=True)
                obs, _, _, _, info = env.step(action)
                reached |= bool(info[key])
                if agent == BACKWARD:
                    visited.append(np.asarray(obs, np.float32))
            tally[name]["turns"] += 1
            if not at_target[agent]:
                tally[name]["started_away"] += 1
                tally[name]["reached_from_away"] += int(reached)
            at_target = (info["success"], info["backward_success"])
        logger.info("start %d/%d done", start + 1, starts)
    return tally, np.asarray(visited)


def initial_states(task: str, n: int) -> np.ndarray:
    """Returns ``n`` observations drawn from the task's initial-state distribution."""
    env = NonEpisodic(make(task, obs="state"), reset_every=0)
    return np.asarray([env.reset(seed=START_SEED + 1_000 + i)[0] for i in range(n)], np.float32)


def last_curve_metrics(run_dir: Path) -> dict[str, float]:
    """Returns the metrics of the run's last evaluation point ({} without a curve)."""
    curve = run_dir / "curve.jsonl"
    if not curve.exists():
        return {}
    lines = [line for line in curve.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1]).get("metrics", {}) if lines else {}


def diagnose(run_dir: Path, starts: int, turns: int, extra: list[str]) -> dict[str, Any]:
    """Returns the diagnostics of the module docstring for ``run_dir``. Raises FileNotFoundError
    when the run has no checkpoint."""
    task, seed, overrides = run_identity(run_dir)
    cfg = practice_config(task, seed=seed, overrides=[*overrides, *extra])
    fwd, bwd = load_task_demos(task, "forward"), load_task_demos(task, "backward")
    trainer = MedalTrainer(cfg, state_spec(task), task_info(task).action_dim, (fwd, bwd), seed=seed)
    ckpt = checkpoint.load_latest(run_dir, with_replay=False)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint")
    trainer.load_state_dict(ckpt.state)
    tally, visited = alternate(trainer, task, starts, turns, cfg.switch.interval)
    demo_states = np.asarray(fwd.observations["state"])
    ends = np.flatnonzero(np.asarray(fwd.is_last))
    goal = np.concatenate([demo_states[max(end - cfg.schedule.goal_frames + 1, 0): end + 1] for end in ends])
    sets = {"initial": initial_states(task, 10 * starts), "goal": goal, "forward_demos": demo_states,
            "backward_demos": np.asarray(bwd.observations["state"]), "backward_turns": visited}
    metrics = last_curve_metrics(run_dir)
    return {
        "run": str(run_dir), "checkpoint": ckpt.path.name, "task": task, "seed": seed, "overrides": overrides + extra,
        "turns": tally,
        "rewards": {name: rewards(trainer, states) for name, states in sets.items()},
        "backward": {"entropy": metrics.get("backward/charts/entropy"),
                     "target_entropy": metrics.get("backward/charts/target_entropy"),
                     "alpha": metrics.get("backward/charts/alpha"),
                     "max_entropy": round(task_info(task).action_dim * math.log(2.0), 3)},
        "medal_discriminator": {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("medal/")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a suite run directory <suite>/<task>/seed<N>")
    parser.add_argument("--starts", type=int, default=5, help="initial states to roll out from (default 5)")
    parser.add_argument("--turns", type=int, default=10, help="alternating turns per start (default 10)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="learner override on top of the suite's (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    try:
        result = diagnose(args.run_dir, args.starts, args.turns, args.overrides)
    except (ValueError, FileNotFoundError) as e:
        logger.error("%s", e)
        return 2
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
