"""Every console script's ``--help`` (and every subcommand's) reads as plain text: no
reStructuredText double backticks, and each sentence once.

The scripts come from ``pyproject.toml``'s ``[project.scripts]``; each is called as its entry
point with ``--help`` in this process (argparse exits 0 after printing).
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]

#: script -> the subcommands whose --help is read as well ([] is the script itself)
SUBCOMMANDS: dict[str, list[list[str]]] = {
    "resetfree-keys": [["generate"], ["show"]],
    "resetfree-runtime": [["ctl"]],
    "resetfree-demos": [["generate"], ["import-earl"], ["inspect"], ["record"], ["export"], ["import"],
                        ["export-run"]],
    "resetfree-bench": [["cube-ood"], ["faults"], ["hostile"], ["learner"], ["learning"], ["learning", "--suite"], ["protocol"],
                        ["runtime"], ["sim"]],
}

def _entry_point(script: str) -> Callable[[list[str]], int]:
    module, _, function = SCRIPTS[script].partition(":")
    return getattr(importlib.import_module(module), function)


def _help(script: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        _entry_point(script)([*argv, "--help"])
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def _cases() -> list[object]:
    cases: list[object] = []
    for script in SCRIPTS:
        for argv in [[], *SUBCOMMANDS.get(script, [])]:
            cases.append(pytest.param(script, argv, id=" ".join([script, *argv])))
    return cases


@pytest.mark.parametrize(("script", "argv"), _cases())
def test_help_has_no_rst_markup(script: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(script, argv, capsys)
    assert text.startswith("usage:"), text[:200]
    assert "``" not in text, "\n".join(line for line in text.splitlines() if "``" in line)


def test_every_subcommand_is_covered(capsys: pytest.CaptureFixture[str]) -> None:
    """A subcommand added later is read by the test above too (its choices are in the usage)."""
    for script in ("resetfree-keys", "resetfree-demos", "resetfree-bench"):
        usage = _help(script, [], capsys).split("\n\n")[0]
        choices = set(re.search(r"\{([a-z,-]+)\}", usage).group(1).split(","))  # type: ignore[union-attr]
        assert choices <= {argv[0] for argv in SUBCOMMANDS[script]}, (script, choices)


def test_eval_help_says_its_first_sentence_once(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(_help("resetfree-eval", [], capsys).split())
    assert text.count("evaluate a policy on the Franka or a simulated robot") == 1
    assert "--policy is a learner run directory" in text  # the rest of the docstring, as the epilog
