"""``resetfree-bench runtime``: control-loop jitter, overruns, inference and weight-swap latency
of the real daemon (``python -m runtime``) while a learner trains on the same machine.

Per rate (10 Hz and 50 Hz): a load process runs batch-256 pixel REDQ updates
(``learner.agent.RedqAgent``, two 84×84 cameras, ``--load-threads`` torch threads, so both
cores are busy as on the design's 2-core robot PC); this process plays the learner's uplink
(welcome, acks, weights PUB — the actor for the cube's two cameras, default network); the
runtime drives the simulated cube task in pixel mode at the rate. Weights are published
every ``--publish-every`` seconds; ``swap_to_active_ms`` is publish → active in the loop
(the daemon stamps ``weights_active_at_forward`` with the wall clock; same machine). After
``--seconds`` the runtime's ``status`` gives the loop figures; ``cpu_steal_ms`` is the
hypervisor's steal time over the runtime's life (on a VM). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from learner.networks import NetworkConfig, build_actor
from learner.placement import parse_cpus
from protocol.errors import PeerTimeout, SequenceGap
from protocol.messages import Ack, Hello, TransitionBatch, Weights, Welcome
from protocol.tensors import weights_in_dtype
from protocol.reliability import ReceiveTracker
from protocol.session import SessionSettings
from protocol.spaces import obs_spec_of
from protocol.transport import UplinkServer, UplinkServerConfig, WeightsPublisher, WeightsPublisherConfig
from simulation.cli import plain
from simulation.app.processes import StatusPoller, pick_endpoint, read_endpoints

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]  # the repository (the children run from it)


class BenchLearner:
    """The learner's uplink side, minimal: welcome, dedupe + ack, publish actor weights."""

    def __init__(self, net_config: dict[str, Any], weights_dtype: str) -> None:
        self.net_config = net_config
        self.weights_dtype = weights_dtype
        self.server = UplinkServer(UplinkServerConfig())
        self.publisher = WeightsPublisher(WeightsPublisherConfig())
        self.tracker = ReceiveTracker()
        self.weights_endpoint = ""
        self.hello: Hello | None = None
        self.steps = 0

    async def start(self) -> str:
        """Binds both sockets; returns the uplink endpoint."""
        self.weights_endpoint = await self.publisher.start()
        return await self.server.start()

    async def run(self) -> None:
        """Serves until cancelled; closes the sockets in ``finally``."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.server.run())
                tg.create_task(self._serve())
        finally:
            self.server.close()
            self.publisher.close()

    async def _serve(self) -> None:
        settings = SessionSettings()
        while True:
            peer, msg = await self.server.recv()
            if isinstance(msg, Hello):
                self.hello = msg
                ok = msg.config_hash == settings.config_hash()
                self.server.send(peer, Welcome(
                    session_id=msg.session_id, accepted=ok, reason="" if ok else "config hash",
                    resume_seq=self.tracker.resume_point(msg.session_id, msg.next_seq),
                    net_config=self.net_config, weights_endpoint=self.weights_endpoint))
            elif isinstance(msg, TransitionBatch):
                try:
                    fresh = self.tracker.admit(msg)
                except SequenceGap:
                    continue
                if fresh is not None:
                    self.steps += fresh.size
                    self.tracker.commit(msg.session_id, fresh.end_seq)
                done = self.tracker.committed(msg.session_id)
                self.server.send(peer, Ack(session_id=msg.session_id, seq=done, trained_through=done))

    def publish(self, version: int) -> float:
        """Publishes fresh forward-actor weights; returns the wall-clock publish time."""
        assert self.hello is not None
        spec = obs_spec_of(self.hello.observation_space)
        actor = build_actor(spec, self.hello.action_space.shape[0], self.net_config)
        tensors = weights_in_dtype({k: v.detach().numpy().copy() for k, v in actor.state_dict().items()},
                                   self.weights_dtype)
        weights = Weights.create(agent="forward", version=version, tensors=tensors)
        published = time.time()
        self.publisher.publish(weights)
        return published


async def status(poller: StatusPoller) -> dict[str, object]:
    """Returns the runtime's status detail (3 s deadline; raises PeerTimeout)."""
    detail = await poller.request("status", 3.0)
    if detail is None:
        raise PeerTimeout(f"runtime control {poller.endpoint}: no status within 3 s")
    return detail


