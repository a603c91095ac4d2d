"""Enforces docs/architecture.md's import table by parsing every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("protocol", "hardware", "learner", "runtime", "simulation")

#: package → project modules it may import (a prefix match: "hardware.interfaces" allows its
#: submodules). A module's row is its longest matching key, so ``simulation.app.orchestrator``
#: follows ``simulation.app`` and ``simulation.tasks.door`` follows ``simulation``.
ALLOWED: dict[str, tuple[str, ...]] = {
    "protocol": ("protocol",),
    # the device interfaces describe arrays with the wire's one spec type (a leaf module)
    "hardware": ("hardware", "protocol.spaces"),
    "learner": ("learner", "protocol"),
    "runtime": ("runtime", "protocol", "hardware.interfaces", "learner.networks"),
    # the simulator: the design's row (tasks, experts, the simulated robot, evaluation in the twin)
    "simulation": ("simulation", "protocol", "hardware.interfaces", "learner.networks"),
    # resetfree-sim: runs the learner and the runtime as processes; trains BC; practises in-process
    "simulation.app": ("simulation", "simulation.app", "simulation.tools", "protocol", "hardware.interfaces",
                       "learner"),
    # resetfree-demos and resetfree-eval: drive a robot (the runtime's registry and shield) or the twin
    "simulation.tools": ("simulation", "simulation.tools", "protocol", "hardware", "learner", "runtime"),
    # resetfree-bench and the drills: drive the whole system
    "simulation.drills": OURS + tuple(f"simulation.{sub}" for sub in ("app", "tools", "drills")),
}

SUBPACKAGES = ("simulation.app", "simulation.tools", "simulation.drills")
"""Subpackages with rows of their own: a row's ``simulation`` does not reach into them; each
must be named."""

#: composition roots: module → what it may import beyond its package's row, only inside functions
#: (so importing the root loads none of it). runtime.robot_kinds is the one place a robot kind is
#: added (docs/architecture.md, "Robot kinds").
COMPOSITION_ROOTS: dict[str, tuple[str, ...]] = {
    "runtime.robot_kinds": ("hardware", "simulation.sim_robot", "simulation.registry", "simulation.tasks"),
}


def _imports(nodes: list[ast.AST] | ast.AST, module: str) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(nodes) if isinstance(nodes, ast.AST) else nodes:
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module
                base = module.split(".")[: -node.level]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            # "from pkg import x" is checked as pkg.x, so "from hardware import interfaces" is allowed
            out += [(node.lineno, f"{name}.{a.name}" if name else a.name) for a in node.names]
    return [(n, m) for n, m in out if m.split(".")[0] in OURS]


def imported_modules(tree: ast.Module, package: str, module: str) -> list[tuple[int, str]]:
    """Returns (line, absolute module) for every import of a project package in ``tree``."""
    return _imports(tree, module)


def top_level_imports(tree: ast.Module, module: str) -> list[tuple[int, str]]:
    """Returns the imports of project packages that run when ``module`` is imported: those
    outside function bodies (a class body or an ``if`` at module level runs at import)."""
    def outside_functions(node: ast.AST) -> list[ast.AST]:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return []
        return [node] + [n for child in ast.iter_child_nodes(node) for n in outside_functions(child)]
    return _imports(outside_functions(tree), module)


def string_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """Returns (line, name) of every ``importlib.import_module("...")``/``__import__("...")`` of a
    project package by a literal name: an import the table above would not see."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            target = node.args[0].value
            if name in ("import_module", "__import__") and isinstance(target, str) and target.split(".")[0] in OURS:
                out.append((node.lineno, target))
    return out


