"""``resetfree-bench faults``: the fault drill (issue #7).

A learner (state mode, a small network via ``--set``) and a simulated runtime (realtime
pacing) run as OS processes; the runtime's uplink goes through a :class:`PartitionProxy`.
During the run the drill SIGKILLs the learner ``--kills`` times (restarting it each time with
``--resume RUN_DIR`` on the same ports), cuts the runtime off for ``--partition-s`` seconds,
and sends ``--malformed`` frames to every socket that can receive from a stranger: the
learner's uplink ROUTER (strangers, and a session that declared its spaces and then sends
wrong shapes/dtypes), the learner's control ROUTER and the runtime's control ROUTER. (The
learner's weights PUB and the runtime's uplink DEALER and weights SUB cannot: PUB refuses
incoming data and the other two connect out.) Then it pauses the runtime, lets the
learner acknowledge everything, reads both sides' status and stops both with SIGTERM.

Last line JSON: ``transitions_generated`` (the runtime's steps), ``transitions_ingested``
(the learner's unique committed steps), ``duplicates`` (steps the learner ingested more than
once: its replay count ``env_steps`` above its unique count), ``loop_overruns``, ``crashes``
(unexpected exits, non-zero exit codes after SIGTERM, tracebacks in the logs),
``malformed_rejected`` (counted by the receivers), plus details. Targets: generated ==
ingested, 0 duplicates, 0 overruns, 0 crashes, every malformed frame rejected.

The drill's settings, demos and the processes' command lines are
:mod:`simulation.drills.fault_config`, its counts :mod:`simulation.drills.fault_report`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from protocol.codec import Spaces
from protocol.messages import Command
from protocol.session import SessionSettings
from protocol.transport import ControlClient, ControlClientConfig
from simulation.cli import doc_help
from simulation.drills.fault_config import SMALL_LEARNER, DrillConfig, learner_argv, runtime_argv, write_demos
from simulation.drills.fault_report import DrillResult, generated_steps
from simulation.drills.journal_audit import audit_journal
from simulation.drills.malformed import MalformedGenerator, burst_plan, send_malformed
from simulation.drills.partition_proxy import PartitionProxy, ProxyConfig
from simulation.app.processes import (
    ChildProcess, FaultDrillError, StatusPoller, count_tracebacks, pick_endpoint, status_int, tcp_port,
    wait_for_endpoints,
)

logger = logging.getLogger(__name__)

class FaultDrill:
    """One drill run: ``await FaultDrill(config, work_dir).run()``.

    Size: one responsibility, a run against two processes (start, watch, fault, drain, stop),
    whose every phase shares the children, their endpoints and pollers and the crash/restart
    accounting; its settings and command lines (:mod:`simulation.drills.fault_config`), its
    counts (:mod:`simulation.drills.fault_report`) and its frames (:mod:`simulation.drills.malformed`)
    already live apart.
    """

    def __init__(self, config: DrillConfig, work_dir: Path) -> None:
        self.config = config
        self.work = work_dir
        self.run_dir = work_dir / "run"
        self.spill_dir = work_dir / "spill"
        self.rng = np.random.default_rng(config.seed)
        self.result = DrillResult()
        self.learner = ChildProcess("learner", [], work_dir / "logs" / "learner.log")
        self.runtime = ChildProcess("runtime", [], work_dir / "logs" / "runtime.log")
        self.proxy: PartitionProxy | None = None
        self.learner_endpoints: dict[str, str] = {}
        self.runtime_control = ""
        self.learner_status: StatusPoller | None = None
        self.runtime_status: StatusPoller | None = None
        self.spaces: Spaces | None = None
        self._malformed_base = 0
        """malformed_rejected of the learner incarnations before the current one."""

    # ---------------------------------------------------------------- set-up
    def prepare_demos(self) -> Path:
        """Writes forward and backward expert demos; returns their directory (blocks)."""
        out = self.work / "demos"
        self.spaces = write_demos(self.config, out)
        return out

    async def start_learner(self, demos: Path, *, resume: bool) -> None:
        """Starts (or restarts) the learner and waits until it answers status."""
        (self.run_dir / "endpoints.json").unlink(missing_ok=True)
        self.learner.start(learner_argv(self.config, self.run_dir, demos, self.learner_endpoints, resume=resume))
        found = await wait_for_endpoints(self.run_dir / "endpoints.json", self.learner, self.config.start_timeout_s)
        if not resume:
            self.learner_endpoints = found
            self.learner_status = StatusPoller(pick_endpoint(found, "control"))
        await self._await_status(self.learner_status, self.learner)

    async def start_runtime(self, uplink: str) -> None:
        """Starts the runtime against ``uplink`` (the proxy) and waits until it answers status."""
        (self.spill_dir / "endpoints.json").unlink(missing_ok=True)
        self.runtime.start(runtime_argv(self.config, uplink, self.spill_dir))
        found = await wait_for_endpoints(self.spill_dir / "endpoints.json", self.runtime, self.config.start_timeout_s)
        self.runtime_control = pick_endpoint(found, "control")
        self.runtime_status = StatusPoller(self.runtime_control)
        await self._await_status(self.runtime_status, self.runtime)

    async def _await_status(self, poller: StatusPoller | None, child: ChildProcess) -> dict[str, object]:
        deadline = time.monotonic() + self.config.start_timeout_s
        while poller is not None and time.monotonic() < deadline:
            if not child.running:
                raise FaultDrillError(f"{child.name} exited ({child.poll()}); see {child.log_path}")
            detail = await poller.poll(timeout=2.0)
            if detail is not None:
                return detail
        raise FaultDrillError(f"{child.name} did not answer status within {self.config.start_timeout_s:.0f} s")

    # ---------------------------------------------------------------- watching
    async def watch(self, seconds: float, demos: Path) -> None:
        """Polls both sides for ``seconds``; counts and restarts an unexpectedly exited child."""
        deadline = time.monotonic() + seconds
        while True:
            await self.check_children(demos)
            await self.poll_both()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(0.5, left))

    async def poll_both(self) -> None:
        """Reads both statuses (when they answer) into the running figures."""
        if self.runtime_status is not None and self.runtime.running:
            detail = await self.runtime_status.poll(timeout=1.0)
            if detail is not None:
                self.result.loop_overruns = max(self.result.loop_overruns, status_int(detail, "overruns"))
        if self.learner_status is not None and self.learner.running:
            await self.learner_status.poll(timeout=1.0)

    async def check_children(self, demos: Path) -> None:
        """Counts a child that exited without being asked as a crash and restarts it."""
        for child in (self.learner, self.runtime):
            if child.crashed():
                note = f"{child.name} exited unexpectedly with {child.poll()}; see {child.log_path}"
                logger.error("drill: %s", note)
                self.result.crashes += 1
                self.result.crash_notes.append(note)
                if child is self.learner:
                    self._close_incarnation()
                    await self.start_learner(demos, resume=True)
                else:
                    raise FaultDrillError(note)

    def _close_incarnation(self) -> None:
        """Banks the current learner incarnation's malformed count (counters restart with the process)."""
        if self.learner_status is not None:
            self._malformed_base += status_int(self.learner_status.last, "malformed_rejected")
            self.learner_status.last = {}

    # ---------------------------------------------------------------- faults
    async def kill_learner(self, demos: Path) -> None:
        """SIGKILLs the learner at once and restarts it with ``--resume`` on the same ports."""
        await self.poll_both()
        self._close_incarnation()
        self.learner.signal(signal.SIGKILL)
        code = await self.learner.wait(10.0)
        self.result.learner_kills += 1
        logger.warning("drill: learner SIGKILLed (exit %s), kill %d", code, self.result.learner_kills)
        await asyncio.sleep(float(self.rng.uniform(0.2, 1.5)))
        await self.start_learner(demos, resume=True)
        self.result.learner_restarts += 1

    async def partition(self, seconds: float, demos: Path) -> None:
        """Cuts the runtime off the learner for ``seconds``, then heals."""
        if self.proxy is None or seconds <= 0:
            return
        self.proxy.partition()
        try:
            await self.watch(seconds, demos)
        finally:
            self.proxy.heal()
        self.result.partition_s += seconds

    async def malformed_burst(self, count: int) -> None:
        """Sends ``count`` malformed frames: half to the learner's uplink (a quarter from strangers,
        a quarter from a session that said hello first), a quarter to each control socket.

        Waits (bounded) until the learner's count shows them, so a kill cannot lose them.
        """
        if count <= 0 or self.spaces is None:
            return
        gen = MalformedGenerator(spaces=self.spaces, session_id=f"drill-{int(self.rng.integers(1 << 30))}",
                                 seed=int(self.rng.integers(1 << 30)))
        plan = burst_plan(gen, count, learner_uplink=pick_endpoint(self.learner_endpoints, "uplink"),
                          learner_control=pick_endpoint(self.learner_endpoints, "control"),
                          runtime_control=self.runtime_control, config_hash=SessionSettings().config_hash())
        before = self._learner_malformed()
        to_learner = 0
        for part in plan:
            if not part.frames:
                continue
            report = await send_malformed(part.endpoint, part.frames, hello=part.hello, peers=part.peers)
            by_socket = self.result.malformed_sent_by_socket
            by_socket[part.socket] = by_socket.get(part.socket, 0) + report.sent
            self.result.malformed_sent += report.sent
            to_learner += report.sent if part.socket.startswith("learner") else 0
        # Wait until the learner's count reaches what it was sent or stops moving (it may not count all).
        deadline, last, still = time.monotonic() + 10.0, -1, 0
        while self._learner_malformed() - before < to_learner and time.monotonic() < deadline and still < 4:
            await asyncio.sleep(0.25)
            await self.poll_both()
            now = self._learner_malformed()
            still, last = (still + 1 if now == last else 0), now
        logger.info("drill: %d malformed frames sent, the learner counted %d of its %d", count,
                    self._learner_malformed() - before, to_learner)

    def _learner_malformed(self) -> int:
        return self._malformed_base + status_int(self.learner_status.last if self.learner_status else None,
                                           "malformed_rejected")

    # ---------------------------------------------------------------- the end
    async def drain(self) -> None:
        """Pauses the runtime, waits until the learner acknowledged every step, reads the counts."""
        assert self.runtime_status is not None and self.learner_status is not None
        client = ControlClient(ControlClientConfig(endpoint=self.runtime_control))
        try:
            await client.request(Command(kind="pause", agent=None, request_id=1 << 20), timeout=5.0)
        finally:
            client.close()
        deadline = time.monotonic() + self.config.drain_timeout_s
        steady = 0
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            rt = await self.runtime_status.poll(timeout=2.0)
            ln = await self.learner_status.poll(timeout=2.0)
            if rt is None or ln is None:
                continue
            done = generated_steps(rt) == status_int(rt, "acked_seq") == status_int(ln, "transitions_ingested")
            steady = steady + 1 if done and status_int(rt, "queue_depth") == 0 else 0
            if steady >= 3:
                break
        else:
            logger.error("drill: not drained within %.0f s", self.config.drain_timeout_s)
        self.read_counts()

    def read_counts(self) -> None:
        """Fills the result from the last statuses of both sides."""
        assert self.runtime_status is not None and self.learner_status is not None
        self.result.read_statuses(self.runtime_status.last, self.learner_status.last, self._learner_malformed())

    def audit(self) -> None:
        """Checks the learner's journal step by step (after the learner stopped)."""
        if (self.run_dir / "journal").is_dir():
            self.result.read_audit(audit_journal(self.run_dir))

    async def stop(self) -> None:
        """SIGTERMs the runtime, then the learner; a non-zero exit or a traceback counts as a crash."""
        for child in (self.runtime, self.learner):
            if child.running:
                code = await child.stop(self.config.stop_timeout_s)
                if code != 0:
                    self.result.crashes += 1
                    self.result.crash_notes.append(f"{child.name} exited {code} after SIGTERM; see {child.log_path}")
        tracebacks = count_tracebacks([self.learner.log_path, self.runtime.log_path])
        if tracebacks:
            self.result.crashes += tracebacks
            self.result.crash_notes.append(f"{tracebacks} tracebacks in {self.work / 'logs'}")

    # ---------------------------------------------------------------- the run
    async def run(self) -> DrillResult:
        """Runs the whole drill; returns the counts. Blocks for about ``seconds`` + the faults."""
        start = time.monotonic()
        try:
            demos = await asyncio.to_thread(self.prepare_demos)
            await self.start_learner(demos, resume=False)
            target = pick_endpoint(self.learner_endpoints, "uplink")
            self.proxy = PartitionProxy(ProxyConfig(target_host="127.0.0.1", target_port=tcp_port(target)))
            proxy_port = await self.proxy.start()
            await self.start_runtime(f"tcp://127.0.0.1:{proxy_port}")
            await self.await_first_ack(demos)
            await self.faults(demos)
            await self.drain()
        finally:
            await self.stop()
            await asyncio.to_thread(self.audit)
            for poller in (self.learner_status, self.runtime_status):
                if poller is not None:
                    poller.close()
            if self.proxy is not None:
                self.result.proxy_connections = self.proxy.connections
                await self.proxy.close()
        self.result.wall_s = round(time.monotonic() - start, 1)
        return self.result

    async def await_first_ack(self, demos: Path) -> None:
        """Waits until the runtime's steps are being acknowledged (the pipeline works)."""
        deadline = time.monotonic() + self.config.start_timeout_s
        while time.monotonic() < deadline:
            await self.watch(0.5, demos)
            if self.runtime_status is not None and status_int(self.runtime_status.last, "acked_seq") > 0:
                return
        raise FaultDrillError(f"no step acknowledged within {self.config.start_timeout_s:.0f} s")

    async def faults(self, demos: Path) -> None:
        """Runs the fault schedule: a malformed burst and a kill per slot, the partition midway."""
        cfg = self.config
        slots = cfg.kills + 1
        gap = cfg.seconds / (slots + 1)
        bursts = [cfg.malformed // slots + (1 if i < cfg.malformed % slots else 0) for i in range(slots)]
        for i in range(slots):
            await self.watch(gap * float(self.rng.uniform(0.5, 1.5)), demos)
            await self.malformed_burst(bursts[i])
            if i == slots // 2:
                await self.partition(cfg.partition_s, demos)
            if i < cfg.kills:
                await self.kill_learner(demos)
        await self.watch(gap, demos)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="resetfree-bench faults", description=doc_help(__doc__)[0])
    p.add_argument("--kills", type=int, default=5, help="learner SIGKILLs, each followed by --resume (default 5)")
    p.add_argument("--partition-s", type=float, default=30.0, help="seconds of network partition (default 30)")
    p.add_argument("--malformed", type=int, default=10_000, help="malformed frames over all sockets (default 10000)")
    p.add_argument("--hz", type=float, default=50.0, help="runtime control rate (default 50)")
    p.add_argument("--seconds", type=float, default=60.0, help="running time spread around the faults (default 60)")
    p.add_argument("--task", default="tabletop", help="simulated task, state mode (default tabletop)")
    p.add_argument("--seed", type=int, default=0, help="seed of the processes and the fault schedule")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="keep run dir, spill dir and logs here (default: a temporary directory, removed)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="extra learner overrides after the drill's small config (repeatable)")
    p.add_argument("--runtime-arg", dest="runtime_args", action="append", default=None, metavar="ARG",
                   help="extra runtime flag (repeatable; replaces the default --priority fifo --gc freeze)")
    p.add_argument("--quick", action="store_true",
                   help="reduced drill: 2 kills, 5 s partition, 1000 malformed frames, 20 s")
    return p


