"""Teleoperated demo recording (``resetfree-demos record``) and the robot rig it shares with
``resetfree-eval``.

A :class:`Rig` is a robot plus its cameras, built from a ``--robot`` spec: ``franka``
(``hardware.franka.FrankaRobot`` + one ``hardware.realsense.RealSenseCamera`` per
``--camera NAME=SERIAL``) or ``sim:TASK`` (``simulation.sim_robot.SimRobot`` in pixel mode,
whose images are served by its :class:`SimCamera`\\ s). Every command either tool sends goes
through the runtime's :class:`runtime.shield.Shield`, configured exactly as the runtime
configures it (:func:`runtime.robots.shield_config` from the robot's action space, workspace
and declared per-step scale: the task's ``TaskInfo.move_scale`` or the Franka's
``max_translation_step``; :meth:`Rig.shield_config`).

Recording (:func:`record_demos`) runs a fixed-rate loop on absolute deadlines: read the
teleop, shield the action, send it, wait for the next deadline, observe, record. Operator
buttons (``hardware.interfaces.TeleopButton``): SUCCESS / FAILURE end the episode and keep it
with that mark, DISCARD throws it away, QUIT stops. Each kept episode is appended to the
output file at once (atomic rewrite through ``protocol.demos.save_demos``), so a crash or
Ctrl-C loses at most the episode in progress. Before each episode the object is placed:
on the simulated robot by a reset to the start set (``init="initial"`` forward, ``"goal"``
backward, ``split="id"``); on the real robot the arm goes home and the operator places the
object, then presses SUCCESS (Enter / the SpaceMouse's success button) to start.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from hardware.interfaces import Camera, Robot, RobotState, SimulatedRobot, Teleop, TeleopButton
from hardware.spacemouse import SpaceMouseTeleop
from hardware.teleop import KeyboardTeleop
from protocol.demos import DemoMeta, DemoRecorder, Demos, concatenate, save_demos
from runtime.robot_kinds import ROBOTS
from runtime.robots import RobotFacts, RobotSetup, RobotSpecError, lockstep_shield_config
from runtime.robots import shield_config as runtime_shield_config
from runtime.shield import Shield, ShieldConfig
from simulation.tasks.base import SimulationError

logger = logging.getLogger(__name__)

Printer = Callable[[str], None]
"""Where operator-facing progress lines go (``print`` in the CLIs)."""


class RecordError(SimulationError):
    """A rig or recording could not be set up (bad robot spec, missing cameras, no teleop)."""


# ---------------------------------------------------------------------- rig
@dataclass(frozen=True, kw_only=True)
class RigConfig:
    """Which robot and cameras a recording or evaluation drives."""

    robot: str
    """``franka`` or ``sim:TASK`` (e.g. ``sim:cube``)."""
    hz: float = 10.0
    """Control rate of the loop (Hz)."""
    image_size: int = 84
    """Side of the square policy images."""
    franka_host: str = "172.16.0.2"
    """Franka control box address (``--robot franka``)."""
    cameras: tuple[tuple[str, str], ...] = ()
    """``(name, serial)`` of each RealSense (``--robot franka``)."""
    seed: int | None = None
    """Seed of the simulated robot's first reset (later resets continue its generator)."""
    pacing: str = "realtime"
    """Simulated robot pacing: ``realtime`` (own clock) or ``lockstep`` (steps on send)."""
    obs: str = "pixels"
    """What a simulated robot observes: ``pixels`` (cameras + proprio, as the real robot) or
    ``state`` (the task's state vector, for evaluating a policy trained on states)."""

    def __post_init__(self) -> None:
        if self.robot != "franka" and not (self.robot.startswith("sim:") and len(self.robot) > 4):
            raise ValueError(f"robot: expected 'franka' or 'sim:TASK', got {self.robot!r}")
        if self.obs not in ("pixels", "state"):
            raise ValueError(f"obs: must be 'pixels' or 'state', got {self.obs!r}")
        if self.obs == "state" and not self.is_sim:
            raise ValueError("obs: only a simulated robot has a state vector; the real robot gives cameras "
                             "and proprio (a policy trained on states runs on --robot sim:TASK)")
        if not (math.isfinite(self.hz) and 0 < self.hz <= 1000):
            raise ValueError(f"hz: must be in (0, 1000], got {self.hz}")
        if self.image_size <= 0:
            raise ValueError(f"image_size: must be positive, got {self.image_size}")
        if self.pacing not in ("realtime", "lockstep"):
            raise ValueError(f"pacing: must be 'realtime' or 'lockstep', got {self.pacing!r}")
        names = [name for name, _ in self.cameras]
        if len(set(names)) != len(names) or any(not n or not s for n, s in self.cameras):
            raise ValueError(f"cameras: need distinct non-empty NAME=SERIAL pairs, got {self.cameras}")

    @property
    def is_sim(self) -> bool:
        """Whether the robot is a simulated twin."""
        return self.robot.startswith("sim:")

    @property
    def task(self) -> str | None:
        """The simulated task name, ``None`` for the real robot."""
        return self.robot[4:] if self.is_sim else None


