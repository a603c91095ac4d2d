"""The runtime's shield leaves the twins' own good actions alone.

The shield is built exactly as ``resetfree-runtime --robot sim:TASK --lockstep`` builds it
(:meth:`runtime.robots.RobotKinds.facts` + :func:`runtime.robots.shield_config` on a state-mode
lock-step :class:`~simulation.sim_robot.SimRobot`) and given, for every action, the robot
state the runtime's loop would give it at the state where the action was taken: the
end-effector position the sim robot publishes (hand xyz for door and peg, i.e. EARL's
``obs[0:3]``; gripper xy + the attachment flag for tabletop; the measured EE for cube).

Actions come from (a) the scripted experts, forward and backward, and (b) EARL's own state
demos (``../shared/earl-demos``). Every action must come out unchanged — bit for bit — except
where it genuinely pushes the end-effector target out of the twin's box: then the shield may
clip it, but only for that reason and only to what the twin's own clipping would leave
(target clipped to the box, every other element untouched).

"What the twin does" is measured from the twin itself, not read from the task's
declaration: the displacement of its commanded target (sawyer mocap, cube EE target,
tabletop gripper) under a unit action, and the box where that target stops. So a shield
whose scale disagrees with the twin (the old 5 cm default for door and peg against the
twin's 1 cm) fails here, and so would a declaration that disagrees with the twin
(``test_declared_move_scale_is_what_the_twin_does``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from hardware.interfaces import RobotState
from runtime.robot_kinds import ROBOTS
from runtime.robots import shield_config
from runtime.shield import Shield, ShieldResult
from simulation.tools.demos_cli import import_earl
from simulation.experts import get_expert
from simulation.sim_robot import SimRobot
from simulation.sim_worker import _ee_position
from simulation.tasks import make, task_info
from simulation.tasks.base import TaskEnv

REPO = Path(__file__).resolve().parents[2]
HZ = 10.0
TASKS = ("tabletop", "door", "peg", "cube")
EARL_TASKS = ("tabletop", "door", "peg")
DIRECTIONS = ("forward", "backward")
EXPERT_EPISODES = 3


# ---------------------------------------------------------------------- the twin, measured
def _target(env: TaskEnv) -> np.ndarray:
    """The point the twin moves by the scaled action and clips to its box (its commanded target)."""
    task = env.info.name
    if task in ("door", "peg"):
        return env.data.mocap_pos[0].copy()
    if task == "cube":
        return env.ee_target()  # type: ignore[attr-defined]
    return np.asarray(env.gripper, dtype=np.float64).copy()  # type: ignore[attr-defined]


def _motion_axes(task: str) -> tuple[int, ...]:
    """Action elements that move the target (tabletop: dx, dy; its third element is the grasp)."""
    return (0, 1) if task == "tabletop" else (0, 1, 2)


@dataclass(frozen=True)
class Twin:
    """How the twin moves its target: metres (task units) per action unit, and its box."""

    task: str
    scale: float
    low: np.ndarray
    high: np.ndarray

    def effective(self, action: np.ndarray, position: np.ndarray) -> np.ndarray:
        """The action the twin's own clipping leaves, from ``position``: each motion element
        shrunk so that position + scale * a stays in the box; the rest untouched."""
        out = action.astype(np.float64).copy()
        for i in _motion_axes(self.task):
            wanted = position[i] + self.scale * out[i]
            out[i] = (np.clip(wanted, self.low[i], self.high[i]) - position[i]) / self.scale
        return out


_TWINS: dict[str, Twin] = {}


def measured_twin(task: str) -> Twin:
    """Measures the twin: one unit step along +x from a reset (the scale), then full-scale
    steps along each axis until the target stops moving (the box)."""
    if task in _TWINS:
        return _TWINS[task]
    env = make(task, obs="state")
    try:
        dim = env.info.action_dim
        env.reset(seed=0, options={"init": "initial"})
        before = _target(env)
        unit = np.zeros(dim, np.float32)
        unit[0] = 1.0
        env.step(unit)
        scale = float(_target(env)[0] - before[0])
        axes = _motion_axes(task)
        low, high = np.full(len(axes), -np.inf), np.full(len(axes), np.inf)
        for i in axes:
            for sign, bound in ((-1.0, low), (1.0, high)):
                env.reset(seed=0, options={"init": "initial"})
                push = np.zeros(dim, np.float32)
                push[i] = sign
                previous = _target(env)[i]
                for _ in range(400):
                    env.step(push)
                    current = _target(env)[i]
                    if current == previous:
                        break
                    previous = current
                else:
                    pytest.fail(f"{task}: the target never stopped along axis {i} (sign {sign})")
                bound[i] = current
    finally:
        env.close()
    _TWINS[task] = Twin(task=task, scale=scale, low=low, high=high)
    return _TWINS[task]


# ---------------------------------------------------------------------- the runtime's shield
def runtime_shield(task: str) -> Shield:
    """The shield exactly as resetfree-runtime builds it for ``--robot sim:TASK --lockstep``."""
    robot = SimRobot(task, obs="state", pacing="lockstep", hz=HZ)
    facts = ROBOTS.facts(f"sim:{task}", robot)
    return Shield(shield_config(robot, facts, HZ))


def shielded(shield: Shield, action: np.ndarray, ee_position: np.ndarray) -> ShieldResult:
    """One tick of the loop's shield call with a fresh state (no watchdog reason applies)."""
    now = time.monotonic()
    state = RobotState(timestamp=now, ee_position=np.asarray(ee_position, dtype=np.float64), gripper=0.0)
    return shield.filter(np.asarray(action, dtype=np.float32), state, now, {}, False)


