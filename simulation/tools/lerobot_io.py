"""``resetfree-demos export / import / export-run``: demos and practice data as LeRobotDataset v3.

The mapping itself is :mod:`protocol.lerobot`; this module adds what needs the simulated
tasks or a run directory: the frame rate a task runs at, the check that imported demos fit
a task's observation and action spaces, and the practised episodes of a run, read from the
learner's ingest journal (``RUN_DIR/journal``) without disturbing a learner still writing it.

Practice data has no episodes of its own: the runtime streams segments (``is_first`` ..
``is_last``) in which the forward and backward agents take turns. Each turn of one agent is
one LeRobot episode (task string ``"<task> <agent> practice"``), its final observation the
first of the next turn; turns longer than ``max_episode_steps`` are cut into several
episodes. Rewards, terminals and success are not in the journal (the learner computes
rewards), so they are exported as zeros.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from learner.journal import IngestJournal, JournalConfig, JournalError
from protocol.demos import DemoMeta, Demos, load_demos, save_demos
from protocol.lerobot import DEFAULT_VCODEC, LeRobotFeatureError, export_lerobot, import_lerobot
from protocol.messages import AGENTS, TransitionBatch
from protocol.value_checks import batch_value_error
from simulation.cli import at_least
from simulation.registry import TASKS
from simulation.tasks import task_class, task_info
from simulation.tasks.base import SimulationError

logger = logging.getLogger(__name__)

FALLBACK_FPS = 10
"""Frame rate when neither the demos (``notes["hz"]``) nor a simulated task says one."""
DEFAULT_MAX_EPISODE_STEPS = 1000


class ExportRunError(SimulationError):
    """A run directory's practice data cannot be exported (no journal, no task, unreadable)."""


# ---------------------------------------------------------------------- tasks
def default_fps(meta: DemoMeta) -> int:
    """Returns the frame rate of demos: the recording rate in ``meta.notes["hz"]``, else the
    simulated task's ``render_fps``, else :data:`FALLBACK_FPS`."""
    hz = meta.notes.get("hz")
    if isinstance(hz, (int, float)) and not isinstance(hz, bool) and hz >= 1:
        return round(hz)
    return task_fps(meta.task)


def task_fps(task: str) -> int:
    """Returns a simulated task's ``render_fps`` (its control rate), else :data:`FALLBACK_FPS`."""
    return int(task_class(task).metadata.get("render_fps", FALLBACK_FPS)) if task in TASKS else FALLBACK_FPS


def check_task_spaces(demos: Demos, task: str) -> None:
    """Checks that ``demos`` fit simulated ``task``: the state (or proprio) length, the
    cameras and the action length. A task that is not simulated (a real robot's) passes.

    Raises:
        LeRobotFeatureError: naming the LeRobot feature, its shape and the task's.
    """
    if task not in TASKS:
        return
    info = task_info(task)
    key = "state" if demos.meta.obs_mode == "state" else "proprio"
    want = info.state_dim if key == "state" else info.proprio_dim
    got = int(demos.observations[key].shape[1])
    if got != want:
        raise LeRobotFeatureError(f"observation.state has {got} values; task {task} in {demos.meta.obs_mode} mode "
                                  f"expects {want} ({key})")
    if demos.action_dim != info.action_dim:
        raise LeRobotFeatureError(f"action has {demos.action_dim} values; task {task} expects {info.action_dim}")
    missing = [c for c in info.cameras if c not in demos.observations] if demos.meta.obs_mode == "pixels" else []
    if missing:
        raise LeRobotFeatureError(f"no observation.images.{missing[0]}; task {task} renders {list(info.cameras)}")


def import_demos(in_dir: Path, *, task: str | None, direction: str | None) -> Demos:
    """:func:`protocol.lerobot.import_lerobot`, then :func:`check_task_spaces`. Raises LeRobotError."""
    demos = import_lerobot(in_dir, task=task, direction=direction)
    check_task_spaces(demos, demos.meta.task)
    return demos


# ---------------------------------------------------------------------- practice data
@dataclass
class _Turn:
    """The rows of one agent's turn on one robot session, as they arrive."""

    agent: int
    observations: list[dict[str, np.ndarray]] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)


