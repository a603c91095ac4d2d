"""Enforces docs/architecture.md's import table by parsing every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("protocol", "hardware", "learner", "runtime", "simulation")

#: package → project modules it may import (a prefix match: "hardware.interfaces" allows its submodules).
ALLOWED: dict[str, tuple[str, ...]] = {
    "protocol": ("protocol",),
    "hardware": ("hardware",),
    "learner": ("learner", "protocol"),
    "runtime": ("runtime", "protocol", "hardware.interfaces", "learner.networks"),
    "simulation": OURS,
}


def imported_modules(tree: ast.Module, package: str, module: str) -> list[tuple[int, str]]:
    """Returns (line, absolute module) for every import of a project package in ``tree``."""
    out = []
    for node in ast.walk(tree):
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


def allowed(package: str, target: str) -> bool:
    """Returns whether ``package`` may import ``target``."""
    return any(target == p or target.startswith(p + ".") for p in ALLOWED[package])


def _violations() -> list[str]:
    out = []
    for package in OURS:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT)
            module = ".".join(rel.with_suffix("").parts)
            tree = ast.parse(path.read_text(), filename=str(path))
            for line, target in imported_modules(tree, package, module):
                if not allowed(package, target):
                    out.append(f"{rel}:{line}: {package} may not import {target}")
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
    ("protocol", "learner", False), ("hardware", "protocol", False), ("learner", "protocol.codec", True),
    ("learner", "runtime", False), ("learner", "simulation", False), ("runtime", "hardware.interfaces", True),
    ("runtime", "hardware.franka", False), ("runtime", "learner.networks", True), ("runtime", "learner.redq", False),
    ("runtime", "simulation", False), ("simulation", "runtime.daemon", True),
])
def test_table(package: str, target: str, ok: bool) -> None:
    assert allowed(package, target) is ok


def test_parser_sees_every_import_form() -> None:
    src = "import learner.redq\nfrom hardware import franka\nfrom . import codec\nfrom ..learner import x\n"
    found = [m for _, m in imported_modules(ast.parse(src), "runtime", "runtime.sub.mod")]
    assert "learner.redq" in found and "hardware.franka" in found and "runtime.learner.x" in found
    assert "runtime.sub.codec" in found
