"""Robot kinds: what ``--robot`` can name, and the facts the shield is built from.

``runtime`` names no concrete robot here. A :class:`RobotKind` says how to build one kind
(``sim:TASK``, ``franka``) and what it declares; a :class:`RobotKinds` registry resolves a
``--robot`` value against the kinds it was given. The one registry the programs use is filled
in :mod:`runtime.robot_kinds`, the composition root: the only module of ``runtime`` that
imports robot adapters and the simulator, each inside the factory that needs it, so a robot PC
without MuJoCo never loads it (``tests/test_layering.py`` holds it to that).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace

from hardware.interfaces import Camera, Robot
from runtime.errors import RuntimeFault
from runtime.shield import ShieldConfig

logger = logging.getLogger(__name__)


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
    operator_rule: str | None = None
    """Simulated task: when a person must put the scene back, in words (``TaskInfo.operator_rule``);
    None when the task declares no rule (and for a real robot)."""
    operator: bool = False
    """Emulate that person (``RobotConfig.operator``; needs ``operator_rule``)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.position_scale) and self.position_scale > 0):
            raise ValueError(f"position_scale: must be positive, got {self.position_scale}")
        if self.reset_interval is not None and self.reset_interval < 1:
            raise ValueError(f"reset_interval: must be positive or None, got {self.reset_interval}")
        if self.operator and self.operator_rule is None:
            raise RobotSpecError(f"operator (--operator): {self.kind} robot {self.task!r} declares no rule for when a "
                                 "person must put its scene back (only simulated tasks that declare one: cube)")


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
    """What a robot kind's ``build`` needs besides the ``--robot`` value; each kind reads its part."""

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


RESET_SCHEDULES = ("paper", "earl")
"""``--reset-schedule`` values: ``paper`` (the task's ``reset_interval``, the default) or
``earl`` (its ``earl_reset_interval``)."""

OBS_MODES = ("state", "pixels")
"""``--obs`` values: a simulated robot's observation mode."""


@dataclass(frozen=True, kw_only=True)
class RobotConfig:
    """Which robot the runtime drives and how it is set up: the ``[robot]`` table of the runtime's
    config (``runtime.config``). What the robot *is* (its scale, its limits) is not configured:
    its kind declares it (:class:`RobotFacts`)."""

    spec: str = "sim:tabletop"
    """``sim:TASK`` (tabletop, door, peg, cube) or ``franka``: a kind of :data:`runtime.robot_kinds.ROBOTS`
    (checked against it at start-up)."""
    obs: str = RobotSetup.obs
    """Simulated robot: ``state`` or ``pixels``."""
    task: str | None = None
    """Task name sent to the learner (a real robot; a simulated one's is its ``spec``'s)."""
    franka_host: str = RobotSetup.franka_host
    """Franka: the control box's address."""
    cameras: tuple[str, ...] = ()
    """Franka: one ``NAME=SERIAL`` per RealSense camera."""
    reset_every: int | None = None
    """Simulated robot: recorded steps between environment resets, over ``reset_schedule``
    (0: never; None: the schedule's). A real robot is never reset."""
    reset_schedule: str | None = None
    """Simulated robot: the task's reset schedule when ``reset_every`` is None: ``paper`` (None
    means it: every 10,000 steps for tabletop, door and peg, as MEDAL++; cube never) or ``earl``
    (EARL's own: door and tabletop 200,000, peg 100,000)."""
    operator: bool = False
    """Simulated robot: emulate the person who watches a reset-free run and puts the scene back
    when a backward turn ends where practice cannot go on (the task's operator rule: cube's is
    the cube out of the hand's reach). Each time, the environment is reset and the loop counts
    an intervention. A real robot has a real person."""

    def __post_init__(self) -> None:
        if not self.spec:
            raise ValueError("spec: must name a robot ('sim:TASK' or 'franka')")
        if self.obs not in OBS_MODES:
            raise ValueError(f"obs: must be one of {OBS_MODES}, got {self.obs!r}")
        try:
            parse_cameras(list(self.cameras))
        except RobotSpecError as e:
            raise ValueError(f"cameras: {e}") from e
        if self.reset_schedule is not None and self.reset_schedule not in RESET_SCHEDULES:
            raise ValueError(f"reset_schedule: must be one of {RESET_SCHEDULES} or None, got {self.reset_schedule!r}")
        if self.reset_every is not None and self.reset_schedule is not None:
            raise RobotSpecError("reset_every: give reset_every (--reset-every) or reset_schedule "
                                 "(--reset-schedule), not both")
        if self.reset_every is not None and self.reset_every < 0:
            raise RobotSpecError(f"reset_every: must be >= 0 (0: never), got {self.reset_every}")

    def setup(self, *, hz: float, seed: int | None, lockstep: bool) -> RobotSetup:
        """Returns what the robot kind's ``build`` needs, with the loop's rate and pacing and the
        run's seed."""
        return RobotSetup(hz=float(hz), obs=self.obs, seed=seed, lockstep=lockstep, franka_host=self.franka_host,
                          cameras=tuple(parse_cameras(list(self.cameras))))

