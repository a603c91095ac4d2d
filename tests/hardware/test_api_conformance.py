"""The SDK members the adapters use exist, with compatible signatures, in the installed
libraries and in our fakes; and each adapter's declared list covers what its code touches.

Each adapter declares ``<LIB>_API`` (dotted name → call shapes it uses) and
``<LIB>_HANDLES`` (local expression → the library object it holds), in its module or, for the
Franka adapter, whose code spans ``hardware.franka`` and ``hardware.franka_gripper``, in
``hardware.franka_sdk`` (``PANDA_PY_MODULES``). Those constants are the single source: the
AST check below, over every module of the adapter, fails when the code touches a member
through a handle that the constant does not list, or calls it with a shape it does not declare.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
from pathlib import Path
from types import ModuleType

import pytest

from hardware import franka_sdk, realsense, spacemouse

Param = tuple[str, bool, bool]  # name, has a default, is *args/**kwargs
CASES = [  # (the adapter's modules, its API constant, its handles, the library)
    (tuple(importlib.import_module(m) for m in franka_sdk.PANDA_PY_MODULES),
     franka_sdk.PANDA_PY_API, franka_sdk.PANDA_PY_HANDLES, "panda_py"),
    ((realsense,), realsense.PYREALSENSE2_API, realsense.PYREALSENSE2_HANDLES, "pyrealsense2"),
    ((spacemouse,), spacemouse.PYSPACEMOUSE_API, spacemouse.PYSPACEMOUSE_HANDLES, "pyspacemouse"),
]
IDS = [case[3] for case in CASES]


# --------------------------------------------------------------------------- resolution
def resolve(root: ModuleType, dotted: str) -> object:
    """Returns the object named by ``dotted`` (first component = ``root``), importing submodules."""
    obj: object = root
    for part in dotted.split(".")[1:]:
        if not hasattr(obj, part) and isinstance(obj, ModuleType):
            importlib.import_module(f"{obj.__name__}.{part}")
        obj = getattr(obj, part)
    return obj


def has_member(owner: object, name: str) -> bool:
    """Whether ``owner`` has ``name`` as an attribute, property, slot or dataclass field."""
    if hasattr(owner, name) or name in getattr(owner, "__annotations__", {}):
        return True
    return dataclasses.is_dataclass(owner) and name in {f.name for f in dataclasses.fields(owner)}


def split_top_level(text: str) -> list[str]:
    parts, depth, quote, current = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def parse_param(text: str) -> Param:
    name = re.split(r"[:=]", text, maxsplit=1)[0].strip()
    depth, has_default = 0, False
    for i, ch in enumerate(text):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "=" and depth == 0 and text[i + 1:i + 2] != "=" and text[i - 1:i] not in "<>!=":
            has_default = True
            break
    return name.lstrip("*"), has_default, name.startswith("*")


def doc_signatures(obj: object, name: str) -> list[list[Param]]:
    """Returns the parameter lists in a pybind11 docstring (one per overload), minus ``self``."""
    doc = (obj.__init__.__doc__ if inspect.isclass(obj) else obj.__doc__) or ""
    target = "__init__" if inspect.isclass(obj) else name
    out = []
    for line in doc.splitlines():
        m = re.match(rf"^\s*(?:\d+\.\s*)?{re.escape(target)}\((.*)\)\s*->", line)
        if m:
            params = [parse_param(p) for p in split_top_level(m.group(1))]
            out.append([p for p in params if p[0] != "self"])
    return out


def signatures(obj: object, name: str) -> list[list[Param]]:
    """Returns every parameter list ``obj`` accepts (overloads included), minus ``self``."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return doc_signatures(obj, name)
    params = []
    for p in sig.parameters.values():
        if p.name == "self":
            continue
        variadic = p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        params.append((p.name, p.default is not p.empty, variadic))
    # pybind11 objects report a generic (*args, **kwargs) signature: use their docstring
    if params and all(v for _, _, v in params):
        return doc_signatures(obj, name) or [params]
    return [params]