def practice_episodes(run_dir: Path, *, task: str | None = None,
                      max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS) -> Iterator[Demos]:
    """Yields the practised turns of a run as one-episode :class:`Demos`, in the order they
    ended (several robots' turns interleave). Reads ``RUN_DIR/journal`` read-only, one
    record at a time, so a live or huge run can be exported. Blocks on the disk.

    Raises:
        ExportRunError: when the run has no journal, no task (``run.json`` or ``task``) or
            a record cannot be read.
    """
    if max_episode_steps < 1:
        raise ValueError(f"max_episode_steps: must be positive, got {max_episode_steps}")
    task = task or _run_task(run_dir)
    try:
        journal = IngestJournal.open(JournalConfig(directory=run_dir / "journal", retention_steps=1, fsync=False),
                                     read_only=True)
    except JournalError as e:
        raise ExportRunError(f"{run_dir}: no readable ingest journal ({e})") from e
    turns: dict[str, _Turn] = {}
    next_seq: dict[str, int] = {}
    try:
        for position, batch in journal.records_from(journal.start):
            why = batch_value_error(batch)
            if why:  # as the learner does on replay: a record it would not train on is left out
                logger.warning("journal record at position %d skipped: %s", position, why)
                continue
            if next_seq.get(batch.session_id, batch.first_seq) != batch.first_seq:  # steps missing: a cut
                yield from _close(turns, batch.session_id, None, task)
            next_seq[batch.session_id] = batch.end_seq
            yield from _steps(batch, turns, task, max_episode_steps)
    except JournalError as e:
        raise ExportRunError(f"{run_dir}: {e}") from e
    for session in list(turns):
        yield from _close(turns, session, None, task)


def _run_task(run_dir: Path) -> str:
    path = run_dir / "run.json"
    try:
        return str(json.loads(path.read_text())["task"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ExportRunError(f"{path}: cannot read the run's task ({e}); pass --task") from e


def _steps(batch: TransitionBatch, turns: dict[str, _Turn], task: str, max_steps: int) -> Iterator[Demos]:
    session = batch.session_id
    for i in range(batch.size):
        observation = {k: v[i] for k, v in batch.observations.items()}
        agent = int(batch.agents[i])
        turn = turns.get(session)
        if turn is not None and (batch.is_first[i] or agent != turn.agent or len(turn.actions) >= max_steps):
            # this observation ends the open turn (unless a new segment starts: then the turn
            # ends at its own last observation)
            yield from _close(turns, session, None if batch.is_first[i] else observation, task)
        turn = turns.setdefault(session, _Turn(agent=agent))
        turn.observations.append(observation)
        turn.actions.append(batch.actions[i])
        if batch.is_last[i]:
            yield from _close(turns, session, None, task)


def _close(turns: dict[str, _Turn], session: str, final: dict[str, np.ndarray] | None, task: str) -> Iterator[Demos]:
    """Ends ``session``'s open turn at ``final`` (None: at its own last observation, whose
    action becomes padding) and yields it when it has a transition."""
    turn = turns.pop(session, None)
    if turn is None:
        return
    observations, actions = list(turn.observations), list(turn.actions)
    if final is not None:
        observations.append(final)
        actions.append(np.zeros_like(actions[-1]))
    else:
        actions[-1] = np.zeros_like(actions[-1])
    if len(observations) < 2:
        return
    yield _turn_demos(observations, actions, AGENTS[turn.agent], task, session)


def _turn_demos(observations: list[dict[str, np.ndarray]], actions: list[np.ndarray], direction: str, task: str,
                session: str) -> Demos:
    n = len(observations)
    stacked = {k: np.stack([o[k] for o in observations]) for k in observations[0]}
    cameras = tuple(k for k, v in stacked.items() if v.ndim == 4)
    meta = DemoMeta(task=task, direction=direction, obs_mode="pixels" if cameras else "state", cameras=cameras,
                    image_size=int(stacked[cameras[0]].shape[-1]) if cameras else None, source="practice",
                    notes={"session": session})
    first, last = np.zeros(n, bool), np.zeros(n, bool)
    first[0], last[-1] = True, True
    return Demos(observations=stacked, actions=np.stack(actions).astype(np.float32), rewards=np.zeros(n, np.float32),
                 terminals=np.zeros(n, bool), is_first=first, is_last=last, episode_success=np.zeros(1, bool),
                 meta=meta)


def export_run(run_dir: Path, out_dir: Path, *, task: str | None = None, fps: int | None = None,
               max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS, vcodec: str = DEFAULT_VCODEC) -> Path:
    """Writes the practised turns of ``run_dir`` as one LeRobotDataset ``out_dir``; blocks
    while reading the journal and encoding videos. Returns ``out_dir``.

    Raises:
        ExportRunError: see :func:`practice_episodes` (also when the run has no complete turn).
        LeRobotError: see :func:`protocol.lerobot.export_lerobot`.
    """
    task = task or _run_task(run_dir)
    fps = fps or task_fps(task)
    episodes = practice_episodes(run_dir, task=task, max_episode_steps=max_episode_steps)
    first = next(episodes, None)
    if first is None:
        raise ExportRunError(f"{run_dir}: the journal holds no complete turn to export")

    def chained() -> Iterator[Demos]:
        yield first
        yield from episodes

    return export_lerobot(chained(), out_dir, fps=fps, vcodec=vcodec,
                          task_text=lambda meta: f"{meta.task} {meta.direction} practice")


# ---------------------------------------------------------------------- CLI
def add_lerobot_parsers(sub: Any) -> None:
    """Adds ``export``, ``import`` and ``export-run`` to ``resetfree-demos``' subparsers ``sub``."""
    exp = sub.add_parser("export", help="write a demo file as a LeRobotDataset v3 directory",
                         description="Write a demo file as a LeRobotDataset v3 directory (needs the lerobot "
                                     "extra: pip install 'resetfree[lerobot]').")
    exp.add_argument("demos", type=Path, metavar="DEMOS.npz", help="demo file to export")
    exp.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="new dataset directory (must not exist)")
    exp.add_argument("--format", choices=("lerobot",), default="lerobot", help="output format (default lerobot)")
    _add_video_options(exp, fps_default="the recording rate, else the task's, else 10")
    exp.add_argument("--task-text", default=None, help="task string of every episode (default: 'TASK DIRECTION')")
    imp = sub.add_parser("import", help="read a LeRobotDataset v3 directory into a demo file",
                         description="Read a LeRobotDataset v3 directory into a demo file (needs the lerobot "
                                     "extra). A dataset resetfree exported says its task and direction; for "
                                     "any other pass --task and --direction.")
    imp.add_argument("in_dir", type=Path, metavar="IN_DIR", help="LeRobotDataset directory (v3.0)")
    imp.add_argument("out", type=Path, metavar="OUT.npz", help="demo file to write")
    imp.add_argument("--task", default=None, help="resetfree task of the demos (checked against its spaces)")
    imp.add_argument("--direction", choices=("forward", "backward"), default=None,
                     help="direction of the demos, or which to keep of a mixed dataset")
    run = sub.add_parser("export-run", help="write a run's practised episodes as a LeRobotDataset",
                         description="Write the episodes a run practised (read from RUN_DIR/journal, safe "
                                     "while the run goes on) as one LeRobotDataset v3 directory: one episode "
                                     "per agent turn, task string 'TASK forward|backward practice'.")
    run.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory of resetfree-sim or the learner")
    run.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="new dataset directory (must not exist)")
    run.add_argument("--task", default=None, help="task name (default: from RUN_DIR/run.json)")
    run.add_argument("--max-episode-steps", type=at_least(1), default=DEFAULT_MAX_EPISODE_STEPS,
                     help=f"cut longer turns into several episodes (default {DEFAULT_MAX_EPISODE_STEPS})")
    _add_video_options(run, fps_default="the task's, else 10")


