"""What the console scripts share: ``--help`` text from module docstrings and argparse types.

The docstrings are written in reStructuredText (``code``, :mod:`roles`), which a terminal
shows literally, so the commands strip the markup (:func:`doc_help`). Numeric flags are
checked by argparse (:func:`at_least`, :func:`positive_float`), so a bad value is reported
as the flag the user typed.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable

_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def plain(text: str) -> str:
    """Returns ``text`` without reStructuredText inline markup: ````x```` and ``:role:`x``` become ``x``."""
    return _ROLE.sub(r"\1", text).replace("``", "")


def doc_help(doc: str | None) -> tuple[str, str]:
    """Returns ``(description, epilog)`` of a command's module docstring, both :func:`plain`:
    the first paragraph, and the rest (empty when there is none), so ``--help`` shows each
    sentence once."""
    paragraphs = (doc or "").strip("\n").split("\n\n")
    return plain(paragraphs[0].strip()), plain("\n\n".join(paragraphs[1:]).strip("\n"))


def at_least(minimum: int) -> Callable[[str], int]:
    """Returns an argparse ``type`` for an int ``>= minimum``: a bad value is a plain
    ``argument --robots: must be at least 1, got 0`` from argparse, not an internal class's
    validation message."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"int >= {minimum}"  # what argparse names in its own messages
    return parse


def positive_float(text: str) -> float:
    """argparse ``type`` for a finite float ``> 0``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value
