"""Interventions the cube-grasp practice would have needed, counted from the twin's state.

The forward agent grasps the cube; the backward agent's job is to put it back where the
forward agent can grasp it again. On a real robot a human steps in whenever it does not. Here
that is counted offline from the learner's ingest journal (``RUN_DIR/journal``, opened
read-only, so a live run can be counted):

* a **backward turn end** is the first observation of a forward turn that follows a backward
  turn in the same segment (the agents alternate every switch interval; a turn cut by the end
  of a segment is not judged);
* the cube is **in reach** at a turn end when it rests on the table (its centre within
  :data:`REST_TOLERANCE` of its resting height: on a face, not held, not tipped onto an edge,
  not fallen to the floor) with its centre inside the hand's workspace box in x and y
  (:data:`REACH_LOW`..:data:`REACH_HIGH`, ``cube.WORKSPACE_LOW/HIGH``: the pinch point can be
  brought over any such cube, at any yaw);
* a **failed turn** ends with the cube out of reach (``cube.in_reach``, the task's operator
  rule); without an operator an **intervention** is a run of consecutive failed turns (a human
  would step in once and put the cube back; in simulation nobody does, so the cube stays out
  until the agents bring it back themselves, or for good).

With the runtime's emulated operator (``resetfree-runtime --operator``, ``RunSpec.operator``)
the twin does step in: at the end of every backward turn it applies the same rule and, when the
cube is out of reach, resets the scene, which ends the segment. Then every failed turn is an
intervention, and a failed turn is visible in the journal's structure alone: a segment that
ends right after a complete backward turn (``operator_turn`` backward steps, the last of them its
closing frame, one action before the state the operator judged), followed by a forward turn. Such a count needs no cube position,
so it is exact in pixel mode too, with no replay (a runtime stopped and resumed exactly at a
backward turn's end would be miscounted as one intervention).

Where the cube's position comes from: in state mode it is in every observation
(``state[5:8]``). Pixel observations hold only cameras and proprio, so the twin is
**replayed**: a state-mode cube environment is reset as the simulated robot was (its seed,
``init="initial"``) and driven with the journal's applied actions, its end effector and
gripper checked against the journal's proprio at every step; a mismatch stops the count
(reported as ``diverged_at``), so a replay never counts a trajectory the robot did not take.
Every function blocks on the disk (and, replaying, on MuJoCo).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from learner.journal import IngestJournal, JournalConfig, JournalError
from protocol.messages import BACKWARD, FORWARD, TransitionBatch
from simulation.tasks.base import SimulationError
from simulation.tasks.cube import REACH_HIGH, REACH_LOW, REST_TOLERANCE, REST_Z, in_reach

logger = logging.getLogger(__name__)

CUBE_IN_STATE = slice(5, 8)
"""The cube's centre in a state observation (``cube.CubeGraspEnv._task_state``)."""
REPLAY_TOLERANCE = 1e-4
"""Largest difference (m) between the replayed and the recorded proprio before a replay stops."""


class InterventionError(SimulationError):
    """A run's journal cannot be read, or holds observations the counter cannot use."""


@dataclasses.dataclass(frozen=True)
class TurnEnd:
    """The state at the end of one backward turn."""

    position: int
    """Journal position of the observation (≈ env steps practised before it)."""
    cube: tuple[float, float, float] | None
    """The cube's centre, m (None: not known, a pixel run counted from the operator's resets)."""
    lost: bool | None = None
    """Whether the cube was out of reach: the emulated operator's verdict (True: it reset the
    scene), or None to judge it from ``cube`` (``in_reach``)."""

    def failed(self) -> bool:
        """Whether the turn ended with the cube out of reach."""
        if self.lost is not None:
            return self.lost
        if self.cube is None:
            raise InterventionError(f"turn end at journal position {self.position}: neither the cube nor a verdict")
        return not in_reach(self.cube)