def binds(params: list[Param], shape: tuple[int, tuple[str, ...]]) -> bool:
    npos, keywords = shape
    if any(v for _, _, v in params):
        return True
    if npos > len(params):
        return False
    rest = params[npos:]
    names = {n for n, _, _ in rest}
    if not set(keywords) <= names:
        return False
    return all(has_default or n in keywords for n, has_default, _ in rest)


def check_library(root: ModuleType, api: dict[str, tuple]) -> list[str]:
    problems = []
    for dotted, shapes in api.items():
        owner_name, _, member = dotted.rpartition(".")
        try:
            owner = resolve(root, owner_name) if owner_name.count(".") else root
            if not has_member(owner, member):
                problems.append(f"{dotted}: missing")
                continue
            obj = getattr(owner, member, None)
        except (AttributeError, ImportError) as e:
            problems.append(f"{dotted}: {e}")
            continue
        if not shapes:
            continue
        candidates = signatures(obj, member)
        if not candidates:
            problems.append(f"{dotted}: no signature found")
        for shape in shapes:
            if not any(binds(params, shape) for params in candidates):
                problems.append(f"{dotted}: call {shape} fits none of {candidates}")
    return problems


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("modules,api,handles,lib", CASES, ids=IDS)
def test_installed_library_has_what_the_adapter_uses(modules, api, handles, lib) -> None:
    try:
        root = importlib.import_module(lib)
    except ImportError as e:  # pyrealsense2 also fails here when libusb is missing
        pytest.skip(f"{lib} not importable: {e}")
    assert check_library(root, api) == []


@pytest.mark.parametrize("modules,api,handles,lib", CASES, ids=IDS)
def test_fake_has_what_the_adapter_uses(modules, api, handles, lib) -> None:
    fake = importlib.import_module(f"tests.hardware.fakes.{lib}")
    assert check_library(fake, api) == []


@pytest.mark.parametrize("modules,api,handles,lib", CASES, ids=IDS)
def test_declared_api_covers_the_code(modules, api, handles, lib) -> None:
    trees = [ast.parse(Path(module.__file__).read_text()) for module in modules]  # alive: ``calls`` keys on id()
    nodes = [node for tree in trees for node in ast.walk(tree)]
    used: dict[str, set[tuple[int, tuple[str, ...]]]] = {}
    calls = {id(node.func): node for node in nodes if isinstance(node, ast.Call)}
    for node in nodes:
        if not isinstance(node, ast.Attribute):
            continue
        base = ast.unparse(node.value)
        if base not in handles:
            continue
        full = f"{handles[base]}.{node.attr}"
        if full in handles.values() and full not in api:
            continue
        shapes = used.setdefault(full, set())
        call = calls.get(id(node))
        if call is not None:
            shapes.add((len(call.args), tuple(sorted(k.arg for k in call.keywords))))
    assert used, "the AST walk found no library use: handles are out of date"
    undeclared = sorted(set(used) - set(api))
    assert undeclared == [], f"used but not declared in the API constant: {undeclared}"
    for name, shapes in used.items():
        declared = {(n, tuple(sorted(k))) for n, k in api[name]}
        assert shapes <= declared, f"{name}: called as {shapes}, declared {declared}"
    unused = sorted(set(api) - set(used))
    dynamic = {n for n in unused if n.rpartition(".")[2] in spacemouse.AXES}  # read via getattr
    assert sorted(set(unused) - dynamic) == [], f"declared but never used: {unused}"


def test_signature_parser_on_a_pybind_docstring() -> None:
    class Fake:
        """set_control(self: X, position: numpy.ndarray[numpy.float64[3, 1]], q: list = [1, 2]) -> None"""

    fn = Fake()
    fn.__doc__ = Fake.__doc__
    [params] = doc_signatures(fn, "set_control")
    assert params == [("position", False, False), ("q", True, False)]
    assert binds(params, (1, ())) and binds(params, (2, ())) and not binds(params, (3, ()))
    assert not binds(params, (0, ("q",)))
