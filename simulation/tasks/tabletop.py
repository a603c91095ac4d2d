"""EARL's tabletop organization, a kinematic 2-D twin rendered through MuJoCo.

The task follows EARL's ``TabletopManipulation`` (google-research ``earl_benchmark``):

* state (12, ``float32``): gripper xy, mug xy, ``attached`` (``(-1, -1)`` when the gripper
  holds nothing, ``(0, 0)`` while it holds the mug — EARL's ``(color, object)`` index of
  the held object), goal (6) = ``(0, 0, mug_goal_x, mug_goal_y, -1, -1)``: the goal state
  of the first six entries (gripper back at the origin, mug at its target, released);
* action (3): ``dx, dy = 0.2 * a[:2]``; ``a[2] > 0`` grasps (attaches the object nearest to
  the gripper if it lies strictly within 0.4, checked *before* the move), ``a[2] <= 0``
  releases; the gripper, and the held mug with it, move by the same displacement; every
  coordinate is clipped to ``[-2.8, 2.8]``;
* initial state ``[0, 0, 2.5, 0]`` (gripper at the origin, mug at (2.5, 0)), one of four
  goals (-2.5, -1), (-2.5, 1), (0, 2), (0, -2) drawn per reset.

**Success.** EARL's demos (and its fixed-start environment) score success as
``||(gripper, mug) - (0, 0, goal)|| <= 0.2``: the mug at its goal *and* the gripper back at
the origin (checked on ``../shared/earl-demos``: that criterion reproduces every recorded
reward, the mug-only one does not). That is the default (``success="earl"``);
``success="mug"`` scores ``||mug - goal|| <= 0.2`` alone (design §5's short form).

**Backward.** EARL's backward task has the goal vector ``(0, 0, 2.5, 0, -1, -1)``: put the
mug back at (2.5, 0) and the gripper at the origin; :meth:`TabletopEnv.backward_success`
scores it with the same criterion. ``reset(options={"init": "goal"})`` starts where the
backward demos start: the gripper within reach of the origin and the mug beside its goal,
the 4-d offset at most 0.18 (so the state already counts as forward success).

Pixel mode is goal-conditioned as the authors' code is: ``top`` (the scene) and ``goal``
(the scene with the gripper at the origin and the mug at its goal, cached per goal), each
``uint8 (3, H, W)``, plus ``proprio`` = gripper xy and an attached flag (1.0 holding).
"""

from __future__ import annotations

import importlib.resources
import logging
from typing import Any, Literal

import mujoco
import numpy as np

from simulation.tasks.base import PAPER_RESET_INTERVAL, TaskEnv, TaskInfo

logger = logging.getLogger(__name__)

SuccessMode = Literal["earl", "mug"]

INITIAL_STATE = np.array([0.0, 0.0, 2.5, 0.0])
"""EARL's initial gripper xy and mug xy."""
GOALS = np.array([[-2.5, -1.0], [-2.5, 1.0], [0.0, 2.0], [0.0, -2.0]])
"""EARL's four mug goals, in EARL's order (target colours r, g, b, k)."""
MOVE_SCALE = 0.2
"""Displacement per unit action (EARL's ``move_distance``)."""
GRASP_RADIUS = 0.4
"""An object strictly closer than this to the gripper is attached by a grasp action."""
POSITION_LIMIT = 2.8
"""Every coordinate is clipped to ``[-POSITION_LIMIT, POSITION_LIMIT]``."""
SUCCESS_THRESHOLD = 0.2
"""Distance to the goal under which the task counts as solved."""
GOAL_START_RADIUS = 0.18
"""Largest 4-d offset from the goal state for ``init="goal"`` starts."""
DETACHED = (-1.0, -1.0)
ATTACHED = (0.0, 0.0)
_MARKER_HEIGHTS = {"gripper": 0.5, "mug": 0.15, "goal_marker": 0.012}
_GRIPPER_RGBA = {False: (0.55, 0.55, 0.6, 1.0), True: (0.95, 0.8, 0.1, 1.0)}


