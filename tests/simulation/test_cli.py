"""simulation.cli: plain --help text from RST docstrings, and argparse number types."""

from __future__ import annotations

import argparse

import pytest

from simulation.cli import at_least, doc_help, plain, positive_float


def test_plain_strips_inline_markup() -> None:
    assert plain("``resetfree-sim``: see :mod:`simulation.drills.bench_suite` and ``--resume RUN_DIR``") == (
        "resetfree-sim: see simulation.drills.bench_suite and --resume RUN_DIR")


def test_doc_help_gives_the_first_paragraph_once() -> None:
    doc = "``tool``: does one thing.\n\n    tool --x\n\nMore about ``--x``.\n"
    assert doc_help(doc) == ("tool: does one thing.", "    tool --x\n\nMore about --x.")
    assert doc_help("Only a summary.") == ("Only a summary.", "")
    assert doc_help(None) == ("", "")


def test_number_types() -> None:
    assert at_least(1)("3") == 3 and at_least(0)("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match="must be at least 1, got 0"):
        at_least(1)("0")
    with pytest.raises(argparse.ArgumentTypeError, match="expected an integer"):
        at_least(1)("1.5")
    assert positive_float("0.5") == 0.5
    for bad in ("0", "-1", "nan", "inf", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_float(bad)
