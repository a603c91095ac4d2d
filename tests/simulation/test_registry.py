"""``import simulation`` registers the tasks with gymnasium, and ``gym.make`` runs gymnasium's
environment checker on them (it may warn; it must not fail)."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import pytest
from gymnasium.wrappers.common import PassiveEnvChecker

from simulation.registry import GYM_IDS


def test_importing_the_package_registers_every_task_without_loading_mujoco() -> None:
    code = ("import sys, gymnasium, simulation; "
            "print(sorted(k for k in gymnasium.registry if k.startswith('resetfree/'))); "
            "print('mujoco' in sys.modules, 'simulation.tasks' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    ids, loaded = out.stdout.splitlines()
    assert ids == str(sorted(GYM_IDS.values()))
    assert loaded == "False False"  # registration is by "module:Class" string: light to import


def _wrappers(env: gym.Env) -> list[type]:
    out = []
    while isinstance(env, gym.Wrapper):
        out.append(type(env))
        env = env.env
    return out


@pytest.mark.parametrize("gym_id", sorted(GYM_IDS.values()))
def test_gym_make_runs_the_env_checker(gym_id: str) -> None:
    env = gym.make(gym_id)
    try:
        assert not env.spec.disable_env_checker and PassiveEnvChecker in _wrappers(env)
        obs, _ = env.reset(seed=0)  # the checker inspects the first reset and step
        assert env.observation_space.contains(obs)
        env.step(env.action_space.sample())
    finally:
        env.close()


def test_gym_make_passes_constructor_arguments_and_renders() -> None:
    env = gym.make(GYM_IDS["door"], obs="pixels", image_size=32, render_mode="rgb_array")
    try:
        obs, _ = env.reset(seed=0)
        assert env.observation_space.contains(obs)
        env.step(env.action_space.sample())
        assert env.render().ndim == 3  # the checker's first-render check too
    finally:
        env.close()
