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
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

from protocol.codec import encode
from protocol.errors import ProtocolError
from protocol.messages import Command, Heartbeat, Weights
from protocol.session import SessionSettings
from simulation.app.processes import (
    ChildProcess, ProcessError, StatusPoller, count_tracebacks, pick_endpoint, python_module, status_int,
    wait_for_endpoints,
)
from simulation.cli import doc_help
from simulation.drills.hostile_peers import (
    NET_CONFIG, POINT_ACT, POINT_DIM, FakeLearner, HostileGenerator, LegitRuntime, write_point_demos,
)
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

SHARES = {"learner_uplink": 0.5, "learner_control": 0.15, "runtime_control": 0.15, "runtime_weights": 0.2}
"""How the hostile messages are split between the channels."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class HostileConfig:
    """What the fuzz sends and how long it may take."""

    messages: int = 100_000
    """Hostile messages over all channels (split by :data:`SHARES`)."""
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


@dataclasses.dataclass
class Channel:
    """One channel's count: what was sent to it and what its process says it did with it."""

    sent: int = 0
    hostile: int = 0
    received: int = 0
    accepted: int = 0
    rejected: int = 0
    by_reason: dict[str, int] = dataclasses.field(default_factory=dict)
    by_kind: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def closes(self) -> bool:
        """Whether every message sent was received and classified."""
        return self.sent == self.received == self.accepted + self.rejected