def parse_camera(text: str) -> tuple[str, str]:
    """Returns ``(name, serial)`` from ``NAME=SERIAL``; raises ValueError otherwise."""
    name, sep, serial = text.partition("=")
    if not sep or not name.strip() or not serial.strip():
        raise ValueError(f"--camera: expected NAME=SERIAL, got {text!r}")
    return name.strip(), serial.strip()


@dataclass
class Observation:
    """One reading of the rig: the policy's arrays, the robot state and each frame's age."""

    arrays: dict[str, np.ndarray]
    """Images by camera name plus the robot's arrays (``proprio``)."""
    state: RobotState
    """The robot state the arrays came from."""
    frame_ages: dict[str, float] = field(default_factory=dict)
    """Seconds since each camera frame was captured (for the shield's watchdog)."""


class Rig:
    """A robot and its cameras, connected and disconnected together (context manager).

    Construction stores only; :meth:`connect` opens the devices (blocks for seconds).
    """

    def __init__(self, config: RigConfig, robot: Robot, cameras: Mapping[str, Camera],
                 position_scale: float) -> None:
        self.config = config
        self.robot = robot
        self.cameras = dict(cameras)
        self.position_scale = position_scale

    def connect(self) -> None:
        """Connects the robot, then starts every camera. Blocks until both are ready.

        Raises:
            HardwareError: when a device cannot be opened (the robot is disconnected again).
        """
        self.robot.connect()
        try:
            for camera in self.cameras.values():
                camera.connect()
        except BaseException:
            self.disconnect()
            raise

    def disconnect(self) -> None:
        """Stops the robot and releases every device. Idempotent; never raises on closed devices."""
        try:
            self.robot.stop()
        finally:
            for camera in self.cameras.values():
                camera.disconnect()
            self.robot.disconnect()

    def __enter__(self) -> "Rig":
        self.connect()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.disconnect()

    def observe(self) -> Observation:
        """Returns the newest state and frames without waiting (stale frames are reported
        through ``frame_ages``; the shield holds on them).

        Raises:
            HardwareError: when a device is not connected or failed.
        """
        now = time.monotonic()
        state = self.robot.read_state()
        arrays: dict[str, np.ndarray] = {}
        ages: dict[str, float] = {}
        for name, camera in self.cameras.items():
            frame = camera.read_latest(max_age=math.inf)
            arrays[name] = frame.image
            ages[name] = now - frame.timestamp
        arrays.update(state.arrays)
        return Observation(arrays=arrays, state=state, frame_ages=ages)

    def task_success(self) -> bool | None:
        """Whether the simulated task is solved now; ``None`` on the real robot."""
        return self.robot.last_success if isinstance(self.robot, SimulatedRobot) else None

    def reset_sim(self, options: dict[str, Any]) -> None:
        """Resets the simulated task with ``options`` (blocks). Raises RecordError on a real robot."""
        if not isinstance(self.robot, SimulatedRobot):
            raise RecordError("reset_sim: only a simulated robot can place the object itself")
        self.robot.reset_environment(options)

    def shield_config(self) -> ShieldConfig:
        """Returns the shield limits for this robot at the rig's rate, by the runtime's own
        rule (:func:`runtime.robots.shield_config`): the action space, the workspace, one
        full-scale action per tick (``position_scale``), the gripper channel (the last action
        element when there are more than three) and watchdog ages of three periods. A
        simulated robot in lock-step has no timing holds (:func:`runtime.robots.lockstep_shield_config`),
        so what a policy does there does not depend on how busy the machine is."""
        facts = RobotFacts(kind="sim" if self.config.is_sim else "franka", task=self.config.task or "franka",
                           position_scale=self.position_scale, reset_interval=None)
        limits = runtime_shield_config(self.robot, facts, self.config.hz)
        return lockstep_shield_config(limits) if self.config.is_sim and self.config.pacing == "lockstep" else limits


