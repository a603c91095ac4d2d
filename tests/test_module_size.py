"""Size rules for the packages (issue 19): no module over ~400 lines, and no class over 250
lines without the reason written at the top of its docstring (a paragraph starting "Size:")."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("protocol", "runtime", "learner", "hardware", "simulation")
MAX_MODULE_LINES = 410
MAX_CLASS_LINES = 250


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def oversized(source: str) -> tuple[int, list[str]]:
    """Returns ``(lines, classes)``: the module's line count and the classes over the limit
    whose docstring gives no "Size:" reason."""
    tree = ast.parse(source)
    classes = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES
        and "Size:" not in (ast.get_docstring(node) or "")
    ]
    return source.count("\n"), classes


def test_modules_and_classes_keep_their_size() -> None:
    problems = []
    for path in _sources():
        lines, classes = oversized(path.read_text())
        rel = path.relative_to(ROOT)
        if lines > MAX_MODULE_LINES:
            problems.append(f"{rel}: {lines} lines (max {MAX_MODULE_LINES}): split it along a responsibility")
        problems += [f"{rel}: class {c} without a 'Size:' reason in its docstring" for c in classes]
    assert not problems, "\n".join(problems)


def test_the_check_catches_what_it_should() -> None:
    body = "\n".join("    x = 1" for _ in range(MAX_CLASS_LINES))
    assert oversized(f"class Big:\n    '''A class.'''\n{body}\n")[1] == [f"Big ({MAX_CLASS_LINES + 2} lines)"]
    assert oversized(f"class Big:\n    '''A class.\n\n    Size: one state.'''\n{body}\n")[1] == []
    assert oversized("x = 1\n" * (MAX_MODULE_LINES + 1))[0] == MAX_MODULE_LINES + 1
