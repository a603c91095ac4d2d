"""What every simulated task shares: observation modes, fast offscreen rendering, seeding.

A task subclasses :class:`TaskEnv` and implements the ``_task_*`` hooks; the base class
turns them into a gymnasium environment with two observation modes:

* ``obs="state"`` — EARL's flat ``float32`` vector (``Box``);
* ``obs="pixels"`` — a ``Dict`` with one ``uint8 (3, H, W)`` image per camera (channel
  first, as the encoder and the wire take them) plus ``"proprio"`` (``float32``).

Rewards are sparse (1.0 on success, else 0.0) and ``info["success"]`` is always set. The
environment never terminates by itself (EARL's setting is non-episodic); ``truncated`` is
raised only by wrappers such as gymnasium's ``TimeLimit`` or :mod:`simulation.nonepisodic`.
"""

from __future__ import annotations

import abc
import atexit
import logging
import math
import weakref
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import mujoco
import numpy as np

logger = logging.getLogger(__name__)

ObsMode = Literal["state", "pixels"]
RenderQuality = Literal["fast", "pretty"]


ResetSchedule = Literal["paper", "earl"]
RESET_SCHEDULES: tuple[str, ...] = ("paper", "earl")
"""Named environment-reset schedules: ``paper`` (MEDAL++'s, the default) and ``earl`` (EARL's own)."""
PAPER_RESET_INTERVAL = 10_000
"""MEDAL++ resets the simulated EARL tasks every 10k steps (the authors' code: 25k; EARL
itself 100k-200k); every EARL task's default ``reset_interval``."""


class SimulationError(Exception):
    """Base class of errors raised by ``simulation``."""


