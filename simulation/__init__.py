"""MuJoCo twins of the EARL tasks and the Franka cube grasp, and the commands built on them.

The simulator is this package's modules and ``tasks/``, ``experts/``, ``assets/``; the
commands live in three subpackages: ``app/`` (``resetfree-sim``, ``resetfree-plot``),
``tools/`` (``resetfree-demos``, ``resetfree-eval``) and ``drills/`` (``resetfree-bench``).
The simulator never imports them (docs/architecture.md, enforced by tests/test_layering.py).

Importing the package picks a headless rendering backend when there is no display: MuJoCo
reads ``MUJOCO_GL`` once, when it is first imported, and its default (GLFW) needs an X
server. Every entry point that can render (``resetfree-sim``, ``resetfree-demos``,
``resetfree-eval``, ``resetfree-bench``, and ``resetfree-runtime`` through its simulated
robot) imports this package before MuJoCo, so none needs ``MUJOCO_GL=egl`` by hand. A
user's own ``MUJOCO_GL`` is kept.

Importing the package also registers the tasks with gymnasium (``resetfree/Door-v0``,
``resetfree/Tabletop-v0``, ``resetfree/Peg-v0``, ``resetfree/Cube-v0``; see
:mod:`simulation.registry`), without importing MuJoCo or any task until ``gym.make``.
"""

import os as _os

if not (_os.environ.get("DISPLAY") or _os.environ.get("WAYLAND_DISPLAY")):
    _os.environ.setdefault("MUJOCO_GL", "egl")
    _os.environ.setdefault("PYOPENGL_PLATFORM", _os.environ["MUJOCO_GL"])

from simulation.registry import register_all as _register_all  # noqa: E402  (after the backend is chosen)

_register_all()