Builder = Callable[[str | None, RobotSetup], tuple[Robot, list[Camera]]]
"""``(task, setup) -> (robot, cameras)``: builds, does not connect."""
FactsOf = Callable[[str | None, Robot, str | None, str], RobotFacts]
"""``(task of the spec, robot, --task, reset schedule) -> RobotFacts``."""


@dataclass(frozen=True, kw_only=True)
class RobotKind:
    """One kind of robot ``--robot`` can name."""

    name: str
    """The ``--robot`` value (``franka``) or its prefix (``sim`` in ``sim:TASK``)."""
    build: Builder
    """Builds the robot and its cameras. Raises RobotSpecError for a bad task or setup;
    ImportError when the kind's package is not installed."""
    facts: FactsOf
    """Returns the facts of a robot ``build`` made. Raises RobotSpecError."""
    tasks: Callable[[], Collection[str]] | None = None
    """For a kind written ``NAME:TASK``: the task names it has (ImportError when its package is
    not installed). None: the kind takes no task."""
    simulated: bool = False
    """Whether the environment can be reset by the runtime (a simulator), which the reset
    flags need."""

    def __post_init__(self) -> None:
        if not self.name or ":" in self.name:
            raise ValueError(f"name: must be non-empty without ':', got {self.name!r}")

    @property
    def usage(self) -> str:
        """How ``--robot`` writes this kind: ``sim:TASK`` or ``franka``."""
        return f"{self.name}:TASK" if self.tasks is not None else self.name


class RobotKinds:
    """The registry of robot kinds: resolves ``--robot`` values, builds robots, returns facts."""

    def __init__(self, kinds: Iterable[RobotKind]) -> None:
        self._kinds: dict[str, RobotKind] = {}
        for kind in kinds:
            if kind.name in self._kinds:
                raise ValueError(f"robot kind {kind.name!r} registered twice")
            self._kinds[kind.name] = kind
        if not self._kinds:
            raise ValueError("a robot registry needs at least one kind")

    @property
    def usage(self) -> str:
        """The accepted ``--robot`` forms, quoted: ``'sim:TASK' or 'franka'``."""
        return " or ".join(repr(k.usage) for k in self._kinds.values())

    def parse(self, spec: str) -> tuple[RobotKind, str | None]:
        """Returns the kind ``spec`` names and its task (None for a kind without one). Raises
        RobotSpecError for any other form. Does not look the task up (:meth:`check` does)."""
        name, sep, task = spec.partition(":")
        kind = self._kinds.get(name)
        if kind is not None and kind.tasks is None and not sep:  # "franka"
            return kind, None
        if kind is not None and kind.tasks is not None and task:  # "sim:door"
            return kind, task
        raise RobotSpecError(f"--robot: expected {self.usage}, got {spec!r}")

    def check(self, spec: str) -> tuple[str, str | None]:
        """Returns ``(kind name, task)`` of ``spec`` after checking that its task exists (for the
        simulator this imports its task table, not MuJoCo). Raises RobotSpecError naming the
        choices, also when the kind's package is not installed."""
        kind, task = self.parse(spec)
        if kind.tasks is not None:
            try:
                known = kind.tasks()
            except ImportError as e:
                raise RobotSpecError(f"--robot {spec}: the {kind.name} package is not installed here ({e})") from e
            if task not in known:
                others = ", ".join(k.usage for k in self._kinds.values() if k is not kind)
                raise RobotSpecError(f"--robot {spec}: unknown task {task!r}; expected {kind.usage} with TASK one "
                                     f"of {', '.join(sorted(known))}" + (f", or {others}" if others else ""))
        return kind.name, task

    def build(self, spec: str, setup: RobotSetup) -> tuple[Robot, list[Camera]]:
        """Builds (does not connect) the robot ``spec`` names and its cameras: the one place a
        robot is constructed (``resetfree-runtime``, ``resetfree-demos record`` and
        ``resetfree-eval`` all come here). Raises RobotSpecError for an unknown robot or task or
        an unusable setup; ImportError when the kind's package is not installed."""
        kind, task = self.parse(spec)
        return kind.build(task, setup)

    def facts(self, spec: str, robot: Robot, task: str | None = None, reset_schedule: str = "paper") -> RobotFacts:
        """Returns the :class:`RobotFacts` of a robot :meth:`build` made from ``spec``.

        ``task`` overrides the task name (a real robot has none of its own); ``reset_schedule``
        is one of :data:`RESET_SCHEDULES`. Raises RobotSpecError (unknown task or schedule, a
        robot that does not declare its scale).
        """
        if reset_schedule not in RESET_SCHEDULES:
            raise RobotSpecError(f"reset schedule: expected one of {list(RESET_SCHEDULES)}, got {reset_schedule!r}")
        kind, spec_task = self.parse(spec)
        return kind.facts(spec_task, robot, task, reset_schedule)

    def simulated(self, spec: str) -> bool:
        """Whether ``spec`` names a simulated robot (one the runtime may reset). Raises RobotSpecError."""
        return self.parse(spec)[0].simulated


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

