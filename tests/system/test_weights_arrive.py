"""Weights reach the runtime on every start: the real learner and runtime as OS processes.

Issue 18: with the robot profile, a pixel runtime never received any weights (8 of 8 fresh
starts) while state runtimes always did. The cause: the robot profile's pixel policy is an
82 MiB blob with one 77 MiB tensor, over the subscriber's 32 MiB frame limit, and libzmq
drops a peer whose frame is over ``ZMQ_MAXMSGSIZE`` without a word. The runtime now sizes its
subscriber for the policy it built (``protocol.transport.weights_limits``) and reports the
connection's state.

Each start here is a user's: ``resetfree-learner`` and ``resetfree-runtime`` on one machine,
keyed or not, either started first, with a delay between them; it passes when the runtime
logs the forward agent's first weights as active. CI runs one start of each kind; the full
drill (``pytest -m slow``, ``RESETFREE_WEIGHTS_STARTS``, default 30) runs many in random order.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import random
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from protocol import keys as curve_keys
from protocol.demos import save_demos
from simulation.drills.fault_config import SMALL_LEARNER
from simulation.app.processes import ChildProcess, python_module

_PROCESSES = all(importlib.util.find_spec(m) is not None for m in ("learner.__main__", "runtime.__main__"))

ACTIVE = re.compile(r"policy: forward weights v\d+ active")
SEED_FRAMES = 40


@dataclass(frozen=True)
class Kind:
    """One kind of start: the task, its observations and the learner profile."""

    task: str
    obs: str
    profile: str


STATE_DOOR = Kind("door", "state", "sim")
PIXEL_CUBE = Kind("cube", "pixels", "robot")  # the 82 MiB blob that never arrived


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _demos(directory: Path, kind: Kind) -> Path:
    from simulation.tools.demos_cli import generate

    target = directory / f"{kind.task}-{kind.obs}"
    if not target.is_dir():
        target.mkdir(parents=True)
        for direction in ("forward", "backward"):
            demos = generate(kind.task, direction, episodes=2, obs=kind.obs, seed=0, max_steps=30)
            save_demos(target / f"{kind.task}_{direction}.npz", demos)
    return target


async def _start_pair(tmp_path: Path, n: int, kind: Kind, keyed: bool, runtime_first: bool, delay_s: float,
                      deadline_s: float = 240.0) -> float:
    """Starts a learner and a runtime; returns the seconds from the second start to the
    runtime's first active forward weights. Fails with both logs' tails when they never come."""
    demos = await asyncio.to_thread(_demos, tmp_path / "demos", kind)
    key_dir = tmp_path / "keys"
    if keyed and not key_dir.is_dir():
        curve_keys.generate(key_dir)
    key_args = ["--keys", str(key_dir)] if keyed else []
    uplink = f"tcp://127.0.0.1:{_free_port()}"
    any_port = "tcp://127.0.0.1:0"
    sets = [*SMALL_LEARNER, f"schedule.seed_frames={SEED_FRAMES}"]
    learner = ChildProcess(f"learner-{n}", [
        *python_module("learner"), "--profile", kind.profile, "--demos", str(demos), "--bind", uplink,
        "--weights-bind", any_port, "--control-bind", any_port, "--device", "cpu", "--threads", "1",
        "--run-dir", str(tmp_path / f"run-{n}"), "--log-level", "INFO", *key_args,
        *[a for s in sets for a in ("--set", s)]], tmp_path / f"learner-{n}.log")
    runtime = ChildProcess(f"runtime-{n}", [
        *python_module("runtime"), "--robot", f"sim:{kind.task}", "--obs", kind.obs, "--learner", uplink,
        "--spill-dir", str(tmp_path / f"spill-{n}"), "--control-bind", any_port, "--hz", "20",
        "--priority", "none", "--cpu-latency-us", "off", "--log-level", "INFO", *key_args],
        tmp_path / f"runtime-{n}.log")
    first, second = (runtime, learner) if runtime_first else (learner, runtime)
    try:
        first.start()
        await asyncio.sleep(delay_s)
        second.start()
        started = time.monotonic()
        while not ACTIVE.search(runtime.log_path.read_text(errors="replace")):
            for child in (learner, runtime):
                assert child.poll() is None, f"{child.name} exited:\n{child.tail(40)}"
            assert time.monotonic() - started < deadline_s, (
                f"start {n} ({kind}, keyed={keyed}, runtime first={runtime_first}, delay {delay_s:.1f} s): "
                f"no weights after {deadline_s:.0f} s\n--- runtime\n{runtime.tail(30)}\n--- learner\n{learner.tail(30)}")
            await asyncio.sleep(0.5)
        elapsed = time.monotonic() - started
        log = runtime.log_path.read_text(errors="replace")
        assert "weights: connected to" in log and "dropped before any blob arrived" not in log, runtime.tail(30)
        return elapsed
    finally:
        await runtime.stop(30.0)
        await learner.stop(60.0)


@pytest.mark.skipif(not _PROCESSES, reason="python -m learner / python -m runtime not present")
@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", [STATE_DOOR, PIXEL_CUBE], ids=["door-state-sim", "cube-pixels-robot"])
def test_weights_reach_the_runtime(tmp_path: Path, kind: Kind) -> None:
    seconds = asyncio.run(_start_pair(tmp_path, 0, kind, keyed=True, runtime_first=kind is PIXEL_CUBE, delay_s=2.0))
    assert seconds > 0


@pytest.mark.slow
@pytest.mark.skipif(not _PROCESSES, reason="python -m learner / python -m runtime not present")
@pytest.mark.timeout(4 * 3600)
def test_weights_reach_the_runtime_on_every_start(tmp_path: Path) -> None:
    starts = int(os.environ.get("RESETFREE_WEIGHTS_STARTS", "30"))
    rng = random.Random(18)
    plan = [(rng.choice([STATE_DOOR, PIXEL_CUBE]), rng.random() < 0.5, rng.random() < 0.5, rng.uniform(0.0, 8.0))
            for _ in range(starts)]

    async def body() -> list[float]:
        return [await _start_pair(tmp_path, n, *case) for n, case in enumerate(plan)]

    seconds = asyncio.run(body())
    print(f"weights arrived on {len(seconds)} of {starts} starts; seconds to the first: "
          f"min {min(seconds):.1f}, max {max(seconds):.1f}")
