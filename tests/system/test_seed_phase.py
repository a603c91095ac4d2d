"""The seed phase, end to end: the real learner and a real lock-step runtime as OS processes.

The rule (docs/architecture.md, "The seed phase"): the first ``schedule.seed_frames`` steps the
learner ingests are taken with uniform random actions; after them the agents act with the
learner's weights. The learner publishes nothing during the seed phase, so the runtime, which
acts at random until it holds weights for the acting agent, acts at random for exactly that
long (plus, after it, the time the first weights take to arrive: at most a lock-step window).

What the runtime really sent is read back from the learner's ingest journal after the run;
the weights the learner published are captured from its weights channel. The runtime acts
with ``--no-explore`` (the policy's mean action), so every step after the seed phase can be
recomputed from the observation and a published blob — and must be.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import zmq

from learner.journal import IngestJournal, JournalConfig
from protocol.codec import decode
from protocol.demos import save_demos
from protocol.messages import AGENTS, Weights
from simulation.drills.fault_config import SMALL_LEARNER
from simulation.app.processes import ChildProcess, StatusPoller, pick_endpoint, python_module, wait_for_endpoints

_PROCESSES = all(importlib.util.find_spec(m) is not None for m in ("learner.__main__", "runtime.__main__"))

TASK = "tabletop"  # no workspace box and no gripper channel: the shield passes random actions unchanged
SEED_FRAMES = 1200
TOTAL = 1600  # 400 steps after the seed phase: the forward agent's 200, then the backward agent's
WINDOW = 16  # --batch-steps: the lock-step window


def _write_demos(directory: Path) -> Path:
    from simulation.tools.demos_cli import generate

    directory.mkdir(parents=True, exist_ok=True)
    for direction in ("forward", "backward"):
        save_demos(directory / f"{TASK}_{direction}.npz", generate(TASK, direction, episodes=2, obs="state", seed=0))
    return directory


def _journal_steps(run_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Returns ``(seqs, states, actions, agents)`` of every step the learner ingested, in seq order."""
    journal = IngestJournal.open(JournalConfig(directory=run_dir / "journal", retention_steps=1 << 40))
    parts: list[tuple[np.ndarray, ...]] = []
    try:
        for _, batch in journal.records_from(journal.start):
            parts.append((np.arange(batch.first_seq, batch.end_seq), np.asarray(batch.observations["state"]),
                          np.asarray(batch.actions, dtype=np.float64), np.asarray(batch.agents)))
    finally:
        journal.close()
    seq, states, actions, agents = (np.concatenate(column) for column in zip(*parts))
    order = np.argsort(seq, kind="stable")
    return seq[order], states[order], actions[order], agents[order]