@dataclasses.dataclass(frozen=True, kw_only=True)
class InterventionReport:
    """What :func:`count_interventions` found."""

    turns: int
    """Backward turns judged (ended by a switch to the forward agent)."""
    failed_turns: int
    """Backward turns that ended with the cube out of reach."""
    interventions: int
    """How often a human would have stepped in: runs of consecutive failed turns, or with the
    emulated operator every failed turn (each one it reset)."""
    first_failure: int | None
    """Journal position of the first failed turn end, None when none failed."""
    out_of_reach_at_end: bool
    """The last judged turn ended out of reach (in simulation: maybe for good)."""
    last_cube: tuple[float, float, float] | None
    """The cube's centre at the last judged turn end."""
    source: str
    """``state`` (read from the observations), ``replay`` (pixel runs) or ``operator`` (pixel runs
    with the emulated operator: from its resets alone); see the module docstring."""
    diverged_at: int | None = None
    """Replay only: the journal position where the replay stopped matching (count up to there)."""
    operator: bool = False
    """The run's runtime emulated the operator (every failed turn was reset)."""
    region: str = (f"cube resting on the table (|z - {REST_Z:g}| <= {REST_TOLERANCE:g} m) with its centre in "
                   f"x, y in [{REACH_LOW[0]:g}, {REACH_HIGH[0]:g}] m (the hand's workspace box)")
    """The reachable region, in words."""

    def to_dict(self) -> dict[str, Any]:
        """Returns the report as JSON builtins."""
        return dataclasses.asdict(self)


def count_interventions(ends: Iterable[TurnEnd], *, source: str = "state", diverged_at: int | None = None,
                        operator: bool = False) -> InterventionReport:
    """Counts failed backward turns and interventions in ``ends``: runs of failed turns, or
    with the emulated ``operator`` (who reset every one) each failed turn."""
    turns = failed = interventions = 0
    first: int | None = None
    previous_failed = False
    last: TurnEnd | None = None
    for end in ends:
        turns += 1
        failed_now = end.failed()
        if failed_now:
            failed += 1
            first = end.position if first is None else first
            interventions += int(operator or not previous_failed)
        previous_failed, last = failed_now, end
    return InterventionReport(turns=turns, failed_turns=failed, interventions=interventions, first_failure=first,
                              out_of_reach_at_end=previous_failed, last_cube=None if last is None else last.cube,
                              source=source, diverged_at=diverged_at, operator=operator)


Observation = dict[str, np.ndarray]
StepHook = Callable[[int, Observation, np.ndarray, bool, bool], "np.ndarray | None"]
"""Called for every journal step ``(position, observation, action, is_first, is_last)``;
returns the cube's centre at that observation (None: unknown)."""


def backward_turn_ends(records: Iterable[tuple[int, TransitionBatch]], cube_at: StepHook, *,
                       operator_turn: int | None = None) -> Iterator[TurnEnd]:
    """Yields the end of every backward turn in ``records`` (journal order, one robot
    session at a time; several sessions are followed separately). ``cube_at`` is called for
    every step, in order. ``operator_turn``: the runs' switch interval when the runtime emulated
    the operator; then a segment closed right after that many backward steps is a turn end the
    operator found lost (``lost=True``), and one followed by a forward step in the same segment
    one it found in reach (``lost=False``), whether or not the cube is known."""
    previous: dict[str, int | None] = {}
    backward_run: dict[str, int] = {}  # the segment's consecutive backward rows, this one included
    for position, batch in records:
        session = batch.session_id
        for i in range(batch.size):
            observation = {k: v[i] for k, v in batch.observations.items()}
            first, last = bool(batch.is_first[i]), bool(batch.is_last[i])
            cube = cube_at(position + i, observation, batch.actions[i], first, last)
            known = None if cube is None else tuple(float(v) for v in cube)
            agent = int(batch.agents[i])
            run = (0 if first else backward_run.get(session, 0)) + 1 if agent == BACKWARD else 0
            backward_run[session] = run
            turn_ended = not first and previous.get(session) == BACKWARD and agent == FORWARD
            if operator_turn is not None:
                # the turn's last step closes the segment (its action is padding), as at a reset
                if last and agent == BACKWARD and run == operator_turn:
                    yield TurnEnd(position=position + i, cube=known, lost=True)  # type: ignore[arg-type]
                elif turn_ended:
                    yield TurnEnd(position=position + i, cube=known, lost=False)  # type: ignore[arg-type]
            elif turn_ended and known is not None:
                yield TurnEnd(position=position + i, cube=known)  # type: ignore[arg-type]
            previous[session] = None if last else agent


