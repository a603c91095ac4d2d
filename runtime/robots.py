"""Robot plugins: ``--robot`` names resolved to a Robot and its Cameras through ``importlib``.

``runtime`` must not import ``simulation`` (docs/architecture.md, the plugin point): the
simulated robot is found by module name at run time, so the layering test sees no static
import and a robot PC without MuJoCo never loads it.

* ``sim:TASK`` → ``simulation.sim_robot.SimRobot(TASK, obs=, seed=, pacing=, hz=)`` and its
  cameras (pixel mode); the shield's scale is the task's declared ``TaskInfo.move_scale``;
  the environment resets on the paper's schedule (the task's ``reset_interval``: every 10k
  steps for the EARL tasks) or EARL's own (``earl_reset_interval``, ``--reset-schedule earl``).
* ``franka`` → ``hardware.franka.FrankaRobot`` + one ``hardware.realsense.RealSenseCamera``
  per ``--camera NAME=SERIAL``; the shield's scale is its ``config.max_translation_step``;
  never reset except by ``go_home``.
"""

from __future__ import annotations

import importlib
import logging
import math
from dataclasses import dataclass, replace

from hardware.interfaces import Camera, Robot
from runtime.errors import RuntimeFault
from runtime.shield import ShieldConfig

logger = logging.getLogger(__name__)

SIM_MODULE = "simulation.sim_robot"
SIM_TASKS_MODULE = "simulation.tasks"
SIM_REGISTRY_MODULE = "simulation.registry"
FRANKA_MODULE = "hardware.franka"
REALSENSE_MODULE = "hardware.realsense"


class RobotSpecError(RuntimeFault, ValueError):
    """A ``--robot`` or ``--camera`` value that names no usable robot."""


@dataclass(frozen=True, kw_only=True)
class RobotFacts:
    """What the daemon needs to know about a robot beyond the ``Robot`` interface."""

    kind: str
    """``sim`` or ``franka``."""
    task: str
    """Task name sent in ``hello`` (the simulated task, or ``--task`` on a real robot)."""
    position_scale: float
    """Metres of end-effector motion per unit of action (the shield's ``position_scale``)."""
    reset_interval: int | None
    """Recorded steps between environment resets (simulation only; None: never)."""
    goal_per_turn: bool = False
    """Draw a new goal at the end of every forward turn (a simulated task with several goals:
    tabletop; MEDAL's loop)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.position_scale) and self.position_scale > 0):
            raise ValueError(f"position_scale: must be positive, got {self.position_scale}")
        if self.reset_interval is not None and self.reset_interval < 1:
            raise ValueError(f"reset_interval: must be positive or None, got {self.reset_interval}")


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Returns ``(kind, task)`` of a ``--robot`` value. Raises RobotSpecError for another form."""
    if spec == "franka":
        return "franka", None
    kind, _, task = spec.partition(":")
    if kind == "sim" and task:
        return "sim", task
    raise RobotSpecError(f"--robot: expected 'sim:TASK' or 'franka', got {spec!r}")


def check_spec(spec: str) -> tuple[str, str | None]:
    """Returns ``(kind, task)`` of a ``--robot`` value after checking that a ``sim:TASK`` names a
    task the simulator has (this imports its task table, not MuJoCo). Raises RobotSpecError
    naming the choices, also when the simulator is not installed."""
    kind, task = parse_spec(spec)
    if kind == "sim":
        try:
            tasks = importlib.import_module(SIM_REGISTRY_MODULE)
        except ImportError as e:
            raise RobotSpecError(f"--robot {spec}: the simulator is not installed here ({e})") from e
        if task not in tasks.TASKS:
            raise RobotSpecError(f"--robot {spec}: unknown task {task!r}; expected sim:TASK with TASK one of "
                                 f"{', '.join(sorted(tasks.TASKS))}, or franka")
    return kind, task


def parse_cameras(values: list[str] | None) -> list[tuple[str, str]]:
    """Returns ``(name, serial)`` pairs of ``--camera NAME=SERIAL`` values. Raises RobotSpecError."""
    pairs = []
    for value in values or []:
        name, sep, serial = value.partition("=")
        if not sep or not name or not serial:
            raise RobotSpecError(f"--camera: expected NAME=SERIAL, got {value!r}")
        pairs.append((name, serial))
    return pairs


@dataclass(frozen=True, kw_only=True)
class RobotSetup:
    """What :func:`make_robot` needs besides the ``--robot`` value; each kind reads its part."""

    hz: float = 10.0
    """Control rate (both kinds)."""
    image_size: int = 84
    """Side of the square camera images (both kinds)."""
    obs: str = "state"
    """Simulated robot: ``state`` or ``pixels``."""
    seed: int | None = None
    """Simulated robot: seed of its first reset."""
    lockstep: bool = False
    """Simulated robot: step on each action (True) or on its own clock."""
    franka_host: str = "172.16.0.2"
    """Franka: the control box's address."""
    cameras: tuple[tuple[str, str], ...] = ()
    """Franka: ``(name, serial)`` of each RealSense."""


