"""``resetfree-runtime`` / ``python -m runtime``: the robot-side daemon (see runtime.daemon).

``resetfree-runtime --robot sim:tabletop --obs state`` runs a simulated robot against a
learner on loopback; ``resetfree-runtime ctl status --control ADDR`` talks to a running one.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys

# Read by PyTorch's CPU allocator (before torch is imported): tensors of 2 MB and more are
# backed by transparent huge pages, so the pixel actor's 20 MB of weights take ~10 TLB
# entries instead of ~5,000 (inference 2.61 -> 2.40 ms p50 at 10 Hz here). Harmless where
# THP is off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10
    import tomli as tomllib
from pathlib import Path

from hardware.interfaces import Robot
from protocol.session import DEFAULT_SWITCH_INTERVAL
from runtime.clock import install_uvloop
from runtime.daemon import EXIT_CRASH, RuntimeDaemon, install_signal_handlers
from runtime.daemon_config import DaemonConfig
from runtime.policy_slot import CONV_DTYPES, PROJECTION_DTYPES, PolicySlotConfig
from runtime.errors import RuntimeFault
from runtime.isolation import GC_MODES, IsolationConfig
from runtime.loop import LoopConfig
from runtime.robot_kinds import ROBOTS
from runtime.robots import RESET_SCHEDULES, RobotFacts, RobotSetup, RobotSpecError, parse_cameras

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """Returns the daemon's argument parser (every flag documented in ``--help``)."""
    p = argparse.ArgumentParser(prog="resetfree-runtime", description="Run the robot-side control loop "
                                "and stream its steps to a learner. 'resetfree-runtime ctl --help' for the "
                                "operator commands.")
    p.add_argument("--robot", default="sim:tabletop", help="sim:TASK (tabletop, door, peg, cube) or franka")
    p.add_argument("--learner", default="tcp://127.0.0.1:5555", help="learner uplink endpoint")
    p.add_argument("--obs", choices=("state", "pixels"), default="state", help="simulated observation mode")
    p.add_argument("--hz", type=float, default=10.0, help="control rate in Hz (default %(default)g)")
    p.add_argument("--lockstep", action="store_true", help="simulation: wait for the learner's updates before "
                   "each tick (reproducible learning curves)")
    p.add_argument("--spill-dir", type=Path, default=None, help="spill log + session state (default "
                   "~/.cache/resetfree/spill/<robot>)")
    p.add_argument("--control-bind", default="tcp://127.0.0.1:5558", help="control server endpoint (port 0: "
                   "pick one; written to SPILL_DIR/endpoints.json)")
    p.add_argument("--keys", type=Path, default=None, help="CURVE keys directory (resetfree-keys generate)")
    p.add_argument("--seed", type=int, default=None, help="seed of the simulation and the seed-phase actions")
    p.add_argument("--switch-every", type=int, default=DEFAULT_SWITCH_INTERVAL,
                   help="steps per agent before switching to the other (default %(default)s)")
    p.add_argument("--reset-every", type=int, default=None, help="simulation: steps between environment resets "
                   "(default: --reset-schedule's; 0: never). A real robot is never reset")
    p.add_argument("--reset-schedule", choices=RESET_SCHEDULES, default=None,
                   help="simulation: the task's reset schedule when --reset-every is not given: paper (the "
                        "default: every 10000 steps for tabletop, door and peg, as MEDAL++; cube never) or "
                        "earl (EARL's own: door and tabletop 200000, peg 100000)")
    p.add_argument("--max-steps", type=int, default=None, help="stop cleanly after N steps (waits for acks)")
    p.add_argument("--ack-wait", type=float, default=10.0, help="--max-steps: seconds to wait for final acks")
    p.add_argument("--batch-steps", type=int, default=16, help="steps per uplink batch")
    p.add_argument("--lockstep-lag", type=int, default=None,
                   help="lock-step: steps the loop may run ahead of the learner's trained_through (at least "
                        "--batch-steps; default two batches, so the runtime records the next batch while "
                        "the learner trains on the last)")
    p.add_argument("--config", type=Path, default=None, help="TOML file whose [runtime] keys set defaults for "
                   "these flags (names with underscores)")
    p.add_argument("--franka-host", default="172.16.0.2", help="Franka control box address")
    p.add_argument("--camera", action="append", metavar="NAME=SERIAL", help="RealSense camera (repeatable)")
    p.add_argument("--task", default=None, help="task name sent to the learner (real robot; sim: from --robot)")
    p.add_argument("--cpu", type=int, default=None, help="pin the runtime to this CPU")
    p.add_argument("--priority", choices=("none", "nice", "fifo"), default="fifo",
                   help="scheduling priority: fifo (SCHED_FIFO, falls back to nice without the "
                        "privilege), nice, none. Measured on 2 cores with a learner training: "
                        "fifo gives 0 overruns at 10 and 50 Hz where nice gives hundreds")
    p.add_argument("--cpu-latency-us", type=_latency, default=IsolationConfig.cpu_latency_us, metavar="US|off",
                   help="hold the CPUs' wake-up latency at this many µs (/dev/cpu_dma_latency, needs root): "
                        "idle CPUs poll instead of halting, so the loop's sleeps end on time; costs power, "
                        "not CPU time. off: leave it. Default %(default)s")
    p.add_argument("--keep-heap", action=argparse.BooleanOptionalAction, default=IsolationConfig.keep_heap,
                   help="glibc: keep freed memory instead of unmapping it, so a weights swap does not "
                        "interrupt the loop's CPU to flush its TLB (costs the heap's peak in memory)")
    p.add_argument("--gc", choices=GC_MODES, default="freeze", help="garbage-collector handling (jitter)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for inference")
    p.add_argument("--conv-dtype", choices=CONV_DTYPES, default="auto",
                   help="dtype of the pixel conv trunk at inference: bfloat16 computes as the learner's "
                        "autocast does (about half the time on CPUs with AMX/AVX512-BF16); auto picks it "
                        "where the CPU has native bf16")
    p.add_argument("--projection-dtype", choices=PROJECTION_DTYPES, default="float32",
                   help="dtype of the image projection layer at inference: float16 halves the bytes it reads "
                        "per tick and was faster on an idle CPU with AVX512-FP16, slower with a learner "
                        "on the same cores (see PolicySlotConfig)")
    p.add_argument("--no-explore", action="store_true",
                   help="act with the policy's mean action instead of sampling from it (to show a learned "
                        "policy; practice needs the sampling, as the learner's own agent does)")
    p.add_argument("--prefetch-lead-ms", type=float, default=LoopConfig.prefetch_lead_s * 1e3,
                   help="warm the CPU caches for the acting policy this long before each tick (one inference "
                        "on the previous observation; 0: off): an inference right after idling runs ~2x slower")
    p.add_argument("--prefetch-passes", type=int, default=None,
                   help="warm-up inferences before each tick (default: one per 30 ms of period, 1 to 3; "
                        "at 10 Hz under learner load a second pass took inference from 2.8 to 1.95 ms here)")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    return p


