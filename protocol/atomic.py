"""Atomic file writes: a reader sees the old file or the new one, never a torn one.

Every package writes its small state files (run settings, endpoints, summaries, spill state,
demo files) through these: a temporary file in the same directory, flushed and fsynced,
then renamed over the target (``os.replace``, atomic on POSIX), the temporary removed on any
failure. Checkpoints, which are directories, have their own rename in ``learner.checkpoint``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Yields a binary file that replaces ``path`` when the block ends without an exception
    (parents created). On an exception the target is untouched and the temporary is removed.
    Blocks on the disk (fsync). Raises OSError from the file system."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (see :func:`atomic_file`)."""
    with atomic_file(path) as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], data: Any, *, indent: int | None = 1) -> None:
    """Writes ``data`` as JSON (sorted keys, a final newline) to ``path`` atomically.
    Raises TypeError/ValueError for data JSON cannot encode, before touching the disk."""
    write_text_atomic(path, json.dumps(data, indent=indent, sort_keys=True) + "\n")