@dataclass(frozen=True, kw_only=True)
class TaskInfo:
    """Static facts about a task, usable before the environment is built."""

    name: str
    """Short task name: ``tabletop``, ``door``, ``peg`` or ``cube``."""
    eval_horizon: int
    """Steps per deployed-policy evaluation episode (EARL's value)."""
    reset_interval: int | None
    """Default steps between environment resets in the non-episodic protocol: the paper's
    schedule (MEDAL++ resets the simulated EARL tasks every :data:`PAPER_RESET_INTERVAL`
    steps); ``None`` = never."""
    earl_reset_interval: int | None
    """EARL's own reset schedule for the task (door 200k, peg 100k, tabletop 200k), selected
    with ``--reset-schedule earl``; ``None`` = never."""
    move_scale: float
    """How far one unit of action moves the end effector along each position axis (task
    units: metres for the arms, tabletop's own units). The runtime's shield takes its
    ``position_scale`` from here, so it must be the value the environment applies."""
    success_threshold: float
    """Distance (task units) under which the task counts as solved."""
    cameras: tuple[str, ...]
    """Cameras rendered in pixel mode, in observation order."""
    state_dim: int
    """Length of the state-mode observation vector."""
    proprio_dim: int
    """Length of the pixel-mode ``proprio`` vector."""
    action_dim: int
    """Length of the action vector (every element in ``[-1, 1]``)."""
    state_goals: tuple[tuple[float, ...], ...]
    """The goals the state observation can end with: the state vector's last ``len(goal)``
    entries are the forward goal the task sets at reset (EARL's layout; door and peg have one,
    tabletop one per mug goal). Empty when the state carries no goal (cube). Demos recorded
    for another goal (EARL's backward demos end with the backward goal) are relabelled to
    these before they train an agent (:func:`simulation.earl_import.relabel_goals`)."""
    operator_rule: str | None
    """When a person must put the scene back for reset-free practice to go on, in words
    (:meth:`TaskEnv.scene_lost` decides it), or None when the task declares no such rule (the
    EARL tasks: the paper resets them on a schedule instead). The runtime's emulated operator
    (``--operator``) needs one."""

    def __post_init__(self) -> None:
        for field_name in ("eval_horizon", "state_dim", "proprio_dim", "action_dim"):
            if getattr(self, field_name) <= 0:
                raise ValueError(f"{field_name}: must be positive, got {getattr(self, field_name)}")
        for field_name in ("reset_interval", "earl_reset_interval"):
            value = getattr(self, field_name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ValueError(f"{field_name}: must be a positive int or None, got {value!r}")
        if not (isinstance(self.move_scale, (int, float)) and not isinstance(self.move_scale, bool)
                and math.isfinite(self.move_scale) and self.move_scale > 0):
            raise ValueError(f"move_scale: must be finite and positive, got {self.move_scale!r}")
        if self.success_threshold <= 0:
            raise ValueError(f"success_threshold: must be positive, got {self.success_threshold}")
        lengths = {len(goal) for goal in self.state_goals}
        if len(lengths) > 1 or not all(0 < n < self.state_dim for n in lengths) or not all(
                math.isfinite(x) for goal in self.state_goals for x in goal):
            raise ValueError(f"state_goals: must be finite goals of one length below state_dim "
                             f"{self.state_dim}, got {self.state_goals!r}")

    def scheduled_reset_interval(self, schedule: ResetSchedule) -> int | None:
        """Returns the steps between resets under ``schedule`` (``paper``: :attr:`reset_interval`,
        ``earl``: :attr:`earl_reset_interval`); ``None`` = never.

        Raises:
            ValueError: for another schedule name.
        """
        if schedule == "paper":
            return self.reset_interval
        if schedule == "earl":
            return self.earl_reset_interval
        raise ValueError(f"reset schedule: must be one of {list(RESET_SCHEDULES)}, got {schedule!r}")


def make_fast_renderer(model: mujoco.MjModel, height: int, width: int) -> mujoco.Renderer:
    """Returns an offscreen renderer tuned for training frames.

    Shadows, reflections and multisampling are switched off: on a software-EGL CPU that
    takes an 84x84 frame from tens of milliseconds to a few (design §7). The model's
    visual options are changed in place (``offsamples``, ``shadowsize``), so build the
    renderer on a model that only this environment uses.
    """
    model.vis.quality.offsamples = 0
    model.vis.quality.shadowsize = 0
    model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
    model.vis.global_.offheight = max(model.vis.global_.offheight, height)
    return mujoco.Renderer(model, height=height, width=width)


def fast_scene_option() -> mujoco.MjvOption:
    """Returns scene options with nothing optional drawn (no frames, contacts, sites)."""
    option = mujoco.MjvOption()
    mujoco.mjv_defaultOption(option)
    return option


def disable_costly_flags(renderer: mujoco.Renderer) -> None:
    """Turns off shadows, reflections and skybox on a renderer's scene (call after update_scene)."""
    flags = renderer.scene.flags
    flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
    flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
    flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0


_LIVE_ENVS: "weakref.WeakSet[TaskEnv]" = weakref.WeakSet()
_exit_hook_registered = False


def _close_live_envs() -> None:
    # A renderer destroyed during interpreter teardown (after EGL is gone) prints an
    # error; closing the survivors while everything is still alive avoids it.
    for env in list(_LIVE_ENVS):
        env.close()


def _register_exit_hook() -> None:
    # mujoco.egl registers eglTerminate at exit when the first GL context is made; atexit
    # runs hooks last-in first-out, so ours must be registered after that one.
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(_close_live_envs)
        _exit_hook_registered = True


class TaskEnv(gym.Env[Any, np.ndarray], abc.ABC):
    """Base class of every simulated task (see the module docstring).

    Subclasses set :attr:`info` and implement the ``_task_*`` hooks. Construction builds
    the MuJoCo model (no rendering context is created until the first pixel observation
    or ``render()``).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    info: TaskInfo

    def __init__(
        self,
        *,
        obs: ObsMode = "state",
        image_size: int = 84,
        cameras: tuple[str, ...] | None = None,
        render_quality: RenderQuality = "fast",
        render_mode: str | None = None,
    ) -> None:
        if obs not in ("state", "pixels"):
            raise ValueError(f"obs: must be 'state' or 'pixels', got {obs!r}")
        if image_size < 16 or image_size > 1024:
            raise ValueError(f"image_size: must be in [16, 1024], got {image_size}")
        if render_quality not in ("fast", "pretty"):
            raise ValueError(f"render_quality: must be 'fast' or 'pretty', got {render_quality!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode: only 'rgb_array' is supported, got {render_mode!r}")
        self.obs_mode: ObsMode = obs
        self.image_size = image_size
        self.cameras = tuple(cameras) if cameras is not None else self.info.cameras
        unknown = set(self.cameras) - set(self.info.cameras)
        if unknown:
            raise ValueError(f"cameras: unknown {sorted(unknown)} for task {self.info.name}; "
                             f"available {list(self.info.cameras)}")
        self.render_quality: RenderQuality = render_quality
        self.render_mode = render_mode
        self.model, self.data = self._task_build()
        self._renderer: mujoco.Renderer | None = None
        self._renderer_size: tuple[int, int] | None = None
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.info.action_dim,), np.float32)
        self.observation_space = self._build_observation_space()
        self._rng = np.random.default_rng()
        _LIVE_ENVS.add(self)

    # ------------------------------------------------------------------ task hooks
    @abc.abstractmethod
    def _task_build(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        """Builds and returns the model and data (called once, from ``__init__``)."""

    @abc.abstractmethod
    def _task_reset(self, rng: np.random.Generator, options: dict[str, Any]) -> None:
        """Puts the scene in an initial state drawn from the task's distribution."""

    @abc.abstractmethod
    def _task_step(self, action: np.ndarray) -> None:
        """Applies one action (already clipped to ``[-1, 1]``) and advances the physics."""

    @abc.abstractmethod
    def _task_state(self) -> np.ndarray:
        """Returns the state-mode observation (EARL's vector), ``float32``."""

    @abc.abstractmethod
    def _task_proprio(self) -> np.ndarray:
        """Returns the pixel-mode proprio vector, ``float32``."""

    @abc.abstractmethod
    def _task_success(self) -> bool:
        """Returns whether the current state solves the task."""

    @abc.abstractmethod
    def backward_success(self) -> bool:
        """Returns whether the scene is back in the initial (forward start) configuration: the
        backward task's goal, reported as ``info["backward_success"]`` on every step."""

    def _task_draw_goal(self, rng: np.random.Generator) -> None:
        """Draws the goal anew from the task's goals, moving nothing else. A task with one goal
        keeps it (this default); one with several (``len(info.state_goals) > 1``) must override
        it, which :meth:`__init_subclass__` checks when the class is defined."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        info = cls.__dict__.get("info")
        if info is not None and len(info.state_goals) > 1 and cls._task_draw_goal is TaskEnv._task_draw_goal:
            raise TypeError(f"{cls.__name__}: task {info.name} declares {len(info.state_goals)} goals, "
                            "so it must define _task_draw_goal")
        if info is not None and info.operator_rule is not None and cls.scene_lost is TaskEnv.scene_lost:
            raise TypeError(f"{cls.__name__}: task {info.name} declares an operator rule, so it must define scene_lost")

    def scene_lost(self) -> bool:
        """Returns whether the scene is where reset-free practice cannot go on without a person
        (the rule ``info.operator_rule`` states in words).

        Raises:
            SimulationError: for a task that declares no such rule (this default).
        """
        raise SimulationError(f"task {self.info.name} declares no rule for when a person must put its scene back")

    def _task_extra_images(self) -> dict[str, np.ndarray]:
        """Returns extra pixel-mode images (e.g. a goal image), ``uint8 (3, H, W)`` each."""
        return {}

    def _task_extra_image_names(self) -> tuple[str, ...]:
        """Names of the images ``_task_extra_images`` returns (fixed per task)."""
        return ()

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._task_reset(self._rng, dict(options or {}))
        return self._observation(), self._goals_info()

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict]:
        action = np.asarray(action, dtype=np.float32).reshape(self.info.action_dim)
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action: must be finite, got {action}")
        self._task_step(np.clip(action, -1.0, 1.0))
        info = self._goals_info()
        return self._observation(), float(info["success"]), False, False, info

    def draw_goal(self) -> tuple[Any, dict]:
        """Draws the goal anew, uniformly from the task's goals, without moving anything, and
        returns ``(observation, info)`` as :meth:`reset` does.

        MEDAL's and the authors' training loops do this at every switch from the forward to
        the backward agent, so that between two resets a multi-goal task (tabletop) is
        practised towards every goal, not towards the one drawn at the reset. A task with one
        goal keeps it (the observation is unchanged).
        """
        self._task_draw_goal(self._rng)
        return self._observation(), self._goals_info()

    def _goals_info(self) -> dict[str, bool]:
        """Both goals' state, the ``info`` of every reset, step and goal draw."""
        return {"success": self._task_success(), "backward_success": self.backward_success()}

    def render(self) -> np.ndarray:
        """Returns an RGB ``(H, W, 3)`` frame of the first camera (``render_mode='rgb_array'``)."""
        image = self.render_camera(self.cameras[0], size=max(self.image_size, 256))
        return np.ascontiguousarray(image.transpose(1, 2, 0))

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ------------------------------------------------------------------ helpers
    def get_state(self) -> dict[str, np.ndarray]:
        """Returns the full simulator state (for re-rendering demos and replays)."""
        return {"qpos": self.data.qpos.copy(), "qvel": self.data.qvel.copy(),
                "mocap_pos": self.data.mocap_pos.copy(), "mocap_quat": self.data.mocap_quat.copy()}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Restores a state from :meth:`get_state` and recomputes derived quantities."""
        self.data.qpos[:] = state["qpos"]
        self.data.qvel[:] = state["qvel"]
        if self.model.nmocap:
            self.data.mocap_pos[:] = state["mocap_pos"]
            self.data.mocap_quat[:] = state["mocap_quat"]
        mujoco.mj_forward(self.model, self.data)

    def render_camera(self, camera: str, size: int | None = None) -> np.ndarray:
        """Renders one camera and returns ``uint8 (3, H, W)``.

        Raises:
            SimulationError: when the camera is not in the model.
        """
        size = size or self.image_size
        if self._renderer is None or self._renderer_size != (size, size):
            if self._renderer is not None:
                self._renderer.close()
            self._renderer = make_fast_renderer(self.model, size, size)
            _register_exit_hook()
            self._renderer_size = (size, size)
        camera_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if camera_id < 0:
            raise SimulationError(f"camera {camera!r} is not in the {self.info.name} model")
        self._renderer.update_scene(self.data, camera=camera_id)
        if self.render_quality == "fast":
            disable_costly_flags(self._renderer)
        return np.ascontiguousarray(self._renderer.render().transpose(2, 0, 1))

    def observe(self) -> Any:
        """Returns the observation of the current state (renders in pixel mode); no side effects."""
        return self._observation()

    def _observation(self) -> Any:
        if self.obs_mode == "state":
            return self._task_state().astype(np.float32, copy=False)
        images = {name: self.render_camera(name) for name in self.cameras}
        images.update(self._task_extra_images())
        images["proprio"] = self._task_proprio().astype(np.float32, copy=False)
        return images

    def _build_observation_space(self) -> gym.spaces.Space:
        if self.obs_mode == "state":
            return gym.spaces.Box(-np.inf, np.inf, (self.info.state_dim,), np.float32)
        image = gym.spaces.Box(0, 255, (3, self.image_size, self.image_size), np.uint8)
        spaces: dict[str, gym.spaces.Space] = {name: image for name in self.cameras}
        spaces.update({name: image for name in self._task_extra_image_names()})
        spaces["proprio"] = gym.spaces.Box(-np.inf, np.inf, (self.info.proprio_dim,), np.float32)
        return gym.spaces.Dict(spaces)