def _latency(text: str) -> int | None:
    """``--cpu-latency-us``: a non-negative int, or ``off``."""
    if text.strip().lower() in ("off", "none"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected µs (an integer >= 0) or 'off', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected µs >= 0 or 'off', got {value}")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parses ``argv``, applying ``--config`` TOML defaults (``[runtime]`` table) first.

    Raises SystemExit (argparse) on a bad flag or an unreadable config.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config is not None:
        try:
            table = tomllib.loads(args.config.read_text()).get("runtime", {})
        except (OSError, tomllib.TOMLDecodeError) as e:
            parser.error(f"--config {args.config}: {e}")
        unknown = set(table) - set(vars(args))
        if unknown:
            parser.error(f"--config {args.config}: unknown keys {sorted(unknown)}")
        parser.set_defaults(**table)
        args = parser.parse_args(argv)
    return args


def daemon_config(args: argparse.Namespace) -> DaemonConfig:
    """Returns the DaemonConfig of parsed ``args``. Raises ValueError naming a bad field."""
    spill = args.spill_dir or Path.home() / ".cache" / "resetfree" / "spill" / args.robot.replace(":", "-")
    return DaemonConfig(
        robot=args.robot, learner=args.learner, spill_dir=spill, control_bind=args.control_bind, hz=args.hz,
        lockstep=args.lockstep, switch_every=args.switch_every, max_steps=args.max_steps, seed=args.seed,
        keys_dir=args.keys, batch_steps=args.batch_steps, lockstep_lag=args.lockstep_lag, ack_wait_s=args.ack_wait,
        policy=PolicySlotConfig(conv_dtype=args.conv_dtype, projection_dtype=args.projection_dtype,
                                explore=not args.no_explore, seed=args.seed),
        prefetch_lead_s=args.prefetch_lead_ms / 1e3,
        prefetch_passes=args.prefetch_passes,
        isolation=IsolationConfig(cpu=args.cpu, priority=args.priority, gc_mode=args.gc,
                                  torch_threads=args.threads, cpu_latency_us=args.cpu_latency_us,
                                  keep_heap=args.keep_heap))


def check_reset_flags(args: argparse.Namespace) -> None:
    """Refuses contradictory or misplaced reset flags. Raises RobotSpecError."""
    if args.reset_every is not None and args.reset_schedule is not None:
        raise RobotSpecError("give --reset-every or --reset-schedule, not both")
    if args.reset_every is not None and args.reset_every < 0:
        raise RobotSpecError(f"--reset-every: must be >= 0 (0: never), got {args.reset_every}")
    if (args.reset_every is not None or args.reset_schedule is not None) and not ROBOTS.simulated(args.robot):
        raise RobotSpecError(f"--reset-every/--reset-schedule apply to simulated robots; {args.robot} is never reset")


def resolve_facts(args: argparse.Namespace, robot: Robot) -> tuple[RobotFacts, str]:
    """Returns the robot's facts with the reset interval the flags choose, and where that
    interval came from: ``flag`` (``--reset-every``), ``paper`` or ``earl`` (the task's
    schedule). Raises RobotSpecError."""
    check_reset_flags(args)
    schedule = args.reset_schedule or "paper"
    facts = ROBOTS.facts(args.robot, robot, args.task, reset_schedule=schedule)
    if args.reset_every is not None:
        return dataclasses.replace(facts, reset_interval=args.reset_every or None), "flag"
    return facts, schedule if ROBOTS.simulated(args.robot) else "never"


def robot_setup(args: argparse.Namespace) -> RobotSetup:
    """Returns what a robot kind's ``build`` needs from the command line. Raises RobotSpecError for a
    malformed ``--camera``."""
    return RobotSetup(hz=float(args.hz), obs=args.obs, seed=args.seed, lockstep=args.lockstep,
                      franka_host=args.franka_host, cameras=tuple(parse_cameras(args.camera)))


async def _run(args: argparse.Namespace, config: DaemonConfig) -> int:
    robot, cameras = ROBOTS.build(args.robot, robot_setup(args))
    facts, source = resolve_facts(args, robot)
    if facts.kind == "sim":
        logger.info("runtime: environment reset every %s (%s)",
                    f"{facts.reset_interval} steps" if facts.reset_interval else "never", source)
        if facts.goal_per_turn:
            logger.info("runtime: a new goal at the end of every forward turn (%s has several)", facts.task)
    daemon = RuntimeDaemon(config, robot, cameras, facts)
    install_signal_handlers(daemon)
    return await daemon.run()


def main(argv: list[str] | None = None) -> int:
    """Runs the daemon (or ``ctl``); returns the exit code: 0 clean stop, 1 crash, 2 refused
    by the learner or a bad command line. Blocks until stopped."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ctl"]:
        from runtime.ctl import main as ctl_main

        return ctl_main(argv[1:])
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        ROBOTS.check(args.robot)  # an unknown sim:TASK is one line, not a traceback from the loop
        check_reset_flags(args)
        config = daemon_config(args)
    except (RobotSpecError, ValueError) as e:
        print(f"resetfree-runtime: {e}", file=sys.stderr)
        return 2
    from runtime.isolation import apply_isolation

    apply_isolation(config.isolation)
    install_uvloop()
    try:
        return asyncio.run(_run(args, config))
    except RobotSpecError as e:  # found only once the robot is built: still a bad command line
        print(f"resetfree-runtime: {e}", file=sys.stderr)
        return 2
    except (RuntimeFault, OSError) as e:
        logger.error("runtime: crashed: %s", e, exc_info=True)
        return EXIT_CRASH
    except BaseExceptionGroup as group:  # a task crashed: the robot was stopped in cleanup
        logger.error("runtime: crashed: %s", group, exc_info=True)
        return EXIT_CRASH


if __name__ == "__main__":
    sys.exit(main())
