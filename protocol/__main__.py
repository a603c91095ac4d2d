"""``python -m protocol``: the protocol's command-line tools (``keys``, ``bench``)."""

from __future__ import annotations

import logging
import sys

from protocol import bench, keys

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    """Dispatches ``python -m protocol {keys,bench} ARGS``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    tools = {"keys": keys.main, "bench": bench.main}
    if not argv or argv[0] not in tools:
        print("usage: python -m protocol {keys,bench} [ARGS...]   (each takes --help)", file=sys.stderr)
        return 2
    return int(tools[argv[0]](argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
