"""The worker thread behind a :class:`simulation.sim_robot.SimRobot`: the one thread that owns
the task's environment (MuJoCo's offscreen GL context belongs to the thread that created it).

:class:`SimWorker` builds, resets, steps and renders the environment, paced by its own clock
(``realtime``) or by the calls it is handed (``lockstep``), and publishes an immutable
:class:`Snapshot` (robot state + one frame per image) after every step; the robot only hands
it calls and reads the newest snapshot. :mod:`simulation.sim_robot` describes the two pacings
as the runtime sees them.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from hardware.interfaces import DeviceFailedError, Frame, RobotState
from simulation.tasks import make
from simulation.tasks.base import TaskEnv

if TYPE_CHECKING:
    from simulation.sim_robot import SimRobotConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """What the worker publishes after each step (replaced whole, never mutated)."""

    state: RobotState
    frames: dict[str, Frame]
    success: bool
    step: int
    lost: bool
    """The task's operator rule holds (``TaskEnv.scene_lost``; False for a task without one)."""


@dataclass
class Call:
    """A request to the worker; ``done`` is set when it has run."""

    kind: Literal["action", "reset", "goal", "stop", "halt"]
    payload: Any = None
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class SimWorker:
    """Runs a robot's environment on a thread of its own, one :meth:`start` per connection.

    Its fields are read by the robot's thread: ``snapshot`` (the newest, replaced whole under
    ``new_frame``, which is notified on every publish), ``failure`` (what the environment
    raised, after which the thread has ended) and the counters.
    """

    def __init__(self, config: SimRobotConfig, name: str, image_names: tuple[str, ...]) -> None:
        self.config = config
        self.name = name
        self.image_names = image_names
        self.new_frame = threading.Condition()
        self.snapshot: Snapshot | None = None
        self.failure: BaseException | None = None
        self.steps = 0
        """Environment steps taken since the last :meth:`start`."""
        self.resets = 0
        """Environment resets done since the last :meth:`start` (``home`` and ``reset_environment``)."""
        self.dropped_actions = 0
        """Realtime actions replaced by a newer one before they were applied."""
        self._calls: queue.Queue[Call] = queue.Queue()
        self._pending: Call | None = None  # newest unapplied action (realtime)
        self._pending_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the robot's side
    @property
    def alive(self) -> bool:
        """Whether the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> threading.Event:
        """Clears the last connection's state and starts the thread, which builds and resets
        the environment. Returns the event set once the first snapshot is published (or the
        build failed: then ``failure`` is set). Non-blocking."""
        self.failure, self.snapshot = None, None
        self._calls = queue.Queue()
        self.steps = self.resets = self.dropped_actions = 0
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name=self.name, daemon=True)
        self._thread.start()
        return ready

    def halt(self) -> None:
        """Stops the thread, which closes the environment; blocks up to ``call_timeout_s``.
        Idempotent; never raises."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._calls.put(Call("halt"))
        thread.join(timeout=self.config.call_timeout_s)
        if thread.is_alive():
            logger.error("%s: worker did not stop within %.0f s", self.name, self.config.call_timeout_s)
        with self.new_frame:
            self.new_frame.notify_all()

    def call(self, call: Call) -> None:
        """Hands ``call`` to the thread and blocks until it has run (up to ``call_timeout_s``).

        Raises:
            DeviceFailedError: when it did not answer in time or the call raised.
        """
        self._calls.put(call)
        if not call.done.wait(self.config.call_timeout_s):
            raise DeviceFailedError(f"{self.name}: worker did not answer {call.kind!r} "
                                    f"within {self.config.call_timeout_s} s")
        if call.error is not None:
            raise DeviceFailedError(f"{self.name}: {call.kind} failed: {call.error}") from call.error

    def offer(self, call: Call) -> None:
        """Leaves the action ``call`` for the next realtime tick, replacing (and counting) one
        not yet applied. Non-blocking."""
        with self._pending_lock:
            if self._pending is not None:
                self.dropped_actions += 1
            self._pending = call

    def drop_pending(self) -> None:
        """Drops the action not yet applied, if any. Non-blocking."""
        with self._pending_lock:
            self._pending = None

    # ------------------------------------------------------------------ the thread
    def _run(self, ready: threading.Event) -> None:
        env: TaskEnv | None = None
        try:
            env = make(self.config.task, obs=self.config.obs, image_size=self.config.image_size,
                       **self.config.env_kwargs)
            observation, info = env.reset(seed=self.config.seed, options={"init": "initial"})
            self._publish(env, observation, bool(info.get("success", False)))
            ready.set()
            if self.config.pacing == "realtime":
                self._run_realtime(env)
            else:
                self._run_lockstep(env)
        except Exception as e:  # the worker must report, not vanish: callers get DeviceFailedError
            logger.exception("%s: simulation worker failed", self.name)
            self.failure = e
        finally:
            ready.set()
            if env is not None:
                env.close()
            with self.new_frame:
                self.new_frame.notify_all()

    def _run_lockstep(self, env: TaskEnv) -> None:
        while True:
            call = self._calls.get()
            if call.kind == "halt":
                return
            self._execute(env, call)

    def _run_realtime(self, env: TaskEnv) -> None:
        period = 1.0 / self.config.hz
        deadline = time.monotonic() + period
        while True:
            # serve resets (and halt) as they come, until this tick's deadline
            try:
                call = self._calls.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                call = None
            if call is not None:
                if call.kind == "halt":
                    return
                self._execute(env, call)
                continue
            with self._pending_lock:
                action, self._pending = self._pending, None
            if action is not None:
                self._execute(env, action)
            else:
                self._restamp()
            deadline += period
            if deadline < time.monotonic():  # overrun: skip missed ticks instead of bursting
                deadline = time.monotonic() + period

    def _execute(self, env: TaskEnv, call: Call) -> None:
        try:
            if call.kind == "action":
                observation, _, _, _, info = env.step(call.payload)
                self.steps += 1
            elif call.kind == "goal":
                observation, info = env.draw_goal()
            else:
                observation, info = env.reset(options=call.payload)
                self.resets += 1
            self._publish(env, observation, bool(info.get("success", False)))
        except Exception as e:  # handed to the caller of this call (and raised again for the worker)
            call.error = e
            raise
        finally:
            call.done.set()

    def _publish(self, env: TaskEnv, observation: Any, success: bool) -> None:
        now = time.monotonic()
        previous = self.snapshot
        if isinstance(observation, dict):
            arrays = {"proprio": np.asarray(observation["proprio"], dtype=np.float32)}
            frames = {name: Frame(image=observation[name], timestamp=now,
                                  index=(previous.frames[name].index + 1) if previous else 0)
                      for name in self.image_names}
        else:
            arrays, frames = {"state": np.asarray(observation, dtype=np.float32)}, {}
        state = RobotState(timestamp=now, ee_position=_ee_position(env, arrays), gripper=_gripper(env, arrays),
                           arrays=arrays)
        with self.new_frame:
            self.snapshot = Snapshot(state=state, frames=frames, success=success, step=self.steps,
                                     lost=env.info.operator_rule is not None and env.scene_lost())
            self.new_frame.notify_all()

    def _restamp(self) -> None:
        previous = self.snapshot
        if previous is None:
            return
        now = time.monotonic()
        frames = {n: Frame(image=f.image, timestamp=now, index=f.index + 1) for n, f in previous.frames.items()}
        with self.new_frame:
            self.snapshot = dataclasses.replace(previous, frames=frames,
                                                state=dataclasses.replace(previous.state, timestamp=now))
            self.new_frame.notify_all()


def _ee_position(env: TaskEnv, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The task's end-effector position: ``ee_position()``, ``ee_pos()`` or ``hand_pos()`` when the task
    has one, else the first three proprio/state entries (zero-padded)."""
    for method in ("ee_position", "ee_pos", "hand_pos"):
        getter = getattr(env, method, None)
        if callable(getter):
            return np.asarray(getter(), dtype=np.float64).reshape(3).copy()
    vector = np.asarray(env._task_proprio(), dtype=np.float64)
    return np.pad(vector[:3], (0, max(0, 3 - vector[:3].size)))


def _gripper(env: TaskEnv, arrays: dict[str, np.ndarray]) -> float:
    """The task's gripper reading: ``gripper_opening()``/``gripper_width()``, else proprio[3] (or 0)."""
    for method in ("gripper_opening", "gripper_width"):
        getter = getattr(env, method, None)
        if callable(getter):
            return float(getter())
    vector = np.asarray(env._task_proprio(), dtype=np.float64)
    return float(vector[3]) if vector.size > 3 else 0.0
