"""What a simulated robot does between ticks: scheduled environment resets, goal draws, and an
emulated operator's resets.

:class:`SimEvents` resets the environment every ``LoopConfig.env_reset_every`` recorded steps
(the paper's schedule for the EARL tasks) and, for multi-goal tasks, draws a new goal when a
forward turn ends (``LoopConfig.draw_goal_each_turn``, as MEDAL's loop draws one at every switch
to the backward agent), and, with ``LoopConfig.operator_resets``, resets the environment when a
backward turn ends with the scene lost (``robot.scene_lost``: the task's operator rule, e.g. the
cube out of the hand's reach), as the person watching a reset-free run would, counting each such
intervention. Each event ends the recording segment, runs the simulator's blocking
call in a worker thread while :class:`runtime.loop.ControlLoop` awaits it between two ticks, and
starts the clock's grid afresh. A real robot has none of them (``go_home`` is an operator command,
and a real person steps in).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from hardware.interfaces import Robot, SimulatedRobot
from protocol.messages import BACKWARD, FORWARD
from runtime.clock import Clock
from runtime.schedule import AgentSchedule

logger = logging.getLogger(__name__)


class SimEvents:
    """The environment resets, goal draws and operator resets of one control loop; see the module
    docstring."""

    def __init__(self, *, robot: Robot, schedule: AgentSchedule, clock: Clock, end_segment: Callable[[], None],
                 reset_every: int | None, draw_goal_each_turn: bool, operator_resets: bool) -> None:
        """``end_segment`` ends the loop's recording segment. Raises ValueError when resets, goal
        draws or operator resets are asked for and ``robot`` is not a
        :class:`~hardware.interfaces.SimulatedRobot`."""
        if (reset_every is not None or draw_goal_each_turn or operator_resets) and not isinstance(robot, SimulatedRobot):
            raise ValueError(f"loop: environment resets, goal draws and operator resets need a simulated robot; "
                             f"{robot.name} ({type(robot).__name__}) is not one")
        self.robot, self.schedule, self.clock = robot, schedule, clock
        self._end_segment = end_segment
        self._reset_every = reset_every
        self._draw_goal_each_turn = draw_goal_each_turn
        self._steps_since_reset = 0
        self.env_resets = 0
        """Scheduled environment resets done (simulation)."""
        self.goals_drawn = 0
        """Goals drawn at the end of forward turns (simulated multi-goal tasks)."""
        self._goal_drawn_at = -1  # schedule.switches when the last goal was drawn: once per turn
        self._operator_resets = operator_resets
        self._checked_at = -1  # schedule.switches when the operator last looked: once per backward turn
        self.interventions = 0
        """Operator resets done: backward turns that ended with the scene lost (simulation)."""

    def step_recorded(self) -> None:
        """Counts one recorded step toward the next environment reset. Non-blocking."""
        self._steps_since_reset += 1

    def reset_due(self) -> bool:
        """Whether an environment reset is due now."""
        every = self._reset_every
        return every is not None and self._steps_since_reset >= every

    async def reset_environment(self, steps: int) -> None:
        """Resets the environment (in a thread; blocks the caller, not the event loop).
        ``steps``: the loop's recorded steps, for the log."""
        assert isinstance(self.robot, SimulatedRobot)  # checked in __init__
        self._steps_since_reset = 0
        self._end_segment()
        await asyncio.to_thread(self.robot.reset_environment)
        self.env_resets += 1
        self.clock.rebase()
        logger.info("loop: environment reset after %d steps", steps)

    def goal_due(self) -> bool:
        """Whether a forward turn just ended and its goal draw is due."""
        schedule = self.schedule
        return (self._draw_goal_each_turn and schedule.agent == FORWARD and schedule.turn_complete
                and self._goal_drawn_at != schedule.switches)

    async def draw_goal(self) -> None:
        """Draws the next goal (in a thread; blocks the caller, not the event loop)."""
        assert isinstance(self.robot, SimulatedRobot)  # checked in __init__
        self._goal_drawn_at = self.schedule.switches
        self._end_segment()  # the next step, at the new goal, starts a segment
        await asyncio.to_thread(self.robot.draw_goal)
        self.goals_drawn += 1
        self.clock.rebase()

    def intervention_due(self) -> bool:
        """Whether a backward turn just ended, so that the emulated operator looks at the scene."""
        schedule = self.schedule
        return (self._operator_resets and schedule.agent == BACKWARD and schedule.turn_complete
                and self._checked_at != schedule.switches)

    async def intervene(self, steps: int) -> bool:
        """Looks at the scene as the person watching the run would at the end of a backward turn:
        when it is lost (``robot.scene_lost``), resets the environment (in a thread) and counts an
        intervention. Returns whether it did. ``steps``: the loop's recorded steps, for the log."""
        assert isinstance(self.robot, SimulatedRobot)  # checked in __init__
        self._checked_at = self.schedule.switches
        if not self.robot.scene_lost:
            return False
        self._end_segment()
        await asyncio.to_thread(self.robot.reset_environment)
        self.interventions += 1
        self._steps_since_reset = 0
        self.clock.rebase()
        logger.info("loop: the backward turn ended with the scene lost; emulated operator reset it "
                    "(intervention %d, after %d steps)", self.interventions, steps)
        return True