def config_from_args(args: argparse.Namespace) -> DrillConfig:
    """Returns the drill config for parsed arguments (``--quick`` overrides the fault sizes)."""
    fields: dict[str, Any] = dict(kills=args.kills, partition_s=args.partition_s, malformed=args.malformed,
                                  hz=args.hz, seconds=args.seconds, task=args.task, seed=args.seed,
                                  work_dir=args.work_dir, learner_sets=SMALL_LEARNER + tuple(args.sets))
    if args.runtime_args is not None:
        fields["runtime_args"] = tuple(args.runtime_args)
    if args.quick:
        fields.update(kills=2, partition_s=5.0, malformed=1000, seconds=20.0)
    return DrillConfig(**fields)


async def run_drill(config: DrillConfig) -> DrillResult:
    """Runs the drill in ``config.work_dir`` (or a temporary directory); returns its counts.

    Blocks for the drill's duration. Raises FaultDrillError when a process does not come up.
    """
    if config.work_dir is not None:
        config.work_dir.mkdir(parents=True, exist_ok=True)
        return await FaultDrill(config, config.work_dir).run()
    work = Path(tempfile.mkdtemp(prefix="resetfree-faults-"))
    try:
        return await FaultDrill(config, work).run()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str]) -> int:
    """Runs the drill; prints one JSON object as the last line. Returns 0 when every target holds."""
    args = _parser().parse_args(argv)
    config = config_from_args(args)
    result = asyncio.run(run_drill(config))
    for note in result.crash_notes:
        print(f"crash: {note}")
    print(json.dumps(result.to_json()))
    return 0 if result.ok else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main(sys.argv[1:]))
