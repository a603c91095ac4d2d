"""``resetfree-runtime ctl status|estop|pause|resume|switch|home --control ADDR``: operator commands.

Each command sends one :class:`protocol.messages.Command` to the daemon's control server
and prints its ``Status`` (the figures as JSON). ``--control`` defaults to the endpoint the
daemon wrote to ``SPILL_DIR/endpoints.json`` when ``--spill-dir`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path

from protocol.errors import PeerTimeout
from protocol.keys import client_keys
from protocol.messages import Command, Status
from protocol.transport import ControlClient, ControlClientConfig

logger = logging.getLogger(__name__)

KINDS = {"status": "status", "estop": "estop", "pause": "pause", "resume": "resume",
         "switch": "switch_agent", "home": "go_home"}


async def request(endpoint: str, kind: str, agent: str | None = None, timeout: float = 3.0,
                  keys_dir: Path | None = None) -> Status:
    """Sends one command to the runtime at ``endpoint``; returns its Status.

    Raises PeerTimeout when no answer comes within ``timeout`` seconds.
    """
    keys = client_keys(keys_dir, server="runtime") if keys_dir else None
    client = ControlClient(ControlClientConfig(endpoint=endpoint, keys=keys))
    try:
        return await client.request(Command(kind=kind, agent=agent, request_id=int(time.time() * 1e3)), timeout)
    finally:
        client.close()


def main(argv: list[str]) -> int:
    """Runs one ctl command; returns 0 when the runtime carried it out, 1 otherwise."""
    p = argparse.ArgumentParser(prog="resetfree-runtime ctl", description="Send a command to a running runtime.")
    p.add_argument("command", choices=sorted(KINDS), help="what to do")
    p.add_argument("--agent", choices=("forward", "backward"), default=None,
                   help="switch: the agent to act (default: the other one)")
    p.add_argument("--control", default=None, help="the runtime's control endpoint")
    p.add_argument("--spill-dir", type=Path, default=None, help="read the endpoint from SPILL_DIR/endpoints.json")
    p.add_argument("--keys", type=Path, default=None, help="CURVE keys directory")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    args = p.parse_args(argv)
    endpoint = args.control
    if endpoint is None and args.spill_dir is not None:
        endpoint = json.loads((args.spill_dir / "endpoints.json").read_text())["control"]
    endpoint = endpoint or "tcp://127.0.0.1:5558"
    agent = args.agent
    if args.command == "switch" and agent is None:
        status = asyncio.run(request(endpoint, "status", timeout=args.timeout, keys_dir=args.keys))
        agent = "backward" if status.detail.get("agent") == "forward" else "forward"
    try:
        status = asyncio.run(request(endpoint, KINDS[args.command], agent, args.timeout, args.keys))
    except PeerTimeout as e:
        print(f"resetfree-runtime ctl: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"ok": status.ok, "state": status.state, "message": status.message,
                      "detail": status.detail}, indent=2, sort_keys=True))
    return 0 if status.ok else 1
