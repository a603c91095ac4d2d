"""What ``resetfree-bench faults`` (:mod:`simulation.drills.bench_faults`) runs: the drill's
settings (:class:`DrillConfig`), the small learner it trains (:data:`SMALL_LEARNER`), the
expert demos that learner is given, and the command lines of the learner and the runtime it
starts as OS processes."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path

from protocol.codec import Spaces
from protocol.session import SessionSettings
from simulation.app.processes import pick_endpoint, python_module
from simulation.drills.malformed import state_spaces

logger = logging.getLogger(__name__)

#: A learner small enough to train at the drill's pace on one CPU thread.
SMALL_LEARNER: tuple[str, ...] = (
    "network.hidden_dim=64", "network.num_critics=2", "agent.batch_size=32", "replay.batch_size=32",
    "replay.demo_per_batch=4", "schedule.seed_frames=200", "vice.batch_size=32", "vice.hidden_dim=32",
    "medal.batch_size=32", "medal.hidden_dim=32", "service.publish_every=50", "service.checkpoint_every=200",
    "service.progress_every_s=2.0",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DrillConfig:
    """What the drill does and how long it may take."""

    kills: int = 5
    """Learner SIGKILLs (each followed by a restart with ``--resume``)."""
    partition_s: float = 30.0
    """Seconds the proxy cuts the runtime off the learner (0: no partition)."""
    malformed: int = 10_000
    """Malformed frames sent, over all receiving sockets."""
    hz: float = 50.0
    """Runtime control rate."""
    seconds: float = 60.0
    """Seconds of running around the faults (spread between them)."""
    task: str = "tabletop"
    """Simulated task (state observations)."""
    seed: int = 0
    """Seed of the processes, the fault timing and the malformed frames."""
    work_dir: Path | None = None
    """Where run dir, spill dir, demos and logs go (None: a temporary directory, removed after)."""
    learner_sets: tuple[str, ...] = SMALL_LEARNER
    """``--set`` overrides for the learner."""
    demo_episodes: int = 2
    """Expert demo episodes per direction."""
    start_timeout_s: float = 120.0
    """Seconds a process has to come up (write its endpoints, answer status)."""
    drain_timeout_s: float = 90.0
    """Seconds the learner has to acknowledge everything after the runtime pauses."""
    stop_timeout_s: float = 60.0
    """Seconds a process has to exit after SIGTERM."""
    runtime_args: tuple[str, ...] = ("--priority", "fifo", "--gc", "freeze")
    """Extra runtime flags (isolation: the drill measures overruns on a busy machine)."""
    learner_module: str = "learner"
    """Module run as the learner."""
    runtime_module: str = "runtime"
    """Module run as the runtime."""

    def __post_init__(self) -> None:
        for name in ("kills", "malformed", "demo_episodes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"DrillConfig.{name} must be an int >= 0, got {value!r}")
        for name in ("partition_s", "seconds"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"DrillConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("hz", "start_timeout_s", "drain_timeout_s", "stop_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"DrillConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if self.demo_episodes < 1:
            raise ValueError("DrillConfig.demo_episodes must be >= 1")


def write_demos(config: DrillConfig, out: Path) -> Spaces:
    """Writes forward and backward expert demos of ``config.task`` (state mode) into ``out``;
    returns the spaces a session declares for them. Blocks on the experts."""
    from protocol.demos import save_demos
    from simulation.tools.demos_cli import generate

    out.mkdir(parents=True, exist_ok=True)
    for direction in ("forward", "backward"):
        demos = generate(config.task, direction, episodes=config.demo_episodes, obs="state", seed=config.seed)
        save_demos(out / f"{config.task}_{direction}.npz", demos)
    state = demos.observations["state"]
    return state_spaces(int(state.shape[1]), int(demos.actions.shape[1]))


def learner_argv(config: DrillConfig, run_dir: Path, demos: Path, endpoints: Mapping[str, str], *,
                 resume: bool) -> list[str]:
    """Returns the learner's command line: on the first start every port 0 and ``--run-dir``; on
    a restart ``--resume`` and the ports it bound first (``endpoints``)."""
    binds = [pick_endpoint(endpoints, "uplink"), pick_endpoint(endpoints, "weights"),
             pick_endpoint(endpoints, "control")] if resume else ["tcp://127.0.0.1:0"] * 3
    argv = [*python_module(config.learner_module), "--profile", "sim", "--demos", str(demos),
            "--bind", binds[0], "--weights-bind", binds[1], "--control-bind", binds[2], "--mode", "realtime",
            "--device", "cpu", "--threads", "1", "--seed", str(config.seed), "--log-level", "INFO"]
    for item in config.learner_sets:
        argv += ["--set", item]
    return argv + (["--resume", str(run_dir)] if resume else ["--run-dir", str(run_dir)])


def runtime_argv(config: DrillConfig, uplink: str, spill_dir: Path) -> list[str]:
    """Returns the runtime's command line against ``uplink`` (the drill's proxy)."""
    return [*python_module(config.runtime_module), "--robot", f"sim:{config.task}", "--learner", uplink,
            "--obs", "state", "--hz", f"{config.hz:g}", "--spill-dir", str(spill_dir),
            "--control-bind", "tcp://127.0.0.1:0", "--seed", str(config.seed),
            "--switch-every", str(SessionSettings().switch_interval), "--log-level", "INFO",
            *config.runtime_args]