def build_rig(config: RigConfig) -> Rig:
    """Builds (does not connect) the robot and cameras ``config`` names, through the runtime's
    own registry (:data:`runtime.robot_kinds.ROBOTS`), so a robot kind is built in one place.

    Returns a :class:`Rig`. Raises RecordError for a Franka without cameras or an unknown
    simulated task.
    """
    setup = RobotSetup(hz=config.hz, image_size=config.image_size, obs=config.obs, seed=config.seed,
                       lockstep=config.pacing == "lockstep", franka_host=config.franka_host, cameras=config.cameras)
    try:
        robot, cameras = ROBOTS.build(config.robot, setup)
    except RobotSpecError as e:
        raise RecordError(str(e)) from e
    # the runtime's facts: a simulated task's declared TaskInfo.move_scale, the Franka's max_translation_step
    return Rig(config, robot, {camera.name: camera for camera in cameras},
               ROBOTS.facts(config.robot, robot).position_scale)


def build_teleop(kind: str, action_dim: int) -> Teleop:
    """Returns the teleop device ``kind`` (``keyboard`` or ``spacemouse``), not connected.

    Raises RecordError for another kind.
    """
    if kind == "keyboard":
        return KeyboardTeleop(action_dim=action_dim)
    if kind == "spacemouse":
        return SpaceMouseTeleop(action_dim=action_dim)
    raise RecordError(f"teleop: expected 'keyboard' or 'spacemouse', got {kind!r}")


class Ticker:
    """Absolute-deadline pacing: :meth:`wait` sleeps until the next multiple of the period
    after :meth:`start`; a deadline already passed by a full period is counted as an overrun
    and the schedule restarts from now (no burst of catch-up ticks)."""

    def __init__(self, hz: float) -> None:
        self.period = 1.0 / hz
        self.overruns = 0
        self._deadline = time.monotonic()

    def start(self) -> None:
        """Sets the schedule's origin to now."""
        self._deadline = time.monotonic()

    def wait(self) -> None:
        """Blocks until the next deadline."""
        self._deadline += self.period
        now = time.monotonic()
        if now > self._deadline + self.period:
            self.overruns += 1
            self._deadline = now
            return
        if self._deadline > now:
            time.sleep(self._deadline - now)


# ---------------------------------------------------------------------- recording
@dataclass(frozen=True, kw_only=True)
class RecordConfig:
    """What :func:`record_demos` records and where."""

    out: Path
    """The demo file (``.npz``), rewritten atomically after every kept episode."""
    episodes: int = 50
    """Kept episodes to record before stopping."""
    direction: str = "forward"
    """``forward`` (do the task) or ``backward`` (undo it): the demo file's ``meta.direction``."""
    task: str = "cube"
    """``meta.task`` of the file (a simulated rig uses its task's name)."""
    max_steps: int = 500
    """An episode still open after this many steps ends as a failure."""
    split: str = "id"
    """Simulated start set of each episode's reset (cube: ``id`` or ``ood``)."""

    def __post_init__(self) -> None:
        if self.episodes <= 0:
            raise ValueError(f"episodes: must be positive, got {self.episodes}")
        if self.direction not in ("forward", "backward"):
            raise ValueError(f"direction: must be 'forward' or 'backward', got {self.direction!r}")
        if self.max_steps <= 0:
            raise ValueError(f"max_steps: must be positive, got {self.max_steps}")
        if not self.task:
            raise ValueError("task: must not be empty")


@dataclass
class RecordSummary:
    """What a recording session produced."""

    kept: int = 0
    """Episodes saved to the file."""
    successes: int = 0
    """Kept episodes the operator marked successful."""
    discarded: int = 0
    """Episodes thrown away (DISCARD, QUIT mid-episode, Ctrl-C, or no step)."""
    steps: int = 0
    """Transitions saved."""
    overruns: int = 0
    """Control ticks that missed their deadline by a full period."""
    interrupted: bool = False
    """Whether Ctrl-C ended the session."""
    task_successes: int = 0
    """Kept episodes in which the simulated task reported success at some step (sim only)."""


class _Quit(Exception):
    """The operator asked to stop (QUIT)."""


