"""``resetfree-runtime`` / ``python -m runtime``: the robot-side daemon (see runtime.daemon).

``resetfree-runtime --robot sim:tabletop --obs state`` runs a simulated robot against a
learner on loopback; ``resetfree-runtime --config robot.toml --hz 20 --set link.peer_timeout_s=3``
runs with a config file, one flag and one key changed (the config: ``runtime.config``; the flags
and their keys, and the order the layers apply in: ``runtime.flags``);
``resetfree-runtime ctl status --control ADDR`` talks to a running one.
"""

from __future__ import annotations

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

from hardware.interfaces import Robot
from runtime.clock import install_uvloop
from runtime.config import RuntimeConfig
from runtime.daemon import EXIT_CRASH, RuntimeDaemon, install_signal_handlers
from runtime.errors import RuntimeFault
from runtime.flags import build_parser, config_from_args, runtime_config
from runtime.robot_kinds import ROBOTS
from runtime.robots import RobotFacts, RobotSetup, RobotSpecError

logger = logging.getLogger(__name__)

__all__ = ["build_parser", "check_reset_flags", "main", "resolve_facts", "robot_setup", "runtime_config"]


def check_reset_flags(config: RuntimeConfig) -> None:
    """Refuses reset settings for a robot that is never reset (a real one). Raises RobotSpecError
    (contradictory or negative ones are refused when the config is built, as RobotSpecError too)."""
    robot = config.robot
    if (robot.reset_every is not None or robot.reset_schedule is not None) and not ROBOTS.simulated(robot.spec):
        raise RobotSpecError(f"--reset-every/--reset-schedule (robot.reset_every/reset_schedule) apply to "
                             f"simulated robots; {robot.spec} is never reset")
    if robot.operator and not ROBOTS.simulated(robot.spec):
        raise RobotSpecError(f"--operator (robot.operator) emulates a person for a simulated robot; {robot.spec} "
                             "has a real one")


def resolve_facts(config: RuntimeConfig, robot: Robot) -> tuple[RobotFacts, str]:
    """Returns the robot's facts with the reset interval the config chooses, and where that
    interval came from: ``flag`` (``robot.reset_every``, ``--reset-every``), ``paper`` or ``earl``
    (the task's schedule). Raises RobotSpecError."""
    check_reset_flags(config)
    settings = config.robot
    schedule = settings.reset_schedule or "paper"
    facts = ROBOTS.facts(settings.spec, robot, settings.task, reset_schedule=schedule)
    if settings.operator:
        facts = dataclasses.replace(facts, operator=True)  # RobotSpecError when the task declares no rule
    if settings.reset_every is not None:
        return dataclasses.replace(facts, reset_interval=settings.reset_every or None), "flag"
    return facts, schedule if ROBOTS.simulated(settings.spec) else "never"


def robot_setup(config: RuntimeConfig) -> RobotSetup:
    """Returns what a robot kind's ``build`` needs from the config."""
    return config.robot.setup(hz=config.loop.hz, seed=config.seed, lockstep=config.loop.lockstep)


async def _run(config: RuntimeConfig) -> int:
    robot, cameras = ROBOTS.build(config.robot.spec, robot_setup(config))
    facts, source = resolve_facts(config, robot)
    if facts.kind == "sim":
        logger.info("runtime: environment reset every %s (%s)",
                    f"{facts.reset_interval} steps" if facts.reset_interval else "never", source)
        if facts.goal_per_turn:
            logger.info("runtime: a new goal at the end of every forward turn (%s has several)", facts.task)
        if facts.operator:
            logger.info("runtime: an emulated operator resets the scene when a backward turn ends with %s",
                        facts.operator_rule)
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
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        ROBOTS.check(config.robot.spec)  # an unknown sim:TASK is one line, not a traceback from the loop
        check_reset_flags(config)
    except (RobotSpecError, ValueError, OSError) as e:
        print(f"resetfree-runtime: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(config.to_toml(), end="")
        return 0
    logging.basicConfig(level=config.process.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from runtime.isolation import apply_isolation

    apply_isolation(config.isolation)
    install_uvloop()
    try:
        return asyncio.run(_run(config))
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