@dataclasses.dataclass
class HostileResult:
    """The fuzz's figures (the JSON line)."""

    sent: int = 0
    channels: dict[str, Channel] = dataclasses.field(default_factory=dict)
    legit_steps: int = 0
    legit_acked: int = 0
    runtime_acked_seq: int = 0
    runtime_steps: int = 0
    runtime_state: str = ""
    exits: dict[str, int | None] = dataclasses.field(default_factory=dict)
    alive_at_end: dict[str, bool] = dataclasses.field(default_factory=dict)
    tracebacks: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)
    send_s: float = 0.0
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Returns whether every target holds."""
        return (all(c.closes for c in self.channels.values()) and len(self.channels) == len(SHARES)
                and all(self.alive_at_end.values()) and self.exits and all(v == 0 for v in self.exits.values())
                and self.tracebacks == 0 and self.legit_steps > 0 and self.legit_acked == self.legit_steps
                and self.runtime_acked_seq > 0 and self.runtime_state == "running")

    def to_json(self) -> dict[str, Any]:
        """Returns the result as JSON builtins, with ``ok`` and each channel's ``closes``."""
        out = dataclasses.asdict(self)
        for name, channel in self.channels.items():
            out["channels"][name]["closes"] = channel.closes
        return {**out, "ok": self.ok}


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
        self.good: dict[str, np.ndarray] = {}
        self.fake_task: asyncio.Task[None] | None = None
        self._kept: list[zmq.asyncio.Socket] = []
        self.weights_version = 1

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

    # ---------------------------------------------------------------- senders
    async def _dealer(self, endpoint: str) -> zmq.asyncio.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(endpoint)
        return sock

    def keep(self, socks: list[zmq.asyncio.Socket]) -> None:
        """Keeps a hostile socket open until the end: a closed socket drops what it still
        queues (the receiver reads at its own pace), and "sent" must mean delivered."""
        self._kept.extend(socks)

    def _count(self, channel: str, kind: str) -> None:
        c = self.result.channels[channel]
        c.hostile += 1
        c.by_kind[kind] = c.by_kind.get(kind, 0) + 1

    async def learner_uplink(self, count: int) -> None:
        """Half from strangers, half from session peers, on the learner's uplink at once."""
        endpoint = pick_endpoint(self.learner_eps, "uplink")
        await asyncio.gather(self._strangers(endpoint, count - count // 2), self._sessions(endpoint, count // 2))

    async def _strangers(self, endpoint: str, count: int) -> None:
        socks = [await self._dealer(endpoint) for _ in range(4)]
        try:
            for i in range(count):
                kind, frames = self.gen.stranger(i)
                await socks[i % len(socks)].send_multipart(frames)
                self._count("learner_uplink", kind)
                if i % 256 == 0:
                    await asyncio.sleep(0)
            await asyncio.sleep(0.5)  # let ZeroMQ push everything out before the sockets close
        finally:
            self.keep(socks)

    async def _sessions(self, endpoint: str, count: int, per_peer: int = 500) -> None:
        """Peers that say hello (accepted), then send batches whose values may not be trained
        on at the right seqs (refused, acked past) and a heartbeat every tenth (accepted)."""
        sent = 0
        while sent < count:
            sock = await self._dealer(endpoint)
            try:
                sid = self.gen.fresh_session("s")
                await sock.send_multipart(encode(self.gen.hello_for(sid, 0, 0)))
                self._count("learner_uplink", "session_hello")
                sent += 1
                seq = 0
                for j in range(min(per_peer, count - sent)):
                    if j % 10 == 9:
                        kind, frames = "session_heartbeat", encode(
                            Heartbeat(session_id=sid, role="runtime", sent_at=time.time(), stats=None))
                    else:
                        kind, frames = self.gen.poisoned(sid, seq, j)
                        seq += 4
                    await sock.send_multipart(frames)
                    self._count("learner_uplink", kind)
                    sent += 1
                    if j % 128 == 0:
                        await asyncio.sleep(0)
                await asyncio.sleep(0.2)
            finally:
                self.keep([sock])

    async def control(self, channel: str, endpoint: str, count: int) -> None:
        socks = [await self._dealer(endpoint) for _ in range(2)]
        try:
            for i in range(count):
                kind, frames = self.gen.control(i)
                await socks[i % 2].send_multipart(frames)
                self._count(channel, kind)
                if i % 256 == 0:
                    await asyncio.sleep(0)
            await asyncio.sleep(0.5)
        finally:
            self.keep(socks)

    async def runtime_weights(self, count: int) -> None:
        version = self.weights_version
        for i in range(count):
            if i % 50 == 49:
                version += 1
            kind, frames = self.gen.weights(i, self.good, version)
            await self.fake.publish(frames)
            self._count("runtime_weights", kind)
            if i % 64 == 0:
                await asyncio.sleep(0.001)  # the runtime reads at its pace; the PUB queue holds the rest
        self.weights_version = version

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
        self.good = good = {k: v.detach().numpy().copy() for k, v in actor.state_dict().items()}
        self.weights_version = 1
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
                self.learner_uplink(counts["learner_uplink"]),
                self.control("learner_control", pick_endpoint(self.learner_eps, "control"), counts["learner_control"]),
                self.control("runtime_control", self.runtime_control, counts["runtime_control"]),
                self.runtime_weights(counts["runtime_weights"]))
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
            self.read_counts(ln, rt, base_l, base_r)
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

    def read_counts(self, ln: dict, rt: dict, base_l: dict, base_r: dict) -> None:
        c = self.result.channels

        def delta(now: dict, base: dict, key: str) -> int:
            return status_int(now, key) - status_int(base, key)

        up = c["learner_uplink"]
        up.received = delta(ln, base_l, "uplink_received")
        up.accepted = delta(ln, base_l, "uplink_accepted")
        up.rejected = delta(ln, base_l, "uplink_rejected")
        up.by_reason = {k: delta(ln, base_l, k) for k in ("uplink_malformed", "uplink_stale", "refused_sessions",
                                                          "refused_batches", "gaps", "journal_errors",
                                                          "handler_errors", "duplicates_dropped")}
        for name, now, base in (("learner_control", ln, base_l), ("runtime_control", rt, base_r)):
            ch = c[name]
            ch.accepted = delta(now, base, "control_accepted")
            ch.rejected = delta(now, base, "control_malformed")
            ch.received = ch.accepted + ch.rejected
            ch.by_reason = {"malformed": ch.rejected, "failed_replies": delta(now, base, "failed_replies")}
        w = c["runtime_weights"]
        w.received = delta(rt, base_r, "weights_received")
        w.accepted = delta(rt, base_r, "weights_accepted")
        reasons = {"malformed": delta(rt, base_r, "weights_malformed"),
                   "checksum_failures": delta(rt, base_r, "weights_checksum_failures"),
                   "policy_rejected": delta(rt, base_r, "weights_policy_rejected"),
                   "superseded": delta(rt, base_r, "weights_superseded"),
                   "stale": delta(rt, base_r, "weights_stale")}
        w.by_reason = reasons
        w.rejected = sum(reasons.values())

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
