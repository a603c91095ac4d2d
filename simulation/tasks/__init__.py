"""The simulated tasks, by name (their gymnasium registration, ``resetfree/<Name>-v0``, is in
:mod:`simulation.registry` and done by ``import simulation``)."""

from __future__ import annotations

import importlib
from typing import Any

from simulation.registry import GYM_IDS, TASKS, register_all
from simulation.tasks.base import ObsMode, SimulationError, TaskEnv, TaskInfo


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


__all__ = ["GYM_IDS", "TASKS", "ObsMode", "SimulationError", "TaskEnv", "TaskInfo", "make",
           "register_all", "task_class", "task_info"]
