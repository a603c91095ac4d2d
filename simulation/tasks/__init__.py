"""The simulated tasks, by name, and their gymnasium registration (``resetfree/<Name>-v0``)."""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym

from simulation.tasks.base import ObsMode, SimulationError, TaskEnv, TaskInfo

#: task name -> "module:Class"
TASKS: dict[str, str] = {
    "tabletop": "simulation.tasks.tabletop:TabletopEnv",
    "door": "simulation.tasks.door:DoorEnv",
    "peg": "simulation.tasks.peg:PegEnv",
    "cube": "simulation.tasks.cube:CubeGraspEnv",
}

GYM_IDS: dict[str, str] = {name: f"resetfree/{name.capitalize()}-v0" for name in TASKS}


def task_class(task: str) -> type[TaskEnv]:
    """Returns the environment class of ``task``.

    Raises:
        ValueError: for an unknown task name.
    """
    if task not in TASKS:
        raise ValueError(f"task: unknown {task!r}; choose one of {sorted(TASKS)}")
    module_name, class_name = TASKS[task].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def task_info(task: str) -> TaskInfo:
    """Returns the static facts of ``task`` without building it."""
    return task_class(task).info


def make(task: str, *, obs: ObsMode = "state", **kwargs: Any) -> TaskEnv:
    """Builds the environment of ``task`` (see :class:`TaskEnv` for the keyword arguments)."""
    return task_class(task)(obs=obs, **kwargs)


def register_all() -> None:
    """Registers every task with gymnasium (idempotent)."""
    for name, gym_id in GYM_IDS.items():
        if gym_id not in gym.registry:
            gym.register(id=gym_id, entry_point=TASKS[name], disable_env_checker=True)


register_all()

__all__ = ["GYM_IDS", "TASKS", "ObsMode", "SimulationError", "TaskEnv", "TaskInfo", "make",
           "register_all", "task_class", "task_info"]
