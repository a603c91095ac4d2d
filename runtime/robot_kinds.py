"""The composition root of robots: the registry of every kind ``--robot`` can name.

This is the one place a new robot is added, and the one module of ``runtime`` that imports
concrete robots: the Franka and RealSense adapters (``hardware``) and the MuJoCo twin
(``simulation``). Each import sits inside the factory that needs it, so importing this module
loads neither, and a robot PC without MuJoCo never loads the simulator
(``tests/test_layering.py`` holds this module to both rules).

* ``sim:TASK`` → ``simulation.sim_robot.SimRobot(TASK, obs=, seed=, pacing=, hz=)`` and its
  cameras (pixel mode); the shield's scale is the task's declared ``TaskInfo.move_scale``;
  the environment resets on the paper's schedule (the task's ``reset_interval``: every 10k
  steps for the EARL tasks) or EARL's own (``earl_reset_interval``, ``--reset-schedule earl``).
* ``franka`` → ``hardware.franka.FrankaRobot`` + one ``hardware.realsense.RealSenseCamera``
  per ``--camera NAME=SERIAL``; the shield's scale is its ``config.max_translation_step``;
  never reset except by ``go_home``.
"""

from __future__ import annotations

from collections.abc import Collection

from hardware.interfaces import Camera, Robot
from runtime.robots import RobotFacts, RobotKind, RobotKinds, RobotSetup, RobotSpecError


def _sim_tasks() -> Collection[str]:
    from simulation.registry import TASKS  # the task table only: no MuJoCo

    return tuple(TASKS)


def _build_sim(task: str | None, setup: RobotSetup) -> tuple[Robot, list[Camera]]:
    from simulation.sim_robot import SimRobot

    try:
        robot = SimRobot(str(task), obs=setup.obs, seed=setup.seed, pacing="lockstep" if setup.lockstep else "realtime",
                         hz=float(setup.hz), image_size=setup.image_size)
    except ValueError as e:
        raise RobotSpecError(f"--robot sim:{task}: {e}") from e
    return robot, list(robot.cameras.values())


def _sim_facts(task: str | None, robot: Robot, name: str | None, reset_schedule: str) -> RobotFacts:
    from simulation.tasks import task_info

    try:
        info = task_info(str(task))
    except ValueError as e:
        raise RobotSpecError(f"--robot sim:{task}: {e}") from e
    return RobotFacts(kind="sim", task=str(task), position_scale=float(info.move_scale),
                      reset_interval=info.scheduled_reset_interval(reset_schedule),  # type: ignore[arg-type]
                      goal_per_turn=len(info.state_goals) > 1, operator_rule=info.operator_rule)


def _build_franka(task: str | None, setup: RobotSetup) -> tuple[Robot, list[Camera]]:
    from hardware.franka import FrankaConfig, FrankaRobot
    from hardware.realsense import RealSenseCamera, RealSenseConfig

    if not setup.cameras:
        raise RobotSpecError("--robot franka needs at least one --camera NAME=SERIAL (e.g. wrist=123456)")
    robot = FrankaRobot(FrankaConfig(hostname=setup.franka_host, control_rate_hz=float(setup.hz)))
    return robot, [RealSenseCamera(RealSenseConfig(serial=serial, image_size=setup.image_size), name=name)
                   for name, serial in setup.cameras]


def _franka_facts(task: str | None, robot: Robot, name: str | None, reset_schedule: str) -> RobotFacts:
    # Read from the robot's own config, so a Franka configured for 3 cm steps is shielded at
    # 3 cm; a robot built here without one is refused, never given a default scale.
    config = getattr(robot, "config", None)
    if config is None:
        raise RobotSpecError(f"--robot franka: {type(robot).__name__} has no config, so the shield "
                             "cannot know how far one unit of action moves it (max_translation_step)")
    try:
        scale = float(config.max_translation_step)
    except AttributeError as e:
        raise RobotSpecError(f"--robot franka: {type(config).__name__} declares no max_translation_step "
                             "(metres per full-scale action), which the shield needs") from e
    return RobotFacts(kind="franka", task=name or "franka", position_scale=scale, reset_interval=None)


SIM = RobotKind(name="sim", build=_build_sim, facts=_sim_facts, tasks=_sim_tasks, simulated=True)
"""The MuJoCo twin of a task: ``--robot sim:TASK``."""
FRANKA = RobotKind(name="franka", build=_build_franka, facts=_franka_facts)
"""A Franka Panda through panda-py with RealSense cameras: ``--robot franka``."""

ROBOTS = RobotKinds([SIM, FRANKA])
"""The registry ``resetfree-runtime``, ``resetfree-demos record`` and ``resetfree-eval`` use."""