def make_robot(spec: str, setup: RobotSetup) -> tuple[Robot, list[Camera]]:
    """Builds (does not connect) the robot ``spec`` names and its cameras: the one place a
    robot kind is constructed (``resetfree-runtime``, ``resetfree-demos record`` and
    ``resetfree-eval`` all come here). Returns ``(robot, cameras)``. Raises RobotSpecError for
    an unknown robot or task, or a Franka without cameras; ImportError when the plugin's
    package is not installed.
    """
    kind, task = parse_spec(spec)
    if kind == "sim":
        module = importlib.import_module(SIM_MODULE)
        try:
            robot = module.SimRobot(task, obs=setup.obs, seed=setup.seed,
                                    pacing="lockstep" if setup.lockstep else "realtime", hz=float(setup.hz),
                                    image_size=setup.image_size)
        except ValueError as e:
            raise RobotSpecError(f"--robot {spec}: {e}") from e
        return robot, list(robot.cameras.values())
    if not setup.cameras:
        raise RobotSpecError("--robot franka needs at least one --camera NAME=SERIAL (e.g. wrist=123456)")
    franka = importlib.import_module(FRANKA_MODULE)
    realsense = importlib.import_module(REALSENSE_MODULE)
    robot = franka.FrankaRobot(franka.FrankaConfig(hostname=setup.franka_host, control_rate_hz=float(setup.hz)))
    return robot, [realsense.RealSenseCamera(realsense.RealSenseConfig(serial=serial, image_size=setup.image_size),
                                             name=name)
                   for name, serial in setup.cameras]


RESET_SCHEDULES = ("paper", "earl")
"""``--reset-schedule`` values: ``paper`` (the task's ``reset_interval``, the default) or
``earl`` (its ``earl_reset_interval``)."""


def robot_facts(spec: str, robot: Robot, task: str | None = None, reset_schedule: str = "paper") -> RobotFacts:
    """Returns the :class:`RobotFacts` of a robot :func:`make_robot` built from ``spec``.

    ``task`` overrides the task name (a real robot has none of its own). A simulated robot's
    ``position_scale`` is its task's declared ``TaskInfo.move_scale`` and its reset interval
    the task's under ``reset_schedule`` (:data:`RESET_SCHEDULES`); a Franka's scale is its
    ``config.max_translation_step``. Raises RobotSpecError (unknown task or schedule, a robot
    that does not declare its scale).
    """
    kind, sim_task = parse_spec(spec)
    if reset_schedule not in RESET_SCHEDULES:
        raise RobotSpecError(f"reset schedule: expected one of {list(RESET_SCHEDULES)}, got {reset_schedule!r}")
    if kind == "sim":
        tasks = importlib.import_module(SIM_TASKS_MODULE)
        try:
            info = tasks.task_info(sim_task)
        except ValueError as e:
            raise RobotSpecError(f"--robot {spec}: {e}") from e
        return RobotFacts(kind="sim", task=str(sim_task), position_scale=float(info.move_scale),
                          reset_interval=info.scheduled_reset_interval(reset_schedule),
                          goal_per_turn=len(info.state_goals) > 1)
    config = getattr(robot, "config", None)
    if config is None:
        raise RobotSpecError(f"--robot {spec}: {type(robot).__name__} has no config, so the shield "
                             "cannot know how far one unit of action moves it (max_translation_step)")
    try:
        scale = float(config.max_translation_step)
    except AttributeError as e:
        raise RobotSpecError(f"--robot {spec}: {type(config).__name__} declares no max_translation_step "
                             "(metres per full-scale action), which the shield needs") from e
    return RobotFacts(kind="franka", task=task or "franka", position_scale=scale, reset_interval=None)


def shield_config(robot: Robot, facts: RobotFacts, hz: float) -> ShieldConfig:
    """Returns the shield limits for ``robot`` at ``hz``: its action space and workspace, one
    full-scale action per tick, and watchdog ages of three periods (plus margin).

    The last action element is the gripper when the action has more than three elements;
    a three-element action (tabletop: dx, dy, grasp) has no separate gripper channel.
    """
    spec = robot.action_spec
    period = 1.0 / hz
    scale = facts.position_scale
    dim = spec.shape[0]
    return ShieldConfig(
        action_low=tuple(float(v) for v in spec.low_array()),
        action_high=tuple(float(v) for v in spec.high_array()),
        workspace=robot.workspace, position_scale=scale, max_step=(scale, scale, scale),
        # a full-scale diagonal move is allowed; the per-axis step bounds each tick
        max_speed=scale * math.sqrt(3.0) * hz * 1.001, control_period_s=period,
        gripper_index=dim - 1 if dim > 3 else None,
        max_state_age_s=3 * period + 0.05, max_frame_age_s=3 * period + 0.1,
    )


LOCKSTEP_SENSOR_AGE_S = 86_400.0
"""Sensor age a simulated robot in lock-step may reach before the shield holds (a day: the
twin is frozen between steps, so however long the other side takes, what it shows is current)."""


def lockstep_shield_config(limits: ShieldConfig) -> ShieldConfig:
    """Returns ``limits`` without the timing holds, for a simulated robot in lock-step: no
    deadline-miss hold and no state or frame age limit. There the simulation only advances
    when the loop acts, so a late tick or an old reading is not a hazard, and a hold would
    only replace the action (random, the policy's) by zero — which changes what is recorded
    and makes an evaluation depend on the machine's load. A real robot keeps every watchdog."""
    return replace(limits, hold_on_deadline_miss=False, max_state_age_s=LOCKSTEP_SENSOR_AGE_S,
                   max_frame_age_s=LOCKSTEP_SENSOR_AGE_S)