def _under(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def row_of(module: str) -> str:
    """Returns the key of :data:`ALLOWED` that governs ``module`` (its longest matching key)."""
    return max((key for key in ALLOWED if _under(module, key)), key=len)


def allowed(package: str, target: str) -> bool:
    """Returns whether a module governed by row ``package`` may import ``target``."""
    sub = next((s for s in SUBPACKAGES if _under(target, s)), None)
    if sub is not None:
        return any(_under(target, p) for p in ALLOWED[package] if _under(p, sub))
    return any(_under(target, p) for p in ALLOWED[package])


def _violations() -> list[str]:
    out = []
    for package in OURS:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT)
            module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
            row = row_of(module)
            tree = ast.parse(path.read_text(), filename=str(path))
            extra = COMPOSITION_ROOTS.get(module, ())
            for line, target in imported_modules(tree, package, module):
                if not allowed(row, target) and not any(_under(target, p) for p in extra):
                    out.append(f"{rel}:{line}: {row} may not import {target}")
            for line, target in top_level_imports(tree, module):
                if not allowed(row, target):
                    out.append(f"{rel}:{line}: {target} may be imported only inside a function of {module}")
            for line, target in string_imports(tree):
                out.append(f"{rel}:{line}: {target} is imported by name; import it (or register it) instead")
    for path in sorted((ROOT / "tests").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for line, target in imported_modules(ast.parse(path.read_text()), "tests", module):
            top = module.split(".")[1] if module.count(".") > 1 else ""
            if target.split(".")[0] == "simulation" and top not in ("simulation", "system"):
                out.append(f"{path.relative_to(ROOT)}:{line}: only simulation/system tests may import simulation")
    return out


def test_imports_follow_the_architecture_table() -> None:
    assert _violations() == []


@pytest.mark.parametrize("package, target, ok", [
    ("protocol", "learner", False), ("hardware", "protocol", False), ("hardware", "protocol.spaces", True),
    ("hardware", "protocol.messages", False), ("learner", "protocol.codec", True),
    ("learner", "runtime", False), ("learner", "simulation", False), ("runtime", "hardware.interfaces", True),
    ("runtime", "hardware.franka", False), ("runtime", "learner.networks", True), ("runtime", "learner.redq", False),
    ("runtime", "simulation", False), ("simulation", "runtime.daemon", False),
    ("simulation", "learner.networks", True), ("simulation", "learner.trainer", False),
    ("simulation", "simulation.tasks.door", True), ("simulation", "simulation.app.orchestrator", False),
    ("simulation.app", "simulation.tools.demos_cli", True), ("simulation.app", "simulation.drills", False),
    ("simulation.app", "runtime.daemon", False), ("simulation.tools", "runtime.shield", True),
    ("simulation.tools", "simulation.app.plot", False), ("simulation.drills", "simulation.app.processes", True),
])
def test_table(package: str, target: str, ok: bool) -> None:
    assert allowed(package, target) is ok


def test_a_module_follows_its_longest_row() -> None:
    assert row_of("simulation.tasks.door") == "simulation" and row_of("simulation") == "simulation"
    assert row_of("simulation.app.orchestrator") == "simulation.app" and row_of("learner.agent") == "learner"


def test_a_composition_root_imports_its_robots_inside_functions_only() -> None:
    src = ("from hardware.interfaces import Robot\nfrom hardware.franka import FrankaRobot\n"
           "def build():\n    from simulation.sim_robot import SimRobot\n")
    found = [m for _, m in top_level_imports(ast.parse(src), "runtime.robot_kinds")]
    assert found == ["hardware.interfaces.Robot", "hardware.franka.FrankaRobot"]


def test_a_project_module_imported_by_name_is_seen() -> None:
    src = ("import importlib\nimportlib.import_module('simulation.sim_robot')\n__import__('hardware.franka')\n"
           "importlib.import_module('ledataset.utils')\n")
    assert [m for _, m in string_imports(ast.parse(src))] == ["simulation.sim_robot", "hardware.franka"]


def test_parser_sees_every_import_form() -> None:
    src = "import learner.redq\nfrom hardware import franka\nfrom . import codec\nfrom ..learner import x\n"
    found = [m for _, m in imported_modules(ast.parse(src), "runtime", "runtime.sub.mod")]
    assert "learner.redq" in found and "hardware.franka" in found and "runtime.learner.x" in found
    assert "runtime.sub.codec" in found
