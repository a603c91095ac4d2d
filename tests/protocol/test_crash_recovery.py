"""A receiving process is SIGKILLed mid-stream and restarted (twice): with its ReceiveTracker
state and the received seqs persisted before each ack, every transition arrives exactly
once and in order.

Run as ``python -m tests.protocol.test_crash_recovery ENDPOINT STATE_FILE`` this module is
the receiver (a minimal learner)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from protocol.errors import ProtocolError, SequenceGap
from protocol.messages import Ack, Hello, TransitionBatch, Welcome
from protocol.reliability import ReceiveTracker
from tests.protocol.send_window import SendWindow
from protocol.transport import UplinkClient, UplinkClientConfig, UplinkServer, UplinkServerConfig
from tests.protocol.test_transport import hello
from tests.protocol.strategies import small_batch

TOTAL_STEPS = 600
BATCH = 4


def _persist(path: Path, tracker: ReceiveTracker, received: list[int]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump({"tracker": tracker.export_state(), "received": received}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


async def _receiver(endpoint: str, state_file: Path) -> None:
    tracker, received = ReceiveTracker(), []
    if state_file.exists():
        state = json.loads(state_file.read_text())
        tracker, received = ReceiveTracker.from_state(state["tracker"]), state["received"]
    server = UplinkServer(UplinkServerConfig(endpoint=endpoint, heartbeat_interval_s=0.1))
    await server.start()
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(server.run())
            while True:
                peer, msg = await server.recv()
                if isinstance(msg, Hello):
                    try:
                        resume = tracker.resume_point(msg.session_id, msg.next_seq)
                    except ProtocolError as e:
                        server.send(peer, Welcome(session_id=msg.session_id, accepted=False, reason=str(e),
                                                  resume_seq=0, net_config={}, weights_endpoint=""))
                        continue
                    server.send(peer, Welcome(session_id=msg.session_id, accepted=True, reason="", resume_seq=resume,
                                              net_config={}, weights_endpoint=""))
                elif isinstance(msg, TransitionBatch):
                    try:
                        fresh = tracker.admit(msg)
                    except SequenceGap:
                        continue
                    if fresh is not None:
                        received.extend(int(x) for x in fresh.observations["proprio"][:, 0])
                        tracker.commit(fresh.session_id, fresh.end_seq)
                        _persist(state_file, tracker, received)  # durable before the ack
                    server.send(peer, Ack(session_id=msg.session_id, seq=tracker.committed(msg.session_id),
                                          trained_through=0))
    finally:
        server.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(endpoint: str, state_file: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.protocol.test_crash_recovery", endpoint, str(state_file)],
                            cwd=Path(__file__).resolve().parents[2])


def _received(state_file: Path) -> int:
    try:
        return len(json.loads(state_file.read_text())["received"])
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


async def _sender(endpoint: str, state_file: Path) -> None:
    window = SendWindow(max_batches=10_000)
    client = UplinkClient(UplinkClientConfig(endpoint=endpoint, heartbeat_interval_s=0.1, peer_timeout_s=0.6,
                                             hello_timeout_s=0.5, reconnect_min_s=0.05, reconnect_max_s=0.2),
                          lambda: hello(next_seq=window.next_seq))
    proc = _spawn(endpoint, state_file)
    kills = 0
    try:
        async with asyncio.TaskGroup() as tg:
            runner = tg.create_task(client.run())
            last_progress = time.monotonic()
            while window.acked < TOTAL_STEPS:
                if window.next_seq < TOTAL_STEPS and window.has_room():
                    batch = small_batch(first_seq=window.next_seq, b=BATCH)
                    window.push(batch)
                    client.send(batch)
                msg = await client.recv(timeout=0.005)
                if isinstance(msg, Welcome):
                    for b in window.resend_from(msg.resume_seq):
                        client.send(b)
                elif isinstance(msg, Ack) and window.on_ack(msg.seq):
                    last_progress = time.monotonic()
                if time.monotonic() - last_progress > 0.5:  # lost to the HWM or a gap: resend
                    for b in window.resend_from(window.acked):
                        client.send(b)
                    last_progress = time.monotonic()
                if kills < 2 and _received(state_file) > (kills + 1) * TOTAL_STEPS // 4:
                    proc.send_signal(signal.SIGKILL)  # mid-stream, no chance to clean up
                    proc.wait()
                    kills += 1
                    proc = _spawn(endpoint, state_file)
            runner.cancel()
    finally:
        client.close()
        proc.kill()
        proc.wait()
    assert kills == 2


def test_receiver_killed_and_restarted_gets_everything_exactly_once(tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    endpoint = f"tcp://127.0.0.1:{_free_port()}"

    async def main() -> None:
        async with asyncio.timeout(60):
            await _sender(endpoint, state_file)

    asyncio.run(main())
    received = json.loads(state_file.read_text())["received"]
    assert received == list(range(TOTAL_STEPS))


if __name__ == "__main__":
    asyncio.run(_receiver(sys.argv[1], Path(sys.argv[2])))
