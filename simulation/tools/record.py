"""Teleoperated demo recording (``resetfree-demos record``) on a :class:`simulation.tools.rig.Rig`.

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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardware.interfaces import Teleop, TeleopButton
from hardware.spacemouse import SpaceMouseTeleop
from hardware.teleop import KeyboardTeleop
from protocol.demos import DemoMeta, DemoRecorder, Demos, concatenate, save_demos
from runtime.shield import Shield
from simulation.tools.rig import Printer, RecordError, Rig, RigConfig, Ticker, build_rig, parse_camera

logger = logging.getLogger(__name__)


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


def build_teleop(kind: str, action_dim: int) -> Teleop:
    """Returns the teleop device ``kind`` (``keyboard`` or ``spacemouse``), not connected.

    Raises RecordError for another kind.
    """
    if kind == "keyboard":
        return KeyboardTeleop(action_dim=action_dim)
    if kind == "spacemouse":
        return SpaceMouseTeleop(action_dim=action_dim)
    raise RecordError(f"teleop: expected 'keyboard' or 'spacemouse', got {kind!r}")


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


__all__ = ["RecordConfig", "RecordSummary", "build_teleop", "record_demos"]


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