def record_demos(rig: Rig, teleop: Teleop, config: RecordConfig, *, out: Printer = print) -> RecordSummary:
    """Records teleoperated episodes from the connected ``rig`` with the connected ``teleop``
    until ``config.episodes`` are kept, QUIT, or Ctrl-C. Blocks for the whole session.

    Returns the :class:`RecordSummary`; the file holds every kept episode (none written when
    no episode was kept).

    Raises:
        HardwareError: when a device fails (the kept episodes are already on disk).
        OSError: when the file cannot be written.
    """
    summary = RecordSummary()
    shield = Shield(rig.shield_config())
    ticker = Ticker(rig.config.hz)
    kept: list[Demos] = []
    meta = _meta(rig, config)
    try:
        while summary.kept < config.episodes:
            _place_object(rig, teleop, config, ticker, out)
            episode, task_success = _record_episode(rig, teleop, shield, ticker, config, meta, summary, out)
            if episode is None:
                continue
            kept.append(episode)
            summary.kept += 1
            summary.successes += int(episode.episode_success[0])
            summary.task_successes += int(bool(task_success))
            summary.steps += episode.num_transitions
            save_demos(config.out, concatenate(kept) if len(kept) > 1 else kept[0])
            out(f"episode {summary.kept}/{config.episodes} kept: "
                f"{'success' if episode.episode_success[0] else 'failure'}, {episode.num_transitions} steps"
                + ("" if task_success is None else f" (task {'solved' if task_success else 'not solved'})")
                + f"; saved to {config.out}")
    except _Quit:
        out("quit")
    except KeyboardInterrupt:
        summary.interrupted = True
        out("interrupted (Ctrl-C): the episode in progress is dropped")
    finally:
        rig.robot.stop()
        summary.overruns = ticker.overruns
    out(f"recorded {summary.kept} episodes ({summary.successes} successful, {summary.discarded} discarded, "
        f"{summary.steps} transitions, {summary.overruns} overruns)"
        + (f" in {config.out}" if summary.kept else "; nothing written"))
    return summary


def _meta(rig: Rig, config: RecordConfig) -> DemoMeta:
    cameras = tuple(rig.cameras)
    if not cameras:
        raise RecordError("recording needs at least one camera")
    return DemoMeta(task=rig.config.task or config.task, direction=config.direction, obs_mode="pixels",
                    cameras=cameras, image_size=rig.config.image_size, source="teleop",
                    notes={"robot": rig.config.robot, "hz": float(rig.config.hz),
                           "max_steps": config.max_steps, **({"split": config.split} if rig.config.is_sim else {})})


def _place_object(rig: Rig, teleop: Teleop, config: RecordConfig, ticker: Ticker, out: Printer) -> None:
    """Sim: resets to the direction's start set. Real: homes the arm, then waits for the
    operator's SUCCESS button (QUIT stops)."""
    if rig.config.is_sim:
        init = "initial" if config.direction == "forward" else "goal"
        rig.reset_sim({"init": init, "split": config.split})
        teleop.read()  # drop buttons pressed during the reset
        teleop.reset()
        return
    out("homing the arm ...")
    rig.robot.home()
    teleop.reset()
    out("place the object, then press success (Enter / SpaceMouse button) to start; quit (Esc) stops")
    teleop.read()
    ticker.start()
    while True:
        ticker.wait()
        buttons = teleop.read().buttons
        if TeleopButton.QUIT in buttons:
            raise _Quit
        if TeleopButton.SUCCESS in buttons:
            return


def _record_episode(rig: Rig, teleop: Teleop, shield: Shield, ticker: Ticker, config: RecordConfig,
                    meta: DemoMeta, summary: RecordSummary,
                    out: Printer) -> tuple[Demos | None, bool | None]:
    """Runs one episode; returns ``(episode or None when discarded, task success or None)``."""
    recorder = DemoRecorder()
    observation = rig.observe()
    recorder.start(observation.arrays)
    task_success = rig.task_success()
    steps, marked = 0, None
    ticker.start()
    try:
        while marked is None:
            command = teleop.read()
            marked = _episode_mark(command.buttons, summary, out)
            if marked is not None:
                break
            result = shield.filter(command.action, observation.state, time.monotonic(), observation.frame_ages)
            applied = rig.robot.send_action(result.command)
            ticker.wait()
            observation = rig.observe()
            solved = rig.task_success()
            task_success = None if solved is None else bool(task_success) or solved
            steps += 1
            recorder.step(applied, 0.0, observation.arrays)
            if steps >= config.max_steps:
                out(f"episode reached --max-steps {config.max_steps}: ending it as a failure")
                marked = False
    except (_Quit, KeyboardInterrupt):
        summary.discarded += int(steps > 0)
        raise
    if marked == "discard":
        return None, None
    if steps == 0:
        out("episode ended before any step: discarded")
        summary.discarded += 1
        return None, None
    recorder.end(success=bool(marked), terminal=bool(marked))
    episode = recorder.build(meta)
    if marked:  # the final transition reached the goal: the sparse reward of the demo
        rewards = episode.rewards.copy()
        rewards[-2] = 1.0
        episode = Demos(observations=episode.observations, actions=episode.actions, rewards=rewards,
                        terminals=episode.terminals, is_first=episode.is_first, is_last=episode.is_last,
                        episode_success=episode.episode_success, meta=meta)
    return episode, task_success


