"""``resetfree-eval``: evaluate a policy on the Franka or a simulated robot, trial by trial.

    resetfree-eval --robot sim:cube --policy runs/cube --trials 20 --split ood
    resetfree-eval --robot sim:cube --policy bc:demos/cube_forward.npz --trials 20 --split ood
    resetfree-eval --robot franka --camera wrist=SERIAL --camera third_person=SERIAL \\
        --policy runs/cube --trials 20 --split id

``--policy`` is a learner run directory or ``ckpt-N`` directory (the ``--agent`` actor,
default forward), a BC checkpoint directory, or ``bc:DEMOS.npz``: train ``learner.bc`` on
those demos with the same encoder architecture (``--profile``/``--set network.*``), save it to
``OUT/bc-policy/`` (reusable as ``--policy OUT/bc-policy``) and evaluate it.

Each trial: the object is placed (simulated: a reset to the ``--split`` start set; real: the
arm goes home and the operator places the object, then presses Enter), the policy runs for
the horizon at ``--hz`` with the runtime's safety shield in front of every action, and the
outcome is recorded (simulated: the task's success at any step; real: the operator answers
y/n). ``OUT/trials.csv`` gets a row per trial as it ends; ``OUT/summary.json`` (success rate,
per-trial success and steps) is written at the end, also after Ctrl-C.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hardware.interfaces import HardwareError
from learner.bc import BCConfig
from learner.config import add_config_arguments, config_from_args
from protocol.atomic import write_json_atomic
from protocol.demos import DemoFormatError, load_demos
from runtime.shield import Shield
from simulation.cli import doc_help
from simulation.tools.policies import Policy, PolicyLoadError, PolicySource, arrays_obs_spec, read_policy, train_bc_policy
from simulation.tools.rig import Printer, Rig, RigConfig, Ticker, build_rig, parse_camera
from simulation.tasks import task_info
from simulation.tasks.base import SimulationError

logger = logging.getLogger(__name__)

Prompt = Callable[[str], str]
"""Asks the operator a question and returns the answer (``input`` in the CLI)."""
REAL_HORIZON = 100
"""Default steps per trial on the real robot (the cube grasp's eval horizon)."""
CSV_FIELDS = ("trial", "split", "success", "steps", "first_success", "holds", "clipped_ticks", "wall_s")


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """One evaluation session."""

    out: Path
    """Directory for ``trials.csv`` and ``summary.json``."""
    trials: int = 20
    """Trials to run."""
    split: str = "id"
    """Start set: ``id`` (the demos' range) or ``ood`` (outside it)."""
    horizon: int = REAL_HORIZON
    """Steps per trial."""

    def __post_init__(self) -> None:
        if self.trials <= 0:
            raise ValueError(f"trials: must be positive, got {self.trials}")
        if self.split not in ("id", "ood"):
            raise ValueError(f"split: must be 'id' or 'ood', got {self.split!r}")
        if self.horizon <= 0:
            raise ValueError(f"horizon: must be positive, got {self.horizon}")


@dataclass(frozen=True, kw_only=True)
class Trial:
    """The outcome of one trial."""

    trial: int
    """1-based trial number."""
    split: str
    """Start set of the trial."""
    success: bool
    """Task success (simulated: at any step; real: the operator's answer)."""
    steps: int
    """Steps run."""
    first_success: int | None
    """Step of the first success (simulated only)."""
    holds: int
    """Ticks the shield held (stale sensors, malformed actions)."""
    clipped_ticks: int
    """Ticks on which the shield clipped the policy's action."""
    wall_s: float
    """Seconds the trial's policy rollout took."""


@dataclass
class EvalSummary:
    """What ``summary.json`` holds."""

    policy: str
    kind: str
    robot: str
    split: str
    horizon: int
    trials: list[Trial] = field(default_factory=list)
    interrupted: bool = False
    overruns: int = 0
    shield: dict[str, int] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        """Fraction of finished trials that succeeded (0 when none finished)."""
        return sum(t.success for t in self.trials) / len(self.trials) if self.trials else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Returns the JSON form: success rate, counts, per-trial success and steps."""
        return {"policy": self.policy, "kind": self.kind, "robot": self.robot, "split": self.split,
                "horizon": self.horizon, "trials": len(self.trials),
                "successes": sum(t.success for t in self.trials), "success_rate": self.success_rate,
                "per_trial": [asdict(t) for t in self.trials], "interrupted": self.interrupted,
                "overruns": self.overruns, "shield": self.shield,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def run_trials(rig: Rig, policy: Policy, config: EvalConfig, *, prompt: Prompt = input,
               out: Printer = print) -> EvalSummary:
    """Runs ``config.trials`` trials of ``policy`` on the connected ``rig`` and writes
    ``trials.csv`` (a row per trial) and ``summary.json``. Blocks for the session; Ctrl-C
    ends it early (summary written, ``interrupted`` set).

    Returns the :class:`EvalSummary`.

    Raises:
        HardwareError: when a device fails (rows already written stay).
        PolicyLoadError: when the observation does not fit the policy.
    """
    config.out.mkdir(parents=True, exist_ok=True)
    summary = EvalSummary(policy=str(policy.path), kind=policy.kind, robot=rig.config.robot,
                          split=config.split, horizon=config.horizon)
    shield = Shield(rig.shield_config())
    ticker = Ticker(rig.config.hz)
    with open(config.out / "trials.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        try:
            for number in range(1, config.trials + 1):
                _place(rig, config, number, prompt, out)
                trial = _rollout(rig, policy, shield, ticker, config, number)
                if not rig.config.is_sim:
                    trial = Trial(**{**asdict(trial), "success": _ask_success(prompt)})
                summary.trials.append(trial)
                writer.writerow(asdict(trial))
                f.flush()
                out(f"trial {number}/{config.trials}: {'success' if trial.success else 'failure'} "
                    f"({trial.steps} steps; {summary.success_rate:.0%} so far)")
        except KeyboardInterrupt:
            summary.interrupted = True
            out("interrupted (Ctrl-C): writing the summary of the finished trials")
        finally:
            rig.robot.stop()
            summary.overruns, summary.shield = ticker.overruns, shield.counters.snapshot()
    write_json_atomic(config.out / "summary.json", summary.to_dict(), indent=2)
    return summary


def _place(rig: Rig, config: EvalConfig, number: int, prompt: Prompt, out: Printer) -> None:
    if rig.config.is_sim:
        rig.reset_sim({"init": "initial", "split": config.split})
        return
    out(f"trial {number}/{config.trials}: homing the arm ...")
    rig.robot.home()
    region = "inside the demos' range" if config.split == "id" else "OUTSIDE the demos' range"
    prompt(f"trial {number}/{config.trials}: place the object {region}, then press Enter ")


def _rollout(rig: Rig, policy: Policy, shield: Shield, ticker: Ticker, config: EvalConfig,
             number: int) -> Trial:
    started = time.monotonic()
    observation = rig.observe()
    first_success: int | None = None
    holds = clipped = 0
    ticker.start()
    for step in range(1, config.horizon + 1):
        action = policy(observation.arrays)
        result = shield.filter(action, observation.state, time.monotonic(), observation.frame_ages)
        holds += int(result.held)
        clipped += int(bool(result.reasons) and not result.held)
        rig.robot.send_action(result.command)
        ticker.wait()
        observation = rig.observe()
        if first_success is None and rig.task_success():
            first_success = step
    return Trial(trial=number, split=config.split, success=first_success is not None, steps=config.horizon,
                 first_success=first_success, holds=holds, clipped_ticks=clipped,
                 wall_s=round(time.monotonic() - started, 3))


def _ask_success(prompt: Prompt) -> bool:
    while True:
        answer = prompt("success (object lifted >= 5 cm in a closed grasp)? [y/n] ").strip().lower()
        if answer in ("y", "yes", "n", "no"):
            return answer.startswith("y")


# ---------------------------------------------------------------------- policy resolution
def resolve_policy(args: argparse.Namespace, out_dir: Path, out: Printer) -> PolicySource:
    """Reads ``--policy`` (training the BC baseline first for ``bc:DEMOS.npz``).

    Raises PolicyLoadError, DemoFormatError or ValueError with a one-line reason.
    """
    if not args.policy.startswith("bc:"):
        return read_policy(args.policy, agent=args.agent)
    demos_path = args.policy[3:]
    demos = load_demos(demos_path)
    if args.profile is None:
        args.profile = "robot" if args.robot == "franka" else "sim"
    net_config = config_from_args(args).network
    bc_config = BCConfig(steps=args.bc_steps, batch_size=args.bc_batch_size, seed=args.seed,
                         log_every=max(1, args.bc_steps // 10))
    out(f"training BC on {demos_path} ({demos.num_transitions} transitions, {args.bc_steps} steps) ...")
    source = train_bc_policy(demos, out_dir / "bc-policy", net_config=net_config, bc_config=bc_config,
                             demos_path=str(demos_path))
    out(f"BC policy saved to {source.path} (reuse it with --policy {out_dir / 'bc-policy'})")
    return source


def policy_obs(source: PolicySource) -> str:
    """``state`` for a policy trained on a task's state vector (it runs on a simulated robot in
    state mode), else ``pixels``."""
    return "state" if source.obs_spec is not None and "state" in source.obs_spec else "pixels"


def _build_policy(source: PolicySource, rig: Rig) -> Policy:
    robot_spec = arrays_obs_spec(rig.observe().arrays)
    if source.obs_spec is None:
        return source.build(robot_spec)
    for key, (shape, dtype) in source.obs_spec.items():
        if key not in robot_spec:
            raise PolicyLoadError(f"the policy needs observation {key!r}; {rig.config.robot} gives "
                                  f"{sorted(robot_spec)} (name the cameras with --camera {key}=SERIAL)")
        if tuple(robot_spec[key][0]) != tuple(shape):
            raise PolicyLoadError(f"the policy needs {key} {tuple(shape)}, {rig.config.robot} gives "
                                  f"{robot_spec[key][0]} (check --image-size)")
    return source.build()


# ---------------------------------------------------------------------- argparse
def _parser() -> argparse.ArgumentParser:
    description, epilog = doc_help(__doc__)  # the first paragraph once, then the rest
    parser = argparse.ArgumentParser(prog="resetfree-eval", description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--robot", required=True, help="franka, or sim:TASK (e.g. sim:cube)")
    parser.add_argument("--policy", required=True,
                        help="learner run dir / ckpt-N dir, BC checkpoint dir, or bc:DEMOS.npz (train BC first)")
    parser.add_argument("--trials", type=int, default=20, help="trials to run (default 20)")
    parser.add_argument("--split", choices=("id", "ood"), default="id", help="start set (default id)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default evals/<timestamp>)")
    parser.add_argument("--horizon", type=int, default=None,
                        help=f"steps per trial (default: the task's eval horizon; real robot {REAL_HORIZON})")
    parser.add_argument("--agent", choices=("forward", "backward"), default="forward",
                        help="which learner agent's actor to run (default forward)")
    parser.add_argument("--hz", type=float, default=10.0, help="control rate (default 10)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="image side (default: the one recorded with the policy, else 84)")
    parser.add_argument("--franka-host", default="172.16.0.2", help="Franka control box address")
    parser.add_argument("--camera", action="append", default=[], metavar="NAME=SERIAL",
                        help="RealSense camera (repeatable), named as the policy expects (wrist, third_person)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated resets and of BC training")
    parser.add_argument("--sim-pacing", choices=("lockstep", "realtime"), default="lockstep",
                        help="simulated robot: lockstep (one step per action, default) or realtime")
    parser.add_argument("--bc-steps", type=int, default=10_000, help="BC gradient steps (bc:DEMOS.npz)")
    parser.add_argument("--bc-batch-size", type=int, default=256, help="BC batch size (bc:DEMOS.npz)")
    add_config_arguments(parser)  # --profile/--config/--set: the BC network (default: robot on franka, else sim)
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser


def _run(args: argparse.Namespace, prompt: Prompt) -> EvalSummary:
    out_dir = args.out or Path("evals") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    config_probe = EvalConfig(out=out_dir, trials=args.trials, split=args.split, horizon=args.horizon or 1)
    source = resolve_policy(args, out_dir, print)
    rig_config = RigConfig(robot=args.robot, hz=args.hz, image_size=args.image_size or source.image_size() or 84,
                           franka_host=args.franka_host, cameras=tuple(parse_camera(c) for c in args.camera),
                           seed=args.seed, pacing=args.sim_pacing, obs=policy_obs(source))
    horizon = args.horizon or (task_info(rig_config.task).eval_horizon if rig_config.task else REAL_HORIZON)
    config = EvalConfig(out=config_probe.out, trials=args.trials, split=args.split, horizon=horizon)
    with build_rig(rig_config) as rig:
        policy = _build_policy(source, rig)
        print(f"evaluating the {policy.kind} policy {policy.path} on {args.robot}: {config.trials} trials, "
              f"split {config.split}, horizon {config.horizon}, {args.hz:g} Hz")
        summary = run_trials(rig, policy, config, prompt=prompt)
    print(f"success {sum(t.success for t in summary.trials)}/{len(summary.trials)} "
          f"({summary.success_rate:.0%}) on the {config.split} split; "
          f"wrote {config.out / 'trials.csv'} and {config.out / 'summary.json'}")
    return summary


def main(argv: list[str] | None = None, *, prompt: Prompt = input) -> int:
    """Runs ``resetfree-eval``. Returns 0 on success, 1 on a reported error (one line on stderr)."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        _run(args, prompt)
    except (ValueError, SimulationError, HardwareError, DemoFormatError, OSError) as e:
        print(f"resetfree-eval: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
