"""Issue 17, process level: hostile peers against a real learner process over loopback.

Each test starts ``python -m learner`` (tiny network, state demos), attacks one hole over real
sockets, and checks the process is still serving, counted the attack and still acks a
legitimate runtime beside it.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import msgpack
import numpy as np
import zmq
import zmq.asyncio

from protocol.codec import encode
from protocol.messages import Command
from tests.learner.test_service import Runtime, make_batch, make_hello, write_demos
from tests.system.test_learner_process import endpoints, learner_status, start_learner

MAX_SEQ = 2**53 - 1


async def _stop(proc) -> int:
    proc.send_signal(signal.SIGTERM)
    return await asyncio.to_thread(proc.wait, 60)


def test_overflowing_hellos_cannot_end_the_learner(tmp_path: Path) -> None:
    """Hole 1: hellos declaring 2^63-1 steps lost used to be accepted, pushed ``lost_steps``
    past 2^64 and made the next ``status`` raise OverflowError, which ended the process
    (exit code 1). Now a seq beyond the documented range does not decode, a declared loss
    beyond ``service.max_declared_loss`` is refused with the reason, and status keeps
    answering."""
    demos, run_dir = write_demos(tmp_path / "demos"), tmp_path / "run"
    ctx = zmq.asyncio.Context()

    async def scenario() -> None:
        proc = start_learner(demos, run_dir, resume=False)
        try:
            ep = await endpoints(run_dir, proc)
            good = Runtime(ctx, ep["uplink"])
            assert (await good.hello(make_hello("legit"))).accepted
            huge = 2**63 - 1
            for i in range(3):
                attacker = Runtime(ctx, ep["uplink"])
                # Built by hand: the library refuses to construct such a hello.
                header = msgpack.unpackb(encode(make_hello(f"evil-{i}"), single_frame=True)[0], raw=False)
                header["next_seq"] = header["oldest_seq"] = huge
                attacker.sock.send_multipart([msgpack.packb(header, use_bin_type=True)])
                # In range, but an absurd declared loss: refused with the reason.
                welcome = await attacker.hello(make_hello(f"evil-range-{i}", next_seq=MAX_SEQ, oldest_seq=MAX_SEQ))
                assert not welcome.accepted and "max_declared_loss" in welcome.reason, welcome.reason
                attacker.close()
            d = await learner_status(ep["control"])
            assert proc.poll() is None
            assert d["lost_steps"] == 0 and d["refused_sessions"] == 3 and d["malformed_rejected"] >= 3
            good.send(make_batch("legit", 0, 8))
            assert (await good.ack_at_least(8)).seq == 8
            d = await learner_status(ep["control"])
            assert d["transitions_ingested"] == 8
            good.close()
            assert await _stop(proc) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    try:
        asyncio.run(scenario())
    finally:
        ctx.destroy(linger=0)
