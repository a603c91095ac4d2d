"""Sweep door's start angles with practised checkpoints: which starts fail, and how (issue #16).

    python scripts/door_start_sweep.py runs/suite/door/seed1/ckpt-300010 [more checkpoints] [--angles 20]

Door's evaluation draws the open angle from EARL's ``-pi/3 + U(0, pi/20)``; a 20-episode
evaluation samples it at random. This runs each checkpoint's deployed forward policy (the
mean action, EARL's 300-step horizon) from ``--angles`` evenly spaced angles across that
range, and prints one JSON line per checkpoint: per start, success, the first successful step,
the door's final angle, the closest the hand came to the handle and the hand's final position.
The first line gives the start angles of the forward demonstrations, for comparison. The
checkpoints must come from runs of door's preset (other ``--set`` overrides are passed on).
Blocks (~5 s per checkpoint on one core).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys

import numpy as np
import torch

from learner import checkpoint
from learner.trainer import MedalTrainer
from protocol.messages import FORWARD
from simulation.app.practice import load_task_demos, practice_config, state_spec
from simulation.tasks import make
from simulation.tasks.door import ANGLE_NOISE, INIT_ANGLE


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="learner checkpoint directories (ckpt-N) of door runs")
    p.add_argument("--angles", type=int, default=20, help="start angles across the range (default 20)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="the runs' config overrides over door's preset (repeatable)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    demos = (load_task_demos("door", "forward"), load_task_demos("door", "backward"))
    env = make("door")
    env.reset(seed=0)
    firsts = demos[0].observations["state"][np.asarray(demos[0].is_first, dtype=bool)]
    print(json.dumps({"demo_start_angles": [round(env.angle_for_handle(s[4:6]), 4) for s in firsts],
                      "range": [round(INIT_ANGLE, 4), round(INIT_ANGLE + ANGLE_NOISE, 4)]}), flush=True)
    trainer = MedalTrainer(practice_config("door", seed=0, overrides=args.overrides), state_spec("door"),
                           demos[0].action_dim, demos, seed=0)
    for path in args.checkpoints:
        trainer.load_state_dict(checkpoint.load_checkpoint(path, with_replay=False).state)
        agent = trainer.agents[FORWARD]
        rows = []
        for angle in INIT_ANGLE + np.linspace(0.0, ANGLE_NOISE, args.angles):
            obs, _ = env.reset(seed=0, options={"init": "initial", "door_angle": float(angle)})
            first, closest = None, math.inf
            for step in range(env.info.eval_horizon):
                obs, _, _, _, info = env.step(agent.act({"state": np.asarray(obs, np.float32)}, explore=False))
                closest = min(closest, float(np.linalg.norm(obs[0:3] - obs[4:7])))
                if info.get("success") and first is None:
                    first = step + 1
            rows.append({"angle": round(float(angle), 4), "success": first is not None, "first_success": first,
                         "final_angle": round(env.door_angle(), 3), "closest_hand_handle": round(closest, 3),
                         "final_hand": [round(float(x), 3) for x in obs[0:3]]})
        print(json.dumps({"checkpoint": str(path), "success": float(np.mean([r["success"] for r in rows])),
                          "starts": rows}), flush=True)
    env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
