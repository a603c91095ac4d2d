"""NonEpisodic wrapper; also home of the tiny ``ToyEnv`` task the simulation tests share."""

from __future__ import annotations

import types
from typing import Any

import mujoco
import numpy as np
import pytest

from simulation import experts as experts_pkg
from simulation import tasks as tasks_pkg
from simulation.experts import Expert
from simulation.nonepisodic import NonEpisodic
from simulation.tasks.base import TaskEnv, TaskInfo

_TOY_XML = """
<mujoco>
  <worldbody>
    <light pos="0 0 2"/>
    <geom type="plane" size="1 1 0.1" rgba="0.8 0.8 0.8 1"/>
    <camera name="top" pos="0 0 1.5" xyaxes="1 0 0 0 1 0"/>
    <camera name="side" pos="0 -1.5 0.5" xyaxes="1 0 0 0 0.3 1"/>
    <body name="hand" mocap="true" pos="-0.5 0 0.05">
      <geom type="sphere" size="0.05" rgba="1 0 0 1" contype="0" conaffinity="0"/>
    </body>
  </worldbody>
</mujoco>
"""

GOAL = np.array([0.5, 0.0])
START = np.array([-0.5, 0.0])


class ToyEnv(TaskEnv):
    """A point hand on a plane: move it from x=-0.5 to the goal at x=+0.5 (0.05 per unit action)."""

    info = TaskInfo(name="toy", eval_horizon=40, reset_interval=7, earl_reset_interval=11, move_scale=0.05,
                    success_threshold=0.1, cameras=("top", "side"), state_dim=4, proprio_dim=3, action_dim=2,
                    state_goals=(), operator_rule=None)
    workspace = ((-1.0, -1.0, 0.0), (1.0, 1.0, 0.5))

    def _task_build(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        model = mujoco.MjModel.from_xml_string(_TOY_XML)
        return model, mujoco.MjData(model)

    def _task_reset(self, rng: np.random.Generator, options: dict[str, Any]) -> None:
        init = options.get("init", "initial")
        if init not in ("initial", "goal"):
            raise ValueError(f"options['init']: bad {init!r}")
        centre = START if init == "initial" else GOAL
        self._set_hand(centre + rng.uniform(-0.05, 0.05, 2))

    def _task_step(self, action: np.ndarray) -> None:
        self._set_hand(self.data.mocap_pos[0, :2] + 0.05 * action)

    def _task_state(self) -> np.ndarray:
        return np.concatenate([self.data.mocap_pos[0, :2], GOAL]).astype(np.float32)

    def _task_proprio(self) -> np.ndarray:
        return np.append(self.data.mocap_pos[0], 0.0).astype(np.float32)[[0, 1, 3]]

    def _task_success(self) -> bool:
        return bool(np.linalg.norm(self.data.mocap_pos[0, :2] - GOAL) <= self.info.success_threshold)

    def backward_success(self) -> bool:
        return bool(np.linalg.norm(self.data.mocap_pos[0, :2] - START) <= self.info.success_threshold)

    def ee_position(self) -> np.ndarray:
        return self.data.mocap_pos[0].copy()

    def set_from_earl_observation(self, vector: np.ndarray) -> None:
        self._set_hand(np.asarray(vector[:2], dtype=np.float64))

    def _set_hand(self, xy: np.ndarray) -> None:
        self.data.mocap_pos[0, :2] = np.clip(xy, -1.0, 1.0)
        mujoco.mj_forward(self.model, self.data)


class _ToyExpert(Expert):
    target: np.ndarray = GOAL

    def _act(self, env: TaskEnv) -> np.ndarray:
        return np.clip((self.target - env.data.mocap_pos[0, :2]) / 0.05, -1.0, 1.0)

    def done(self, env: TaskEnv) -> bool:
        return bool(np.linalg.norm(env.data.mocap_pos[0, :2] - self.target) <= 0.02)


class ToyForward(_ToyExpert):
    target = GOAL


class ToyBackward(_ToyExpert):
    target = START


def install_toy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registers the toy task (``make("toy")``) and its experts (``get_expert("toy", ...)``)."""
    monkeypatch.setitem(tasks_pkg.TASKS, "toy", f"{__name__}:ToyEnv")
    module = types.ModuleType("simulation.experts.toy")
    module.FORWARD, module.BACKWARD = ToyForward, ToyBackward  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, "simulation.experts.toy", module)
    monkeypatch.setattr(experts_pkg, "toy", module, raising=False)


def goal_policy(observation: np.ndarray) -> np.ndarray:
    """A state-mode policy for the toy task: head for the goal."""
    return np.clip((observation[2:4] - observation[:2]) / 0.05, -1, 1).astype(np.float32)


# --------------------------------------------------------------------------- tests
def test_resets_on_schedule_and_reports_it() -> None:
    env = NonEpisodic(ToyEnv(), reset_every=3)
    first, _ = env.reset(seed=0)
    push = np.array([1.0, 0.0], np.float32)
    seen = []
    previous = first
    for _ in range(7):
        obs, reward, terminated, truncated, info = env.step(push)
        assert not terminated and not truncated
        seen.append(info["env_reset"])
        if info["env_reset"]:
            # the final observation is one push on from the previous one; the returned one is fresh
            assert info["final_observation"][0] == pytest.approx(previous[0] + 0.05, abs=1e-6)
            assert abs(obs[0] - START[0]) <= 0.05 + 1e-6
        else:
            assert obs[0] == pytest.approx(previous[0] + 0.05, abs=1e-6)
        previous = obs
    assert seen == [False, False, True, False, False, True, False]
    assert env.resets == 2 and env.total_steps == 7 and env.steps_since_reset == 1
    assert abs(first[0] - START[0]) <= 0.05 + 1e-6


def test_final_observation_is_what_the_action_led_to() -> None:
    env = NonEpisodic(ToyEnv(), reset_every=1)
    obs, _ = env.reset(seed=1)
    _, _, _, _, info = env.step(np.array([1.0, 0.0], np.float32))
    assert info["final_observation"][0] == pytest.approx(obs[0] + 0.05, abs=1e-6)


def test_default_interval_comes_from_task_info_and_zero_means_never() -> None:
    assert NonEpisodic(ToyEnv()).reset_every == 7
    assert NonEpisodic(ToyEnv(), reset_schedule="earl").reset_every == 11
    assert NonEpisodic(ToyEnv(), reset_every=3, reset_schedule="earl").reset_every == 3  # the number wins
    with pytest.raises(ValueError, match="reset schedule"):
        NonEpisodic(ToyEnv(), reset_schedule="never")  # type: ignore[arg-type]
    never = NonEpisodic(ToyEnv(), reset_every=0)
    never.reset(seed=0)
    for _ in range(20):
        assert not never.step(np.zeros(2, np.float32))[4]["env_reset"]
    assert never.resets == 0 and never.reset_every is None
    with pytest.raises(ValueError, match="reset_every"):
        NonEpisodic(ToyEnv(), reset_every=-1)


def test_reset_options_pass_through() -> None:
    env = NonEpisodic(ToyEnv(), reset_every=2, reset_options={"init": "goal"})
    obs, _ = env.reset(seed=0)
    assert abs(obs[0] - GOAL[0]) <= 0.05 + 1e-6
    env.step(np.zeros(2, np.float32))
    obs, _, _, _, info = env.step(np.zeros(2, np.float32))
    assert info["env_reset"] and abs(obs[0] - GOAL[0]) <= 0.05 + 1e-6


def test_tabletop_default_interval_if_landed() -> None:
    pytest.importorskip("simulation.tasks.tabletop")
    env = NonEpisodic(tasks_pkg.make("tabletop"))
    assert env.reset_every == 10_000  # the paper's schedule
    assert NonEpisodic(tasks_pkg.make("tabletop"), reset_schedule="earl").reset_every == 200_000
    obs, _ = env.reset(seed=0)
    obs, _, _, _, info = env.step(np.zeros(3, np.float32))
    assert obs.shape == (12,) and info["env_reset"] is False
