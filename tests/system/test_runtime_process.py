"""``python -m runtime`` as an OS process against a scripted learner in this process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.runtime.test_daemon import ScriptedLearner

ROOT = Path(__file__).resolve().parents[2]
NET_CONFIG = {"feature_dim": 8, "hidden_dim": 16, "conv_channels": 4}


def runtime_cmd(endpoint: str, spill: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "runtime", "--robot", "sim:tabletop", "--obs", "state", "--hz", "50",
            "--learner", endpoint, "--spill-dir", str(spill), "--control-bind", "tcp://127.0.0.1:0",
            "--seed", "0", "--priority", "none", *extra]


async def wait_process(proc: subprocess.Popen, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("runtime process did not exit in time")
        await asyncio.sleep(0.05)
    return proc.returncode


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
            "PYTHONPATH": str(ROOT)}


def test_max_steps_delivers_every_step_once_and_exits_zero(tmp_path: Path) -> None:
    async def body() -> tuple[int, ScriptedLearner, str]:
        learner = ScriptedLearner(net_config=NET_CONFIG)
        endpoint = await learner.start()
        task = asyncio.create_task(learner.run())
        log = tmp_path / "runtime.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(runtime_cmd(endpoint, tmp_path / "spill", "--max-steps", "300"),
                                    cwd=ROOT, env=env(), stdout=out, stderr=subprocess.STDOUT)
            code = await wait_process(proc, 90)
        task.cancel()
        return code, learner, log.read_text()

    code, learner, log = asyncio.run(body())
    assert code == 0, log
    assert learner.received == {seq: 1 for seq in range(300)}, log
    hello = learner.hellos[0]
    assert hello.task == "tabletop" and set(hello.observation_space) == {"state"}
    endpoints = json.loads((tmp_path / "spill" / "endpoints.json").read_text())
    assert endpoints["control"].startswith("tcp://127.0.0.1:")


def test_sigterm_stops_cleanly_and_a_restart_continues_the_session(tmp_path: Path) -> None:
    async def body() -> tuple[int, int, ScriptedLearner, str]:
        learner = ScriptedLearner(net_config=NET_CONFIG)
        endpoint = await learner.start()
        task = asyncio.create_task(learner.run())
        log = tmp_path / "runtime.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(runtime_cmd(endpoint, tmp_path / "spill"), cwd=ROOT, env=env(),
                                    stdout=out, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 60
            while len(learner.received) < 50:
                assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            first = await wait_process(proc, 30)
            proc = subprocess.Popen(runtime_cmd(endpoint, tmp_path / "spill", "--max-steps", "40"),
                                    cwd=ROOT, env=env(), stdout=out, stderr=subprocess.STDOUT)
            second = await wait_process(proc, 90)
        task.cancel()
        return first, second, learner, log.read_text()

    first, second, learner, log = asyncio.run(body())
    assert first == 0 and second == 0, log
    # a requested stop stops the robot, once, at INFO: it is not an e-stop
    assert "loop: robot stopped (SIGTERM)" in log and "runtime: stopped" in log
    assert "E-STOP" not in log and log.count("runtime: stopping (SIGTERM)") == 1
    assert len({h.session_id for h in learner.hellos}) == 1  # the restart continued its session
    assert learner.hellos[1].next_seq > 0
    assert set(learner.received.values()) == {1}  # no step twice …
    assert sorted(learner.received) == list(range(len(learner.received)))  # … and none missing