def _add_video_options(parser: argparse.ArgumentParser, *, fps_default: str) -> None:
    parser.add_argument("--fps", type=at_least(1), default=None, help=f"frames per second (default: {fps_default})")
    parser.add_argument("--vcodec", choices=("libsvtav1", "h264", "hevc"), default=DEFAULT_VCODEC,
                        help=f"video codec (default {DEFAULT_VCODEC}, as LeRobot records; h264 plays in more "
                             "players)")


def run_lerobot(args: argparse.Namespace) -> str:
    """Runs ``export``, ``import`` or ``export-run`` from parsed arguments; returns the line
    to print. Raises LeRobotError, ExportRunError, ValueError or OSError on bad input."""
    if args.command == "export":
        demos = load_demos(args.demos)
        fps = args.fps or default_fps(demos.meta)
        out = export_lerobot(demos, args.out_dir, fps=fps, task_text=args.task_text, vcodec=args.vcodec)
        return f"wrote {out}: {demos.num_episodes} episodes, {demos.num_steps} frames at {fps} fps"
    if args.command == "import":
        demos = import_demos(args.in_dir, task=args.task, direction=args.direction)
        save_demos(args.out, demos)
        return (f"wrote {args.out}: {demos.meta.task} {demos.meta.direction}, {demos.num_episodes} episodes, "
                f"{demos.num_transitions} transitions")
    out = export_run(args.run_dir, args.out_dir, task=args.task, fps=args.fps,
                     max_episode_steps=args.max_episode_steps, vcodec=args.vcodec)
    return f"wrote {out}: the practised episodes of {args.run_dir}"