def _episode_mark(buttons: frozenset[TeleopButton], summary: RecordSummary, out: Printer) -> bool | str | None:
    """Returns ``True``/``False`` (success/failure), ``"discard"``, or ``None`` to continue.

    Raises _Quit on QUIT (the open episode is dropped)."""
    if TeleopButton.QUIT in buttons:
        out("quit: the episode in progress is dropped")
        raise _Quit
    if TeleopButton.DISCARD in buttons:
        summary.discarded += 1
        out("episode discarded")
        return "discard"
    if TeleopButton.SUCCESS in buttons:
        return True
    if TeleopButton.FAILURE in buttons:
        return False
    return None


__all__ = ["Observation", "RecordConfig", "RecordError", "RecordSummary", "Rig", "RigConfig", "Ticker",
           "build_rig", "build_teleop", "parse_camera", "record_demos"]


# ---------------------------------------------------------------------- command line
def add_record_parser(sub: Any) -> None:
    """Adds the ``record`` subcommand to ``resetfree-demos``' subparsers ``sub``."""
    rec = sub.add_parser("record", help="record teleoperated demos on the Franka or a simulated robot")
    rec.add_argument("--robot", required=True, help="franka, or sim:TASK (e.g. sim:cube)")
    rec.add_argument("--teleop", choices=("keyboard", "spacemouse"), default="keyboard",
                     help="input device (keyboard: w/s a/d r/f q/e move, space gripper, enter success, "
                          "x failure, z discard, esc quit)")
    rec.add_argument("--episodes", type=int, default=50, help="episodes to keep (default 50)")
    rec.add_argument("--out", type=Path, required=True, help="output .npz, rewritten after every kept episode")
    rec.add_argument("--direction", choices=("forward", "backward"), default="forward",
                     help="forward: do the task; backward: undo it (meta.direction)")
    rec.add_argument("--hz", type=float, default=10.0, help="control rate (default 10)")
    rec.add_argument("--task", default="cube", help="task name written to the file on the real robot (default cube)")
    rec.add_argument("--max-steps", type=int, default=500, help="an open episode ends as a failure after this many steps")
    rec.add_argument("--image-size", type=int, default=84, help="side of the square images (default 84)")
    rec.add_argument("--franka-host", default="172.16.0.2", help="Franka control box address")
    rec.add_argument("--camera", action="append", default=[], metavar="NAME=SERIAL",
                     help="RealSense camera (repeatable), e.g. --camera wrist=123 --camera third_person=456")
    rec.add_argument("--split", choices=("id", "ood"), default="id", help="simulated start set (default id)")
    rec.add_argument("--seed", type=int, default=0, help="seed of the simulated robot's resets")


def run_record(args: Any, *, out: Printer = print) -> RecordSummary:
    """Runs ``resetfree-demos record`` from parsed arguments. Blocks for the session.

    Returns the summary. Raises ValueError/RecordError for bad arguments, HardwareError when a
    device fails, OSError when the file cannot be written.
    """
    rig_config = RigConfig(robot=args.robot, hz=args.hz, image_size=args.image_size,
                           franka_host=args.franka_host, cameras=tuple(parse_camera(c) for c in args.camera),
                           seed=args.seed, pacing="realtime")
    config = RecordConfig(out=args.out, episodes=args.episodes, direction=args.direction, task=args.task,
                          max_steps=args.max_steps, split=args.split)
    rig = build_rig(rig_config)
    teleop = build_teleop(args.teleop, rig.robot.action_spec.shape[0])
    with rig, teleop:
        out(f"recording {config.episodes} {config.direction} episodes on {rig_config.robot} "
            f"with the {args.teleop} at {rig_config.hz:g} Hz into {config.out}")
        return record_demos(rig, teleop, config, out=out)