def state_cube(_position: int, observation: Observation, _action: np.ndarray, _first: bool,
               _last: bool) -> np.ndarray:
    """:data:`StepHook` of a state-mode journal: the cube's centre from ``state``."""
    if "state" not in observation:
        raise InterventionError(f"observation has no 'state' (keys {sorted(observation)})")
    return np.asarray(observation["state"], dtype=np.float64)[CUBE_IN_STATE]


class TwinReplay:
    """:data:`StepHook` of a pixel-mode journal: replays the applied actions through a state
    twin reset as the simulated robot was (``seed``), checking the proprio every step.
    ``diverged_at`` is set (and no cube returned from then on) when the two disagree."""

    def __init__(self, seed: int) -> None:
        from simulation.tasks import make

        self.seed = seed
        self.env = make("cube", obs="state")
        self.diverged_at: int | None = None
        self._state: np.ndarray | None = None

    def close(self) -> None:
        """Closes the twin."""
        self.env.close()

    def __call__(self, position: int, observation: Observation, action: np.ndarray, is_first: bool,
                 is_last: bool) -> np.ndarray | None:
        if self.diverged_at is not None:
            return None
        proprio = np.asarray(observation.get("proprio", ()), dtype=np.float64)
        if proprio.shape != (4,):
            raise InterventionError(f"replay needs a 4-value proprio, got {proprio.shape} at position {position}")
        if self._state is None or (is_first and not self._matches(proprio)):
            # the first segment, or a restarted simulated robot: it reset with its seed
            self._state = np.asarray(self.env.reset(seed=self.seed, options={"init": "initial"})[0], np.float64)
        if not self._matches(proprio):
            self.diverged_at = position
            logger.warning("interventions: the replay left the recorded trajectory at journal position %d "
                           "(proprio %s, replay %s); counted up to there", position, proprio.round(4),
                           self._proprio().round(4))
            return None
        cube = self._state[CUBE_IN_STATE].copy()
        if not is_last:  # the last observation's action is padding: nothing was applied
            self._state = np.asarray(self.env.step(np.asarray(action, np.float32))[0], np.float64)
        return cube

    def _proprio(self) -> np.ndarray:
        assert self._state is not None
        return np.array([*self._state[0:3], self._state[4]])

    def _matches(self, proprio: np.ndarray) -> bool:
        return self._state is not None and bool(np.max(np.abs(self._proprio() - proprio)) <= REPLAY_TOLERANCE)


def journal_records(run_dir: Path) -> Iterator[tuple[int, TransitionBatch]]:
    """Yields ``(position, batch)`` of ``RUN_DIR/journal``, read-only. Raises InterventionError."""
    try:
        journal = IngestJournal.open(JournalConfig(directory=run_dir / "journal", retention_steps=1, fsync=False),
                                     read_only=True)
        yield from journal.records_from(journal.start)
    except JournalError as e:
        raise InterventionError(f"{run_dir}: cannot read the ingest journal: {e}") from e


def no_cube(_position: int, _observation: Observation, _action: np.ndarray, _first: bool, _last: bool) -> None:
    """:data:`StepHook` of a pixel journal counted from the emulated operator's resets."""
    return None


def journal_interventions(run_dir: Path, *, obs: str, seed: int, operator_turn: int | None = None) -> InterventionReport:
    """Counts the interventions of one simulated cube run (one robot, runtime seed ``seed``)
    from its journal: from the states (``obs="state"``) or by replay (``"pixels"``), or, when the
    runtime emulated the operator (``operator_turn``: its switch interval), from the operator's
    resets (module docstring). Blocks (a pixel replay steps the twin once per practised step,
    ~1 ms each).

    Raises InterventionError when the journal is unreadable or lacks what is needed.
    """
    if operator_turn is not None:
        hook: StepHook = state_cube if obs == "state" else no_cube
        ends = backward_turn_ends(journal_records(run_dir), hook, operator_turn=operator_turn)
        return count_interventions(ends, source="state" if obs == "state" else "operator", operator=True)
    if obs == "state":
        return count_interventions(backward_turn_ends(journal_records(run_dir), state_cube), source="state")
    replay = TwinReplay(seed)
    try:
        ends = list(backward_turn_ends(journal_records(run_dir), replay))
    finally:
        replay.close()
    return count_interventions(ends, source="replay", diverged_at=replay.diverged_at)
