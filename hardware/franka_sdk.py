"""The Franka adapter's seam to panda-py: loading the library (:func:`import_panda_py`) and the
declaration of every member the adapter's modules touch (:data:`PANDA_PY_API`), with the local
names those modules bind to panda-py objects (:data:`PANDA_PY_HANDLES`).

The declaration is the single source ``tests/hardware/test_api_conformance.py`` checks against
the installed package, against the fakes, and against the code of :data:`PANDA_PY_MODULES`
(their AST). Nothing here talks to a robot.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

from hardware.interfaces import HardwareError

logger = logging.getLogger(__name__)

ApiCall = tuple[int, tuple[str, ...]]
"""How the adapter calls a library member: (number of positional arguments, keyword names)."""

PANDA_PY_MODULES = ("hardware.franka", "hardware.franka_gripper")
"""The modules that touch panda-py objects, which :data:`PANDA_PY_API` covers together."""

PANDA_PY_API: dict[str, tuple[ApiCall, ...]] = {
    # name -> every call shape the adapter uses; () for an attribute read (no call).
    "panda_py.Panda": ((1, ()),),
    "panda_py.Panda.start_controller": ((1, ()),),
    "panda_py.Panda.stop_controller": ((0, ()),),
    "panda_py.Panda.is_moving": ((0, ()),),
    "panda_py.Panda.raise_error": ((0, ()),),
    "panda_py.Panda.recover": ((0, ()),),
    "panda_py.Panda.get_state": ((0, ()),),
    "panda_py.Panda.get_position": ((0, ()),),
    "panda_py.Panda.get_orientation": ((0, ()),),
    "panda_py.Panda.get_robot": ((0, ()),),
    "panda_py.Panda.move_to_joint_position": ((1, ("speed_factor",)),),
    "panda_py.controllers.CartesianImpedance": ((0, ("impedance", "damping_ratio", "nullspace_stiffness", "filter_coeff")),),
    "panda_py.controllers.CartesianImpedance.set_control": ((2, ()),),
    "panda_py.libfranka.Gripper": ((1, ()),),
    "panda_py.libfranka.Gripper.move": ((2, ()),),
    "panda_py.libfranka.Gripper.grasp": ((3, ("epsilon_inner", "epsilon_outer")),),
    "panda_py.libfranka.Gripper.read_once": ((0, ()),),
    "panda_py.libfranka.GripperState.width": (),
    "panda_py.libfranka.GripperState.max_width": (),
    "panda_py.libfranka.Robot.stop": ((0, ()),),
    "panda_py.libfranka.RobotState.robot_mode": (),
    "panda_py.libfranka.RobotState.last_motion_errors": (),
}
"""Every panda-py member :data:`PANDA_PY_MODULES` touch: the single source the conformance test
checks against the installed package and the fakes (and against those modules' own AST)."""

PANDA_PY_HANDLES: dict[str, str] = {
    "lib": "panda_py",
    "lib.controllers": "panda_py.controllers",
    "lib.libfranka": "panda_py.libfranka",
    "panda": "panda_py.Panda",
    "self._panda": "panda_py.Panda",
    "controller": "panda_py.controllers.CartesianImpedance",
    "gripper": "panda_py.libfranka.Gripper",
    "gripper_state": "panda_py.libfranka.GripperState",
    "robot": "panda_py.libfranka.Robot",
    "state": "panda_py.libfranka.RobotState",
}
"""Local names :data:`PANDA_PY_MODULES` bind to panda-py objects (the AST check resolves
through them)."""


def import_panda_py() -> ModuleType:
    """Returns the ``panda_py`` module with its ``controllers`` and ``libfranka`` submodules.

    Raises:
        HardwareError: when panda-py is not installed (``pip install 'resetfree[robot]'``).
    """
    try:
        lib = importlib.import_module("panda_py")
        importlib.import_module("panda_py.controllers")
        importlib.import_module("panda_py.libfranka")
    except ImportError as e:
        raise HardwareError("panda-py is not installed: pip install 'resetfree[robot]'") from e
    return lib
