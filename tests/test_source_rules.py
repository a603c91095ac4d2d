"""Source rules for the whole project: no pickle (except a module defining a restricted
``Unpickler.find_class``, the protocol benchmark's marked baseline, and tests that only
*write* pickles with ``pickle.dump(s)`` to feed a restricted loader) and no ``torch.load``
without ``weights_only=True``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("protocol", "runtime", "learner", "hardware", "simulation", "tests")
FORBIDDEN = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle"}
#: A module may use pickle only for a measured baseline, marked with this constant set to True.
BASELINE_MARKER = "PICKLE_BASELINE_ONLY"


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _defines_restricted_find_class(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any("Unpickler" in ast.unparse(b) for b in node.bases):
            if any(isinstance(f, ast.FunctionDef) and f.name == "find_class" for f in node.body):
                return True
    return False


def _is_marked_baseline(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == BASELINE_MARKER for t in n.targets)
               and isinstance(n.value, ast.Constant) and n.value.value is True for n in tree.body)


#: What a test may touch on ``pickle``: producing bytes is harmless, loading them is not.
WRITE_ONLY = {"dumps", "dump", "HIGHEST_PROTOCOL", "DEFAULT_PROTOCOL"}


def _writes_pickles_only(tree: ast.Module) -> bool:
    """Returns whether the module only imports ``pickle`` plainly and only uses its writers."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FORBIDDEN:
            return False
        if isinstance(node, ast.Import) and any(a.name in FORBIDDEN and (a.name != "pickle" or a.asname)
                                                for a in node.names):
            return False
        if isinstance(node, ast.Name) and node.id == "pickle":
            continue
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "pickle" \
                and node.attr not in WRITE_ONLY:
            return False
    return True


def pickle_uses(tree: ast.Module) -> list[int]:
    """Returns the lines importing a pickle-like module (also via importlib/__import__)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] in FORBIDDEN for a in node.names):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FORBIDDEN:
            lines.append(node.lineno)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and node.args[0].value in FORBIDDEN and ast.unparse(node.func) in ("importlib.import_module",
                                                                                   "import_module", "__import__"):
            lines.append(node.lineno)
    return lines


def unsafe_torch_loads(tree: ast.Module) -> list[int]:
    """Returns the lines calling ``torch.load`` without ``weights_only=True``."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
            ok = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                     for k in node.keywords)
            if not ok:
                lines.append(node.lineno)
    return lines


def _violations() -> list[str]:
    out = []
    for path in _sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        rel = path.relative_to(ROOT)
        if path.name != "test_source_rules.py":
            pickles = pickle_uses(tree)
            exempt = _defines_restricted_find_class(tree) or _is_marked_baseline(tree) \
                or (rel.parts[0] == "tests" and _writes_pickles_only(tree))
            if pickles and not exempt:
                out += [f"{rel}:{n}: pickle-like import" for n in pickles]
        out += [f"{rel}:{n}: torch.load without weights_only=True" for n in unsafe_torch_loads(tree)]
    return out


def test_project_sources_follow_the_rules() -> None:
    assert _sources(), "no sources found"
    assert _violations() == []


def test_only_the_protocol_benchmark_is_a_marked_baseline() -> None:
    marked = [p.relative_to(ROOT).as_posix() for p in _sources()
              if _is_marked_baseline(ast.parse(p.read_text()))]
    assert set(marked) <= {"protocol/bench.py"}


@pytest.mark.parametrize("src, pickles, loads", [
    ("import pickle", 1, 0),
    ("from cloudpickle import dumps", 1, 0),
    ("import importlib\nimportlib.import_module('dill')", 1, 0),
    ("import torch\ntorch.load('x')", 0, 1),
    ("import torch\ntorch.load('x', weights_only=False)", 0, 1),
    ("import torch\ntorch.load('x', weights_only=True)", 0, 0),
    ("import json", 0, 0),
])
def test_the_checks_catch_what_they_should(src: str, pickles: int, loads: int) -> None:
    tree = ast.parse(src)
    assert len(pickle_uses(tree)) == pickles and len(unsafe_torch_loads(tree)) == loads


def test_write_only_exemption_is_narrow() -> None:
    assert _writes_pickles_only(ast.parse("import pickle\nb = pickle.dumps(1)\n"))
    assert not _writes_pickles_only(ast.parse("import pickle\npickle.loads(b'')\n"))
    assert not _writes_pickles_only(ast.parse("import pickle\npickle.Unpickler\n"))
    assert not _writes_pickles_only(ast.parse("from pickle import loads\n"))
    assert not _writes_pickles_only(ast.parse("import dill\n"))


def test_restricted_unpickler_exemption() -> None:
    src = "import pickle\nclass Safe(pickle.Unpickler):\n    def find_class(self, m, n):\n        raise KeyError(n)\n"
    assert _defines_restricted_find_class(ast.parse(src))
    assert not _defines_restricted_find_class(ast.parse("import pickle\n"))