async def measure_rate(hz: float, seconds: float, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Runs load + runtime + uplink learner for ``seconds`` at ``hz``; returns the figures."""
    learner = BenchLearner(NetworkConfig().to_dict(), args.weights_dtype)
    endpoint = await learner.start()
    serve = asyncio.create_task(learner.run())
    spill = work / f"spill-{int(hz)}"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.load_threads), "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    load_cmd = [sys.executable, "-m", "simulation.drills.bench_runtime", "--load", str(seconds + 60),
                "--load-threads", str(args.load_threads)]
    if args.load_cpus:
        load_cmd += ["--load-cpus", args.load_cpus]
    load = None if args.no_load else subprocess.Popen(load_cmd, cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=open(work / f"load-{int(hz)}.log", "wb"))
    cmd = [sys.executable, "-m", "runtime", "--robot", "sim:cube", "--obs", "pixels", "--hz", str(hz),
           "--learner", endpoint, "--spill-dir", str(spill), "--control-bind", "tcp://127.0.0.1:0",
           "--seed", "0", "--priority", args.priority, "--gc", args.gc, "--log-level", "WARNING",
           "--conv-dtype", args.conv_dtype, "--projection-dtype", args.projection_dtype,
           "--threads", str(args.threads)]
    for flag, value in (("--prefetch-lead-ms", args.prefetch_lead_ms), ("--prefetch-passes", args.prefetch_passes),
                        ("--cpu-latency-us", args.cpu_latency_us)):
        if value is not None:  # otherwise the runtime's own default
            cmd += [flag, str(value)]
    if args.cpu is not None:
        cmd += ["--cpu", str(args.cpu)]
    cmd += ["--keep-heap" if args.keep_heap else "--no-keep-heap"]
    steal_before = cpu_steal_s()
    runtime = subprocess.Popen(cmd, cwd=ROOT, env={**env, "OMP_NUM_THREADS": str(args.threads)})
    swaps: list[float] = []
    control: StatusPoller | None = None
    try:
        control = StatusPoller(await _wait_control(spill, runtime))
        if load is not None and load.poll() is not None:
            raise RuntimeError(f"the learner load exited with code {load.returncode} before the measurement; "
                               f"see {work / f'load-{int(hz)}.log'}")
        started, version = time.monotonic(), 0
        while time.monotonic() - started < seconds:
            await asyncio.sleep(min(args.publish_every, max(0.0, seconds - (time.monotonic() - started))))
            if learner.hello is None or time.monotonic() - started >= seconds:
                continue
            version += 1
            published = learner.publish(version)
            swaps += [await _swap_ms(control, version, published)]
        final: dict[str, Any] = await status(control)
        steal_after = cpu_steal_s()
    finally:
        if control is not None:
            control.close()
        runtime.send_signal(signal.SIGTERM)
        runtime.wait(30)
        out = b""
        if load is not None:
            load.send_signal(signal.SIGTERM)
            try:
                out, _ = load.communicate(timeout=30)
            except subprocess.TimeoutExpired:  # mid-update on a slow CPU: its rate is lost, not the run
                logger.warning("the learner load did not stop within 30 s of SIGTERM; killed")
                load.kill()
                out, _ = load.communicate()
        serve.cancel()
    load_rate = _last_json(out.decode()).get("updates_per_s")  # None: killed before its first update
    return {"hz": hz, "jitter_p50_ms": final["jitter_p50_ms"], "jitter_p99_ms": final["jitter_p99_ms"],
            "jitter_max_ms": final["jitter_max_ms"], "overruns": final["overruns"],
            "inference_p50_ms": final["inference_p50_ms"], "inference_p99_ms": final["inference_p99_ms"],
            "prefetch_p50_ms": final.get("policy_prefetch_p50_ms"),
            "swap_to_active_ms": float(np.median(swaps)) if swaps else None, "steps": final["steps"],
            "late_causes": {k[len("late_"):]: v for k, v in final.items() if k.startswith("late_") and v},
            "cpu_steal_ms": None if steal_before is None or steal_after is None
            else round((steal_after - steal_before) * 1e3),
            "learner_updates_per_s": load_rate}


def cpu_steal_s(stat: str | None = None) -> float | None:
    """Seconds the hypervisor has kept this machine's virtual CPUs from running (all CPUs
    summed; Linux ``/proc/stat`` "steal", 10 ms resolution), from ``stat`` or the live file;
    None where there is no such figure. A rise during a measurement is time no setting of
    the runtime can win back."""
    try:
        text = stat if stat is not None else Path("/proc/stat").read_text()
        fields = text.splitlines()[0].split()
        if fields[0] != "cpu" or len(fields) < 9:
            return None
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


async def _wait_control(spill: Path, runtime: subprocess.Popen) -> str:
    deadline = time.monotonic() + 120
    while (found := read_endpoints(spill / "endpoints.json")) is None:
        if runtime.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"runtime did not start (exit {runtime.poll()})")
        await asyncio.sleep(0.1)
    return pick_endpoint(found, "control")


async def _swap_ms(control: StatusPoller, version: int, published: float) -> float:
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        detail = await control.request("status", 3.0)
        if detail is None:
            continue
        if detail.get("weights_version_forward") == version:
            return (float(detail["weights_active_at_forward"]) - published) * 1e3
        await asyncio.sleep(0.005)
    return float("inf")


def _last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return {}


def run_load(seconds: float, threads: int, cpus: tuple[int, ...] = ()) -> int:
    """The learner's load: batch-256 pixel REDQ updates until ``seconds`` pass or SIGTERM,
    on ``cpus`` when given (the learner kept off the runtime's core); prints
    ``{"updates_per_s": ...}``."""
    import torch

    from learner.agent import AgentConfig, RedqAgent
    from learner.bench import ACTION_DIM, filled_replay
    from learner.placement import pin_process

    pin_process(cpus)  # as `resetfree-learner --cpus` pins the real learner

    torch.set_num_threads(threads)
    spec = {"wrist": ((3, 84, 84), "uint8"), "third_person": ((3, 84, 84), "uint8"), "proprio": ((4,), "float32")}
    rng = np.random.default_rng(0)
    buf = filled_replay(spec, 1000, rng)
    agent = RedqAgent(spec, ACTION_DIM, AgentConfig(), NetworkConfig(), "cpu")
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    start, updates = time.perf_counter(), 0
    while not stop["now"] and time.perf_counter() - start < seconds:
        agent.update(buf.sample(256, rng), torch.randn(256), bc_weight=1.0, step=updates + 1)
        updates += 1
    print(json.dumps({"updates_per_s": updates / (time.perf_counter() - start)}))
    return 0


def main(argv: list[str]) -> int:
    """Runs the benchmark; prints one JSON object as the last line; returns 0."""
    p = argparse.ArgumentParser(prog="resetfree-bench runtime", description=plain(__doc__.splitlines()[0]))
    p.add_argument("--seconds", type=float, default=60.0, help="seconds per rate")
    p.add_argument("--quick", action="store_true", help="10 s per rate")
    p.add_argument("--rates", default="10,50", help="comma-separated control rates (Hz)")
    p.add_argument("--publish-every", type=float, default=3.0, help="seconds between weight publishes")
    p.add_argument("--load-threads", type=int, default=2, help="torch threads of the learner load")
    p.add_argument("--no-load", action="store_true", help="idle machine (no learner load)")
    p.add_argument("--load-cpus", default="", help="CPUs the learner load may use, e.g. '0' (default: all); "
                   "with --cpu, keeps the learner off the runtime's core")
    p.add_argument("--cpu", type=int, default=None, help="runtime --cpu")
    p.add_argument("--priority", default="fifo", help="runtime --priority (none, nice, fifo)")
    p.add_argument("--gc", default="freeze", help="runtime --gc (default, freeze, manual)")
    p.add_argument("--weights-dtype", default="float16", help="published weights dtype (the learner's "
                   "service.weights_dtype: float16, float32)")
    p.add_argument("--conv-dtype", default="auto", help="runtime --conv-dtype (auto, float32, bfloat16)")
    p.add_argument("--projection-dtype", default="float32", help="runtime --projection-dtype (float32, float16)")
    p.add_argument("--prefetch-lead-ms", type=float, default=None, help="runtime --prefetch-lead-ms (0: off; "
                   "default: its own)")
    p.add_argument("--prefetch-passes", type=int, default=None, help="runtime --prefetch-passes (default: its own)")
    p.add_argument("--threads", type=int, default=1, help="runtime --threads (torch threads for inference)")
    p.add_argument("--cpu-latency-us", default=None, help="runtime --cpu-latency-us (µs or off; default: its own)")
    p.add_argument("--keep-heap", action=argparse.BooleanOptionalAction, default=True,
                   help="runtime --keep-heap / --no-keep-heap")
    p.add_argument("--load", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        parse_cpus(args.load_cpus)
    except ValueError as e:
        p.error(str(e))
    if args.load is not None:
        return run_load(args.load, args.load_threads, parse_cpus(args.load_cpus))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    seconds = 10.0 if args.quick else args.seconds
    result: dict[str, Any] = {"cpu": os.cpu_count(), "levers": {
        "cpu": args.cpu, "load_cpus": args.load_cpus or "all", "load_threads": args.load_threads, "priority": args.priority, "gc": args.gc, "conv_dtype": args.conv_dtype, "projection_dtype": args.projection_dtype, "weights_dtype": args.weights_dtype,
        "prefetch_lead_ms": args.prefetch_lead_ms,
        "prefetch_passes": args.prefetch_passes, "threads": args.threads, "cpu_latency_us": args.cpu_latency_us,
        "keep_heap": args.keep_heap}}
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as work:
        for hz in (float(r) for r in args.rates.split(",")):
            figures = asyncio.run(measure_rate(hz, seconds, args, Path(work)))
            logger.info("%g Hz: %s", hz, figures)
            result[f"{int(hz)}hz"] = figures
    rates = [v["learner_updates_per_s"] for k, v in result.items() if k.endswith("hz")
             and v["learner_updates_per_s"] is not None]
    result["learner_updates_per_s"] = float(np.mean(rates)) if rates else None
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