class _WeightsTap:
    """Captures every blob the learner publishes (a thread reading its weights PUB)."""

    def __init__(self, endpoint: str) -> None:
        self.blobs: dict[tuple[str, int], Weights] = {}
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.linger = 0
        self._sock.rcvhwm = 1000
        self._sock.rcvtimeo = 100
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sock.connect(endpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                frames = self._sock.recv_multipart(copy=True)
            except zmq.Again:
                continue
            w = decode(frames)
            assert isinstance(w, Weights)
            w.verify()
            self.blobs[(w.agent, w.version)] = w

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self._sock.close()
        self._ctx.term()


def _uniformity(actions: np.ndarray) -> tuple[np.ndarray, float]:
    """Returns the mean |a| per dimension and the largest Kolmogorov–Smirnov distance of any
    dimension's empirical distribution from U(-1, 1)."""
    ks = 0.0
    for column in actions.T:
        x = np.sort(column)
        n = len(x)
        cdf = (x + 1.0) / 2.0
        ks = max(ks, float(np.max(np.maximum(np.arange(1, n + 1) / n - cdf, cdf - np.arange(n) / n))))
    return np.abs(actions).mean(axis=0), ks


async def _run(tmp_path: Path) -> tuple[list[dict], dict, dict[tuple[str, int], Weights]]:
    demos = await asyncio.to_thread(_write_demos, tmp_path / "demos")
    run_dir, spill = tmp_path / "run", tmp_path / "spill"
    any_port = "tcp://127.0.0.1:0"
    # publish_every past the run: the only publication is the one that ends the seed phase
    # (one blob per agent, re-sent every 2 s by the PUB, so the tap cannot miss it)
    sets = [*SMALL_LEARNER, f"schedule.seed_frames={SEED_FRAMES}", "service.publish_every=100000",
            "service.checkpoint_every=100000", "agent.encoder_bf16=false"]
    learner = ChildProcess("learner", [
        *python_module("learner"), "--profile", "sim", "--demos", str(demos), "--bind", any_port,
        "--weights-bind", any_port, "--control-bind", any_port, "--mode", "lockstep", "--device", "cpu",
        "--threads", "1", "--seed", "0", "--log-level", "INFO", "--run-dir", str(run_dir),
        *[a for s in sets for a in ("--set", s)]], tmp_path / "learner.log")
    runtime = ChildProcess("runtime", [
        *python_module("runtime"), "--robot", f"sim:{TASK}", "--obs", "state", "--lockstep", "--hz", "50",
        "--spill-dir", str(spill), "--control-bind", any_port, "--seed", "0", "--switch-every", "200",
        "--batch-steps", str(WINDOW), "--max-steps", str(TOTAL), "--ack-wait", "60", "--no-explore",
        "--reset-every", "0", "--priority", "none",
        "--cpu-latency-us", "off", "--log-level", "INFO"], tmp_path / "runtime.log")
    statuses: list[dict] = []  # the runtime's status, polled through the run
    learner_detail: dict = {}
    pollers: list[StatusPoller] = []
    tap: _WeightsTap | None = None
    try:
        learner.start()
        found = await wait_for_endpoints(run_dir / "endpoints.json", learner, 120.0)
        learner_status = StatusPoller(pick_endpoint(found, "control"))
        pollers.append(learner_status)
        tap = _WeightsTap(pick_endpoint(found, "weights"))
        runtime.start([*runtime.argv, "--learner", pick_endpoint(found, "uplink")])
        runtime_status: StatusPoller | None = None
        async with asyncio.timeout(400):
            while runtime.poll() is None:
                if runtime_status is None and (spill / "endpoints.json").is_file():
                    runtime_status = StatusPoller(pick_endpoint(
                        await wait_for_endpoints(spill / "endpoints.json", runtime, 30.0), "control"))
                    pollers.append(runtime_status)
                if runtime_status is not None:
                    detail = await runtime_status.request("status", 2.0)
                    if detail is not None:
                        statuses.append(detail)
                assert learner.poll() is None, learner.tail(40)
                await asyncio.sleep(0.2)
        code = runtime.poll()
        learner_detail = await learner_status.request("status", 5.0) or {}
        assert code == 0, runtime.tail(40)
        assert await learner.stop(60.0) == 0, learner.tail(40)
    finally:
        for poller in pollers:
            poller.close()
        if tap is not None:
            tap.close()
        await runtime.stop(30.0)
        await learner.stop(60.0)
    return statuses, learner_detail, {} if tap is None else tap.blobs


def _policy_actions(run_dir: Path, blob: Weights, states: np.ndarray) -> np.ndarray:
    """Returns ``blob``'s mean actions for ``states`` (what ``--no-explore`` acts with)."""
    from simulation.app.evaluator import load_policy

    net_config = json.loads((run_dir / "config.json").read_text())["config"]["network"]
    policy = load_policy({"state": ((states.shape[1],), "float32")}, 3, net_config, blob.tensors)
    return np.stack([policy(s) for s in states]).astype(np.float64)


@pytest.mark.skipif(not _PROCESSES, reason="python -m learner / python -m runtime not present")
@pytest.mark.timeout(480)
def test_seed_phase_actions_are_uniform_and_then_the_learners_weights_act(tmp_path: Path) -> None:
    statuses, learner_detail, blobs = asyncio.run(_run(tmp_path))
    run_dir = tmp_path / "run"
    seqs, states, actions, agents = _journal_steps(run_dir)
    assert np.array_equal(seqs, np.arange(TOTAL)), "the journal must hold every step exactly once"
    assert learner_detail.get("env_steps") == TOTAL and learner_detail.get("seed_phase") is False, learner_detail

    # 1. The seed phase: every action uniform in [-1, 1]^A (the tabletop shield changes none).
    seed = actions[:SEED_FRAMES]
    mean_abs, ks = _uniformity(seed)
    print(f"seed phase ({SEED_FRAMES} steps): mean |a| per dim {np.round(mean_abs, 3).tolist()}, KS {ks:.3f}")
    assert np.all(np.abs(mean_abs - 0.5) <= 0.05), mean_abs
    assert ks < 0.06, ks  # U(-1,1): KS 95 % quantile 1.36/sqrt(1200) = 0.039; per-dim, 3 dims
    histogram = np.stack([np.histogram(c, bins=10, range=(-1.0, 1.0))[0] for c in seed.T])
    assert histogram.min() >= 0.5 * SEED_FRAMES / 10, histogram  # roughly flat: every bin well filled
    assert np.all(np.abs(seed) <= 1.0)
    assert not np.all(seed == 0.0, axis=1).any(), "a shield hold recorded a zero action"

    # 2. The runtime knew it: no weights and seed_phase while the learner was in its seed phase …
    early = [s for s in statuses if int(s.get("next_seq", 0)) < SEED_FRAMES - WINDOW]
    assert early, "no runtime status during the seed phase"
    assert all(s["seed_phase"] is True and s["weights_version_forward"] == -1
               and s["weights_version_backward"] == -1 for s in early), early[-1]
    last = statuses[-1]
    assert int(last["next_seq"]) >= TOTAL - WINDOW, last
    assert last["seed_phase"] is False and last["weights_version_forward"] >= 0 \
        and last["weights_version_backward"] >= 0, last

    # 3. … nothing was published before the seed phase ended, one blob per agent when it did …
    assert sorted(a for a, _ in blobs) == ["backward", "forward"], sorted(blobs)
    assert (learner_detail["weights_version_forward"], learner_detail["weights_version_backward"]) == (
        next(v for a, v in blobs if a == "forward"), next(v for a, v in blobs if a == "backward"))

    # 4. … and from then on every action is the acting agent's published policy (the mean
    # action: --no-explore), after at most the time the blob takes to arrive.
    matches = np.zeros(TOTAL, bool)
    for (agent, _), blob in blobs.items():
        rows = np.flatnonzero(agents == AGENTS.index(agent))
        expected = _policy_actions(run_dir, blob, states[rows])
        matches[rows] |= np.max(np.abs(expected - actions[rows]), axis=1) < 1e-3
    assert not matches[:SEED_FRAMES].any(), np.flatnonzero(matches[:SEED_FRAMES])
    assert np.array_equal(np.unique(agents[SEED_FRAMES:]), [0, 1])  # both agents acted after it
    first = SEED_FRAMES + int(np.argmax(matches[SEED_FRAMES:]))
    print(f"after the seed phase: {first - SEED_FRAMES} random steps before the first weights arrived; "
          f"mean |a| per dim {np.round(np.abs(actions[first:]).mean(axis=0), 3).tolist()}")
    bad = np.flatnonzero(~matches[first:]) + first
    assert matches[first:].all(), (bad, actions[bad])
    assert first - SEED_FRAMES <= 3 * WINDOW, first
