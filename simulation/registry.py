"""The simulated tasks by name and their gymnasium ids, and the registration that
``import simulation`` performs: ``gym.make("resetfree/Door-v0")`` then works, with
gymnasium's environment checker on, as for any registered environment.

Light on purpose: the entry points are ``"module:Class"`` strings, so registering imports
gymnasium but neither MuJoCo nor a task module; ``gym.make`` imports the task when called.
"""

from __future__ import annotations

#: task name -> "module:Class"
TASKS: dict[str, str] = {
    "tabletop": "simulation.tasks.tabletop:TabletopEnv",
    "door": "simulation.tasks.door:DoorEnv",
    "peg": "simulation.tasks.peg:PegEnv",
    "cube": "simulation.tasks.cube:CubeGraspEnv",
}

GYM_IDS: dict[str, str] = {name: f"resetfree/{name.capitalize()}-v0" for name in TASKS}
"""Task name -> gymnasium id (``resetfree/<Name>-v0``)."""


def register_all() -> None:
    """Registers every task with gymnasium (idempotent). Keyword arguments of ``gym.make``
    reach the task's constructor (``obs="pixels"``, ``image_size=``, ``render_mode=``)."""
    import gymnasium as gym

    for name, gym_id in GYM_IDS.items():
        if gym_id not in gym.registry:
            gym.register(id=gym_id, entry_point=TASKS[name])