@dataclass
class Tally:
    """Counts over a set of actions: altered ones, and those the twin's limits do not explain."""

    actions: int = 0
    altered: int = 0
    unexplained: int = 0
    example: str = ""

    def check(self, twin: Twin, action: np.ndarray, position: np.ndarray, result: ShieldResult) -> None:
        self.actions += 1
        action = np.asarray(action, dtype=np.float32)
        if np.array_equal(result.command, action) and not result.reasons:
            return
        self.altered += 1
        expected = twin.effective(action, position)
        explained = (not result.held and result.reasons == ("workspace_clip",)
                     and not np.array_equal(expected, action.astype(np.float64))
                     and np.allclose(result.command, expected, rtol=0.0, atol=1e-5))
        if not explained:
            self.unexplained += 1
            if not self.example:
                self.example = (f"action {action} at EE {np.round(position, 4)} -> {result.command} "
                                f"{result.reasons}; the twin's own limits leave {np.round(expected, 5)}")

    def report(self, what: str) -> str:
        share = self.altered / max(1, self.actions)
        return (f"{what}: {self.altered} of {self.actions} actions altered ({share:.0%}), "
                f"{self.unexplained} not by the twin's own workspace limit. First: {self.example}")


# ---------------------------------------------------------------------- (a) scripted experts
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("task", TASKS)
def test_shield_leaves_expert_actions_alone(task: str, direction: str) -> None:
    twin, shield = measured_twin(task), runtime_shield(task)
    env = make(task, obs="state")
    expert = get_expert(task, direction, seed=0)
    horizon = task_info(task).eval_horizon
    tally = Tally()
    try:
        for episode in range(EXPERT_EPISODES):
            observation, _ = env.reset(seed=episode, options={"init": "initial" if direction == "forward" else "goal"})
            expert.reset(env)
            for _ in range(horizon):
                action = expert.act(env, observation)
                position = _ee_position(env, {})  # what SimRobot publishes as RobotState.ee_position
                tally.check(twin, action, position, shielded(shield, action, position))
                observation, *_ = env.step(action)
                if expert.done(env):
                    break
    finally:
        env.close()
    assert tally.actions > 0
    assert tally.unexplained == 0, tally.report(f"{task} {direction} expert")
    assert not {"action_clip", "step_clip", "speed_clip", "gripper_clip"} & set(shield.counters.by_reason)


# ---------------------------------------------------------------------- (b) EARL's own demos
def _earl_demo_dir() -> Path | None:
    for candidate in (os.environ.get("RESETFREE_EARL_DEMOS"), str(REPO.parent / "shared" / "earl-demos")):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


EARL_DEMOS = _earl_demo_dir()


@pytest.mark.skipif(EARL_DEMOS is None, reason="EARL demos not found ($RESETFREE_EARL_DEMOS or ../shared/earl-demos)")
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("task", EARL_TASKS)
def test_shield_leaves_earl_demo_actions_alone(task: str, direction: str) -> None:
    assert EARL_DEMOS is not None
    path = EARL_DEMOS / f"{task}_{direction}.npz"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    demos = import_earl(path, task, direction)
    states, actions = demos.observations["state"], demos.actions
    twin, shield = measured_twin(task), runtime_shield(task)
    scene = make(task, obs="state") if task == "tabletop" else None  # kinematic: set from the vector
    tally = Tally()
    try:
        for start, stop in demos.episode_bounds():
            for row in range(start, stop - 1):  # an episode's last row carries no action
                state = np.asarray(states[row], dtype=np.float64)
                if scene is not None:
                    scene.set_from_earl_observation(state)
                    position = _ee_position(scene, {})  # gripper xy + attachment, as SimRobot publishes
                else:
                    position = state[0:3]  # EARL's hand xyz = the twin's hand_pos()
                tally.check(twin, actions[row], position, shielded(shield, actions[row], position))
    finally:
        if scene is not None:
            scene.close()
    assert tally.actions > 0
    assert tally.unexplained == 0, tally.report(f"{task} {direction} EARL demo")


# ---------------------------------------------------------------------- the declaration itself
@pytest.mark.parametrize("task", TASKS)
def test_declared_move_scale_is_what_the_twin_does(task: str) -> None:
    twin = measured_twin(task)
    info = task_info(task)
    assert info.move_scale == pytest.approx(twin.scale, rel=1e-6)  # the twins scale a float32 action
    robot = SimRobot(task, obs="state", pacing="lockstep", hz=HZ)
    config = shield_config(robot, ROBOTS.facts(f"sim:{task}", robot), HZ)
    assert config.position_scale == info.move_scale and config.max_step == (info.move_scale,) * 3
    # the shield bounds the target by the twin's own box (tabletop declares none: its
    # shield box is the default, wider than the twin's +-2.8)
    low, high = np.asarray(config.workspace.low), np.asarray(config.workspace.high)
    axes = list(_motion_axes(task))
    if task == "tabletop":
        assert np.all(low[axes] <= twin.low[axes]) and np.all(high[axes] >= twin.high[axes])
    else:
        np.testing.assert_allclose(low[axes], twin.low[axes], atol=1e-9)
        np.testing.assert_allclose(high[axes], twin.high[axes], atol=1e-9)
    # the gripper channel: the last element when there are more than three (tabletop: none)
    assert config.gripper_index == (None if info.action_dim <= 3 else info.action_dim - 1)
