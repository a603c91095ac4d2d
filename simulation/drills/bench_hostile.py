"""``resetfree-bench hostile``: issue 17's fuzz — hostile messages on the control, uplink and
weights channels of a real learner and a real runtime, every one of them counted.

Two set-ups run side by side, each around a real OS process:

* **learner** (``python -m learner``, a small state-mode config on a synthetic ``point``
  task's demos): hostile DEALERs on its uplink — strangers (random bytes, truncated and
  oversize frames, wrong types and fields, seqs of 2^63-1, ``version: 1.0``, booleans for
  ints, hellos declaring absurd losses, fresh valid hellos) and peers that said hello and
  then send batches with NaN/inf observations, NaN or 1e30 actions, inf timestamps
  (refused), duplicates and heartbeats (accepted) — and on its control ROUTER (malformed
  commands, ``version: 1.0`` e-stops, valid ``status`` requests). A **legitimate runtime**
  (a scripted protocol client) streams valid batches beside them and must be acked
  throughout.
* **runtime** (``python -m runtime --robot sim:TASK``, state mode): the bench plays its
  learner (welcomes it, acks its batches, publishes its weights) and puts hostile blobs on
  the weights channel — random bytes, truncated blobs, a missing out-of-band frame, an
  unknown agent, a bad checksum, ``version: 1.0``, a status instead of weights, a checksummed
  blob of the wrong layout or with NaN tensors — between good blobs; its control ROUTER
  gets the same hostile commands as the learner's.

Every channel's count must close: the messages the process *received* (its status) equal
the messages sent to it (hostile + legitimate), and each was accepted or rejected, by
reason. Both processes must stay alive (SIGTERM → exit 0, no traceback in the logs), the
legitimate runtime must be acked for every step, the runtime's loop must keep running (not
e-stopped) and acked by its learner.

Last line JSON: ``sent``, per-channel ``channels`` (sent, received, accepted, rejected, by
reason), ``legit_steps`` / ``legit_acked``, ``runtime_acked_seq``, ``exits``,
``tracebacks``, ``ok``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import shutil
import signal
import tempfile
import time
from pathlib import Path

import zmq.asyncio

from protocol.codec import encode
from protocol.errors import ProtocolError
from protocol.messages import Command, Weights
from protocol.session import SessionSettings
from simulation.app.processes import (
    ChildProcess, ProcessError, StatusPoller, count_tracebacks, pick_endpoint, python_module, status_int,
    wait_for_endpoints,
)
from simulation.cli import doc_help
from simulation.drills.hostile_peers import (
    NET_CONFIG, POINT_ACT, POINT_DIM, FakeLearner, HostileGenerator, LegitRuntime, write_point_demos,
)
from simulation.drills.hostile_report import SHARES, Channel, HostileResult
from simulation.drills.hostile_senders import HostileSenders
from simulation.drills.malformed import state_spaces

logger = logging.getLogger(__name__)


LEARNER_SETS: tuple[str, ...] = (
    "network.hidden_dim=16", "network.feature_dim=8", "network.num_critics=2", "agent.batch_size=8",
    "replay.batch_size=8", "replay.demo_per_batch=2", "replay.capacity=20000", "vice.batch_size=8",
    "vice.hidden_dim=8", "medal.batch_size=8", "medal.hidden_dim=8", "schedule.seed_frames=64",
    "schedule.goal_frames=2", "service.publish_every=200", "service.checkpoint_every=100000",
    "service.journal_fsync=false", "service.progress_every_s=30.0", "agent.encoder_bf16=false",
)
"""A learner small enough to keep up with the legitimate stream on a busy CPU."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class HostileConfig:
    """What the fuzz sends and how long it may take."""

    messages: int = 100_000
    """Hostile messages over all channels (split by :data:`simulation.drills.hostile_report.SHARES`)."""
    seed: int = 0
    """Seed of every generated message."""
    task: str = "door"
    """The runtime's simulated task (state mode)."""
    hz: float = 20.0
    """The runtime's control rate."""
    work_dir: Path | None = None
    """Logs, demos, run and spill dirs (None: a temporary directory, removed after)."""
    start_timeout_s: float = 180.0
    """Seconds a process has to come up."""
    settle_timeout_s: float = 300.0
    """Seconds the processes have, after the last send, to count every message."""
    stop_timeout_s: float = 60.0
    """Seconds a process has to exit after SIGTERM."""

    def __post_init__(self) -> None:
        if not isinstance(self.messages, int) or isinstance(self.messages, bool) or self.messages < 100:
            raise ValueError(f"HostileConfig.messages must be an int >= 100, got {self.messages!r}")
        for name in ("hz", "start_timeout_s", "settle_timeout_s", "stop_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"HostileConfig.{name} must be > 0, got {getattr(self, name)!r}")


# ============================================================================ the run
class HostileBench:
    """One fuzz run: ``await HostileBench(config, work_dir).run()``."""

    def __init__(self, config: HostileConfig, work: Path) -> None:
        self.config, self.work = config, work
        self.result = HostileResult()
        self.learner = ChildProcess("learner", [], work / "logs" / "learner.log")
        self.runtime = ChildProcess("runtime", [], work / "logs" / "runtime.log")
        self.fake = FakeLearner()
        self.ctx = zmq.asyncio.Context()
        self.learner_eps: dict[str, str] = {}
        self.runtime_control = ""
        self.learner_status: StatusPoller | None = None
        self.runtime_status: StatusPoller | None = None
        self.polls = {"learner": 0, "runtime": 0}
        """Status requests the bench itself sent to each control socket (legitimate traffic)."""
        spaces = state_spaces(POINT_DIM, POINT_ACT)
        self.gen = HostileGenerator(spaces=spaces, config_hash=SessionSettings().config_hash(), seed=config.seed)
        self.legit: LegitRuntime | None = None
        self.fake_task: asyncio.Task[None] | None = None
        self.senders = HostileSenders(self.ctx, self.gen, self.fake, self.result.channels)

    # ---------------------------------------------------------------- processes
    async def start(self) -> None:
        demos = await asyncio.to_thread(write_point_demos, self.work / "demos")
        run_dir = self.work / "run"
        argv = [*python_module("learner"), "--demos", str(demos), "--run-dir", str(run_dir),
                "--bind", "tcp://127.0.0.1:0", "--weights-bind", "tcp://127.0.0.1:0",
                "--control-bind", "tcp://127.0.0.1:0", "--mode", "realtime", "--device", "cpu", "--threads", "1",
                "--seed", str(self.config.seed), "--log-level", "INFO"]
        for item in LEARNER_SETS:
            argv += ["--set", item]
        self.learner.start(argv)
        await self.fake.start()
        self.fake_task = asyncio.create_task(self.fake.run())
        spill = self.work / "spill"
        self.runtime.start([*python_module("runtime"), "--robot", f"sim:{self.config.task}", "--obs", "state",
                            "--learner", self.fake.uplink, "--hz", f"{self.config.hz:g}", "--spill-dir", str(spill),
                            "--control-bind", "tcp://127.0.0.1:0", "--seed", str(self.config.seed),
                            "--priority", "none", "--cpu-latency-us", "off", "--log-level", "INFO"])
        self.learner_eps = await wait_for_endpoints(run_dir / "endpoints.json", self.learner,
                                                    self.config.start_timeout_s)
        found = await wait_for_endpoints(spill / "endpoints.json", self.runtime, self.config.start_timeout_s)
        self.runtime_control = pick_endpoint(found, "control")
        self.learner_status = StatusPoller(pick_endpoint(self.learner_eps, "control"))
        self.runtime_status = StatusPoller(self.runtime_control)

    async def status(self, which: str, timeout: float = 5.0) -> dict[str, object]:
        poller = self.learner_status if which == "learner" else self.runtime_status
        child = self.learner if which == "learner" else self.runtime
        assert poller is not None
        deadline = time.monotonic() + self.config.start_timeout_s
        while time.monotonic() < deadline:
            if not child.running:
                raise ProcessError(f"{which} exited ({child.poll()}); see {child.log_path}:\n{child.tail()}")
            self.polls[which] += 1
            detail = await poller.poll(timeout=timeout)
            if detail is not None:
                return detail
        raise ProcessError(f"{which} does not answer status")

    # ---------------------------------------------------------------- phases
    async def warm_up(self) -> None:
        """Waits for both processes, says the legitimate hello, and connects the runtime's
        weights subscriber (a good blob until it is active)."""
        await self.status("learner")
        await self.status("runtime")
        from learner.networks import build_actor
        from simulation.tasks import task_class

        info = task_class(self.config.task).info
        actor = build_actor({"state": ((info.state_dim,), "float32")}, info.action_dim, NET_CONFIG)
        self.senders.good = good = {k: v.detach().numpy().copy() for k, v in actor.state_dict().items()}
        self.senders.weights_version = 1
        detail = await self.status("runtime")
        deadline = time.monotonic() + self.config.start_timeout_s
        while status_int(detail, "weights_version_forward") != 1:
            if time.monotonic() > deadline:
                raise ProcessError("the runtime never activated the bench's weights")
            await self.fake.publish([bytes(f) for f in encode(Weights.create(agent="forward", version=1,
                                                                             tensors=good))])
            await asyncio.sleep(0.5)
            detail = await self.status("runtime")
        await asyncio.sleep(1.0)  # extra copies of that blob arrive before the baseline
        # the legitimate runtime says hello last: a peer silent for 5 s is forgotten
        self.legit = LegitRuntime(self.ctx, pick_endpoint(self.learner_eps, "uplink"),
                                  self.gen.hello_for("legit", 0, 0))
        welcome = await self.legit.say_hello(30.0)
        if not welcome.accepted:
            raise ProcessError(f"the learner refused the legitimate runtime: {welcome.reason}")

    async def run(self) -> HostileResult:
        start = time.monotonic()
        r = self.result
        stop_legit = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        try:
            await self.start()
            await self.warm_up()
            assert self.legit is not None
            tasks.append(asyncio.create_task(self.legit.read()))
            for name in SHARES:
                r.channels[name] = Channel()
            base_l, base_r = await self.status("learner"), await self.status("runtime")
            polls0 = dict(self.polls)
            legit0 = self.legit.sent
            streamer = asyncio.create_task(self.legit.stream(stop_legit))
            total = self.config.messages
            counts = {name: int(total * share) for name, share in SHARES.items()}
            counts["learner_uplink"] += total - sum(counts.values())
            sent_at = time.monotonic()
            await asyncio.gather(
                self.senders.learner_uplink(pick_endpoint(self.learner_eps, "uplink"), counts["learner_uplink"]),
                self.senders.control("learner_control", pick_endpoint(self.learner_eps, "control"),
                                     counts["learner_control"]),
                self.senders.control("runtime_control", self.runtime_control, counts["runtime_control"]),
                self.senders.runtime_weights(counts["runtime_weights"]))
            r.send_s = round(time.monotonic() - sent_at, 1)
            await asyncio.sleep(1.0)  # the legitimate stream goes on after the attack
            stop_legit.set()
            await streamer
            await self.settle(base_l, base_r, polls0, legit0)
            r.sent = sum(c.hostile for c in r.channels.values())
        finally:
            stop_legit.set()
            for task in tasks:
                task.cancel()
            await self.stop()
            if self.fake_task is not None:
                self.fake_task.cancel()
            self.fake.close()
            if self.legit is not None:
                self.legit.close()
            for poller in (self.learner_status, self.runtime_status):
                if poller is not None:
                    poller.close()
            self.ctx.destroy(linger=0)
        r.wall_s = round(time.monotonic() - start, 1)
        return r

    async def settle(self, base_l: dict, base_r: dict, polls0: dict, legit0: int) -> None:
        """Waits until every channel's received count reaches what was sent, then reads the counts."""
        r = self.result
        assert self.legit is not None
        r.runtime_state = await self.runtime_status_state()  # not e-stopped by any hostile command
        deadline = time.monotonic() + self.config.settle_timeout_s
        while True:
            ln, rt = await self.status("learner"), await self.status("runtime")
            # the status requests themselves are legitimate control traffic (this one included)
            c = r.channels
            c["learner_uplink"].sent = c["learner_uplink"].hostile + self.legit.sent - legit0
            c["learner_control"].sent = c["learner_control"].hostile + self.polls["learner"] - polls0["learner"]
            c["runtime_control"].sent = c["runtime_control"].hostile + self.polls["runtime"] - polls0["runtime"]
            c["runtime_weights"].sent = c["runtime_weights"].hostile
            r.read_counts(ln, rt, base_l, base_r)
            done = all(ch.closes for ch in c.values()) and self.legit.acked >= self.legit.next_seq
            if done or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        r.legit_steps, r.legit_acked = self.legit.next_seq, self.legit.acked
        r.runtime_acked_seq, r.runtime_steps = status_int(rt, "acked_seq"), status_int(rt, "steps")
        if self.legit.refused:
            r.notes.append(f"the legitimate runtime was refused: {self.legit.refused[:3]}")
        r.alive_at_end = {"learner": self.learner.running, "runtime": self.runtime.running}

    async def runtime_status_state(self) -> str:
        """Returns the runtime's state word (running / holding / estopped)."""
        assert self.runtime_status is not None
        self.polls["runtime"] += 1
        try:
            status = await self.runtime_status._client.request(
                Command(kind="status", agent=None, request_id=1 << 40), timeout=5.0)
        except ProtocolError:
            return ""
        return status.state

    async def stop(self) -> None:
        r = self.result
        for child in (self.runtime, self.learner):
            r.alive_at_end.setdefault(child.name, child.running)
            if child.starts:
                r.exits[child.name] = await child.stop(self.config.stop_timeout_s, signal.SIGTERM)
        r.tracebacks = count_tracebacks([self.learner.log_path, self.runtime.log_path])


async def run_hostile(config: HostileConfig) -> HostileResult:
    """Runs the fuzz in ``config.work_dir`` (or a temporary directory); returns its counts.

    Blocks for the run. Raises ProcessError when a process does not come up.
    """
    if config.work_dir is not None:
        config.work_dir.mkdir(parents=True, exist_ok=True)
        return await HostileBench(config, config.work_dir).run()
    work = Path(tempfile.mkdtemp(prefix="resetfree-hostile-"))
    try:
        return await HostileBench(config, work).run()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="resetfree-bench hostile", description=doc_help(__doc__)[0])
    p.add_argument("--messages", type=int, default=100_000, help="hostile messages over all channels (default 100000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated messages")
    p.add_argument("--task", default="door", help="the runtime's simulated task, state mode (default door)")
    p.add_argument("--hz", type=float, default=20.0, help="the runtime's control rate (default 20)")
    p.add_argument("--work-dir", type=Path, default=None, help="keep logs and run dirs here (default: a temporary "
                   "directory, removed)")
    return p


def main(argv: list[str]) -> int:
    """Runs the fuzz; prints one JSON object as the last line. Returns 0 when every target holds."""
    args = _parser().parse_args(argv)
    config = HostileConfig(messages=args.messages, seed=args.seed, task=args.task, hz=args.hz, work_dir=args.work_dir)
    result = asyncio.run(run_hostile(config))
    for name, channel in result.channels.items():
        print(f"{name}: sent {channel.sent} ({channel.hostile} hostile), received {channel.received}, "
              f"accepted {channel.accepted}, rejected {channel.rejected} {channel.by_reason}")
    for note in result.notes:
        print(f"note: {note}")
    print(json.dumps(result.to_json()))
    return 0 if result.ok else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main(__import__("sys").argv[1:]))