def goal_vector(mug_goal: np.ndarray) -> np.ndarray:
    """Returns EARL's 6-d goal encoding ``(0, 0, mug_x, mug_y, -1, -1)`` for a mug target."""
    return np.array([0.0, 0.0, mug_goal[0], mug_goal[1], -1.0, -1.0])


def load_model(name: str) -> mujoco.MjModel:
    """Returns the MJCF model ``simulation/assets/<name>`` (read from the installed package).

    Raises:
        FileNotFoundError: when the asset is not shipped.
    """
    xml = importlib.resources.files("simulation").joinpath("assets", name).read_text()
    return mujoco.MjModel.from_xml_string(xml)


class TabletopEnv(TaskEnv):
    """EARL's tabletop organization (see the module docstring). Never terminates."""

    info = TaskInfo(name="tabletop", eval_horizon=200, reset_interval=PAPER_RESET_INTERVAL,
                    earl_reset_interval=200_000, move_scale=MOVE_SCALE,
                    success_threshold=SUCCESS_THRESHOLD, cameras=("top",), state_dim=12,
                    proprio_dim=3, action_dim=3,
                    state_goals=tuple(tuple(goal_vector(g).tolist()) for g in GOALS),
                    operator_rule=None)

    def __init__(self, *, success: SuccessMode = "earl", **kwargs: Any) -> None:
        if success not in ("earl", "mug"):
            raise ValueError(f"success: must be 'earl' or 'mug', got {success!r}")
        self.success_mode: SuccessMode = success
        self.gripper = INITIAL_STATE[:2].copy()
        self.mug = INITIAL_STATE[2:].copy()
        self.attached = False
        self.goal = goal_vector(GOALS[0])
        self._goal_images: dict[tuple[float, float, int], np.ndarray] = {}
        super().__init__(**kwargs)

    # ------------------------------------------------------------------ task hooks
    def _task_build(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        model = load_model("tabletop.xml")
        data = mujoco.MjData(model)
        self._mocap = {name: model.body_mocapid[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, name)]
                       for name in _MARKER_HEIGHTS}
        self._gripper_geom = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, "gripper")
        return model, data

    def _task_reset(self, rng: np.random.Generator, options: dict[str, Any]) -> None:
        init = options.get("init", "initial")
        if init not in ("initial", "goal"):
            raise ValueError(f"options['init']: must be 'initial' or 'goal', got {init!r}")
        goal_index = options.get("goal_index")
        if goal_index is None:
            goal_index = int(rng.integers(len(GOALS)))
        elif not 0 <= int(goal_index) < len(GOALS):
            raise ValueError(f"options['goal_index']: must be in [0, {len(GOALS)}), got {goal_index}")
        self.goal = goal_vector(GOALS[int(goal_index)])
        self.attached = False
        if init == "initial":
            self.gripper, self.mug = INITIAL_STATE[:2].copy(), INITIAL_STATE[2:].copy()
        else:
            offset = self._sample_ball(rng, GOAL_START_RADIUS)
            self.gripper = self.goal[:2] + offset[:2]
            self.mug = self.goal[2:4] + offset[2:]
        self._sync_scene()

    def _task_draw_goal(self, rng: np.random.Generator) -> None:
        self.goal = goal_vector(GOALS[int(rng.integers(len(GOALS)))])
        self._sync_scene()

    def _task_step(self, action: np.ndarray) -> None:
        # EARL's order: the grasp test uses the gripper position before this step's move.
        if action[2] > 0:
            if not self.attached and np.linalg.norm(self.gripper - self.mug) < GRASP_RADIUS:
                self.attached = True
        else:
            self.attached = False
        before = self.gripper
        self.gripper = np.clip(before + MOVE_SCALE * action[:2].astype(np.float64),
                               -POSITION_LIMIT, POSITION_LIMIT)
        if self.attached:
            self.mug = np.clip(self.mug + (self.gripper - before), -POSITION_LIMIT, POSITION_LIMIT)
        self._sync_scene()

    def _task_state(self) -> np.ndarray:
        return self.state_vector().astype(np.float32)

    def _task_proprio(self) -> np.ndarray:
        return np.array([*self.gripper, float(self.attached)], dtype=np.float32)

    def _task_success(self) -> bool:
        return self.forward_success()

    def _task_extra_images(self) -> dict[str, np.ndarray]:
        # A copy: observations must never share memory with each other or with the cache.
        return {"goal": self.goal_image().copy()}

    def _task_extra_image_names(self) -> tuple[str, ...]:
        return ("goal",)

    # ------------------------------------------------------------------ public helpers
    def state_vector(self) -> np.ndarray:
        """Returns EARL's 12-d state (``float64``; the observation is its ``float32`` cast)."""
        return np.concatenate([self.gripper, self.mug, ATTACHED if self.attached else DETACHED,
                               self.goal])

    def forward_success(self) -> bool:
        """Returns whether the episode's goal is reached (the task's success criterion)."""
        return self._solved(self.goal)

    def backward_success(self) -> bool:
        """Returns whether EARL's backward task is solved: mug back at (2.5, 0) (and, with
        ``success="earl"``, the gripper back at the origin)."""
        return self._solved(goal_vector(INITIAL_STATE[2:]))

    def goal_image(self) -> np.ndarray:
        """Returns the ``top`` view of the goal state (``uint8 (3, H, W)``), cached per goal
        (the cached array itself: do not modify it).

        Blocks while rendering the first time a goal is seen.
        """
        key = (float(self.goal[2]), float(self.goal[3]), self.image_size)
        if key not in self._goal_images:
            saved = (self.gripper, self.mug, self.attached)
            self.gripper, self.mug, self.attached = self.goal[:2].copy(), self.goal[2:4].copy(), False
            self._sync_scene()
            try:
                self._goal_images[key] = self.render_camera("top")
            finally:
                self.gripper, self.mug, self.attached = saved
                self._sync_scene()
        return self._goal_images[key]

    def set_from_earl_observation(self, vector: np.ndarray) -> None:
        """Sets the kinematic scene (gripper, mug, attachment, goal) from EARL's 12-d vector.
        Raises ValueError for a vector that is not 12 finite numbers."""
        self.set_state({"task_state": np.asarray(vector, dtype=np.float64)})

    def get_state(self) -> dict[str, np.ndarray]:
        """Returns the simulator state; ``"task_state"`` holds the 12-d EARL state (float64)."""
        state = super().get_state()
        state["task_state"] = self.state_vector()
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Restores a state from :meth:`get_state`; only ``"task_state"`` (EARL's 12-d
        layout, e.g. a recorded demo observation) is required.

        Raises:
            ValueError: when ``task_state`` is not 12 finite numbers.
        """
        vector = np.asarray(state["task_state"], dtype=np.float64)
        if vector.shape != (12,) or not np.all(np.isfinite(vector)):
            raise ValueError(f"state['task_state']: must be 12 finite numbers, got {vector!r}")
        self.gripper, self.mug = vector[0:2].copy(), vector[2:4].copy()
        self.attached = bool(vector[4] >= 0)
        self.goal = vector[6:12].copy()
        self._sync_scene()

    # ------------------------------------------------------------------ internals
    def _solved(self, goal: np.ndarray) -> bool:
        if self.success_mode == "mug":
            return bool(np.linalg.norm(self.mug - goal[2:4]) <= SUCCESS_THRESHOLD)
        position = np.concatenate([self.gripper, self.mug])
        return bool(np.linalg.norm(position - goal[:4]) <= SUCCESS_THRESHOLD)

    @staticmethod
    def _sample_ball(rng: np.random.Generator, radius: float) -> np.ndarray:
        # Rejection from the enclosing cube: uniform in the 4-d ball, about 3 draws on average.
        while True:
            offset = rng.uniform(-radius, radius, size=4)
            if np.linalg.norm(offset) <= radius:
                return offset

    def _sync_scene(self) -> None:
        """Moves the render-only markers to the task state (no physics runs)."""
        positions = {"gripper": self.gripper, "mug": self.mug, "goal_marker": self.goal[2:4]}
        for name, xy in positions.items():
            self.data.mocap_pos[self._mocap[name]] = (xy[0], xy[1], _MARKER_HEIGHTS[name])
        self.model.geom_rgba[self._gripper_geom] = _GRIPPER_RGBA[self.attached]
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_camlight(self.model, self.data)  # camera poses; kinematics alone leaves them at 0
