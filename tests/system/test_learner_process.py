"""Exactly-once across a learner crash: SIGKILL the learner process mid-stream, restart it
with --resume, resend from Welcome.resume_seq, and count every step exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import zmq
import zmq.asyncio

from protocol.messages import Command
from protocol.transport import ControlClient, ControlClientConfig
from tests.learner.test_service import TINY, Runtime, make_batch, make_hello, write_demos

TOTAL, BATCH = 160, 8


def start_learner(demos: Path, run_dir: Path, *, resume: bool) -> subprocess.Popen:
    (run_dir / "endpoints.json").unlink(missing_ok=True)
    sets = [a for s in TINY if not s.startswith("service.") or "journal" in s or "every" in s for a in ("--set", s)]
    cmd = [sys.executable, "-m", "learner", "--demos", str(demos), "--bind", "tcp://127.0.0.1:0",
           "--weights-bind", "tcp://127.0.0.1:0", "--control-bind", "tcp://127.0.0.1:0", "--mode", "lockstep",
           "--device", "cpu", "--threads", "1", "--log-level", "WARNING", *sets]
    cmd += ["--resume", str(run_dir)] if resume else ["--run-dir", str(run_dir)]
    return subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})


async def endpoints(run_dir: Path, proc: subprocess.Popen) -> dict[str, str]:
    async with asyncio.timeout(60):
        while not (run_dir / "endpoints.json").is_file():
            assert proc.poll() is None, f"learner exited with {proc.returncode}"
            await asyncio.sleep(0.05)
    return json.loads((run_dir / "endpoints.json").read_text())


async def learner_status(endpoint: str) -> dict:
    client = ControlClient(ControlClientConfig(endpoint=endpoint))
    try:
        return (await client.request(Command(kind="status", agent=None, request_id=7), timeout=10.0)).detail
    finally:
        client.close()


def test_sigkill_resume_resend_counts_every_step_once(tmp_path: Path) -> None:
    demos, run_dir = write_demos(tmp_path / "demos"), tmp_path / "run"
    ctx = zmq.asyncio.Context()

    async def scenario() -> None:
        proc = start_learner(demos, run_dir, resume=False)
        try:
            ep = await endpoints(run_dir, proc)
            rt = Runtime(ctx, ep["uplink"])
            assert (await rt.hello(make_hello("sess"))).accepted
            for first in range(0, 96, BATCH):  # lock-step runtime: wait for training every 3 batches
                rt.send(make_batch("sess", first, BATCH))
                if (first // BATCH) % 3 == 2:
                    await rt.ack_at_least(first + BATCH, trained=first + BATCH - 2 * BATCH)
            for first in range(96, 120, BATCH):  # in flight when the learner dies
                rt.send(make_batch("sess", first, BATCH))
            await rt.ack_at_least(104)
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            rt.close()

            proc = start_learner(demos, run_dir, resume=True)
            ep = await endpoints(run_dir, proc)
            rt = Runtime(ctx, ep["uplink"])
            welcome = await rt.hello(make_hello("sess", next_seq=120))
            assert welcome.accepted and 104 <= welcome.resume_seq <= 120
            rt.send(make_batch("sess", 96, BATCH))  # stale resend: all duplicates
            for first in range(welcome.resume_seq, TOTAL, BATCH):
                rt.send(make_batch("sess", first, min(BATCH, TOTAL - first)))
            await rt.ack_at_least(TOTAL, trained=TOTAL)
            d = await learner_status(ep["control"])
            assert d["transitions_ingested"] == TOTAL and d["env_steps"] == TOTAL
            assert d["duplicates_dropped"] >= BATCH
            assert d["updates"] == TOTAL - 16  # lock-step, UTD 1 after 16 seed frames, nothing twice
            rt.close()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    try:
        asyncio.run(scenario())
    finally:
        ctx.destroy(linger=0)
    assert any(run_dir.glob("ckpt-*"))
