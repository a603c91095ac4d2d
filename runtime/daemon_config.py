"""What ``resetfree-runtime`` is told (:class:`DaemonConfig`) and the settings derived from it
for the parts the daemon assembles: the shield's limits, the control clock, the wire's
observation space."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hardware.interfaces import Camera, Robot
from protocol.spaces import ArraySpec
from protocol.session import DEFAULT_SWITCH_INTERVAL, SessionSettings
from runtime.clock import ClockConfig
from runtime.isolation import IsolationConfig
from runtime.loop import LoopConfig
from runtime.policy_slot import PolicySlotConfig
from runtime.robots import RobotFacts, lockstep_shield_config, shield_config
from runtime.shield import ShieldConfig


@dataclass(frozen=True, kw_only=True)
class DaemonConfig:
    """Everything ``resetfree-runtime`` is told on its command line."""

    robot: str
    """``sim:TASK`` or ``franka`` (for logs and ``hello.robot``)."""
    learner: str = "tcp://127.0.0.1:5555"
    """The learner's uplink endpoint."""
    spill_dir: Path
    """Spill log, session state and ``endpoints.json``."""
    control_bind: str = "tcp://127.0.0.1:5558"
    """Control server endpoint (port 0: a free port, written to ``SPILL_DIR/endpoints.json``)."""
    hz: float = 10.0
    """Control rate."""
    lockstep: bool = False
    """Wait for the learner's training before each tick (simulation)."""
    switch_every: int = DEFAULT_SWITCH_INTERVAL
    """Steps per agent before the other takes over (sent hashed in ``hello``)."""
    max_steps: int | None = None
    """Stop cleanly after this many recorded steps (None: run until signalled)."""
    seed: int | None = None
    """Seed of the seed-phase random actions."""
    keys_dir: Path | None = None
    """CURVE keys directory (``resetfree-keys generate``); None: plaintext loopback."""
    batch_steps: int = 16
    """Steps per uplink batch."""
    lockstep_lag: int | None = None
    """Lock-step: how many steps the loop may run ahead of the learner's ``trained_through``
    (None: :data:`LOCKSTEP_LAG_BATCHES` batches). At least ``batch_steps``; with two batches
    the loop records the next batch while the learner trains on the previous one."""
    ack_wait_s: float = 10.0
    """``--max-steps``: how long to wait for the final acks."""
    connect_retry_s: float = 2.0
    """Pause between hello attempts while the learner is not up."""
    hello_timeout_s: float = 5.0
    """Deadline for one welcome."""
    peer_timeout_s: float = 5.0
    """Learner silent this long ⇒ reconnect (steps spill meanwhile)."""
    status_log_interval_s: float = 10.0
    """Interval of the daemon's INFO line."""
    isolation: IsolationConfig = IsolationConfig()
    """Affinity, priority, GC and thread levers."""
    policy: PolicySlotConfig = PolicySlotConfig()
    """Policy slot: blob limits and the conv trunk's inference dtype."""
    prefetch_lead_s: float = LoopConfig.prefetch_lead_s
    """Warm the caches for the acting policy this long before each tick (0: off; `LoopConfig`)."""
    prefetch_passes: int | None = LoopConfig.prefetch_passes
    """Warm-up inferences before each tick; None: by the period (`LoopConfig.prefetch_passes`)."""
    gc_every_ticks: int = 50
    """``gc_mode == "manual"``: collect generation 0 after every this many ticks."""

    def __post_init__(self) -> None:
        if not 0 < self.hz <= 1000:
            raise ValueError(f"hz: must be in (0, 1000], got {self.hz}")
        if self.switch_every < 1:
            raise ValueError(f"switch_every: must be positive, got {self.switch_every}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps: must be positive or None, got {self.max_steps}")
        if self.batch_steps < 1:
            raise ValueError(f"batch_steps: must be positive, got {self.batch_steps}")
        for name in ("ack_wait_s", "connect_retry_s", "hello_timeout_s", "peer_timeout_s",
                     "status_log_interval_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.gc_every_ticks < 1:
            raise ValueError(f"gc_every_ticks: must be positive, got {self.gc_every_ticks}")
        if self.lockstep_lag is not None and self.lockstep_lag < self.batch_steps:
            raise ValueError(f"lockstep_lag: must be at least batch_steps ({self.batch_steps}), got "
                             f"{self.lockstep_lag} (the learner only sees whole batches)")

    @property
    def lag(self) -> int:
        """Lock-step: steps the loop may run ahead of ``trained_through`` (``lockstep_lag``)."""
        return self.lockstep_lag if self.lockstep_lag is not None else LOCKSTEP_LAG_BATCHES * self.batch_steps

    @property
    def session_settings(self) -> SessionSettings:
        """The settings shared with the learner (hashed into ``hello.config_hash``)."""
        return SessionSettings(switch_interval=self.switch_every)


LOCKSTEP_LAG_BATCHES = 2
"""Default lock-step lag in uplink batches: two batches let the loop record (and send) batch
*k + 1* while the learner trains on batch *k*, so the two processes work at once; one batch
(the earlier rule) left one of them idle at every moment."""


def shield_settings(config: DaemonConfig, robot: Robot, facts: RobotFacts) -> ShieldConfig:
    """Returns the shield's limits: the robot's own (``runtime.robots.shield_config``), and for
    a simulated robot in lock-step no holds for timing — no deadline-miss hold and no state or
    frame age limit. There the simulation only advances when the loop acts, the loop waits for
    the learner before ticks, and a hold would only record a zero action instead of the
    seed-phase random action or the policy's. A real robot keeps every watchdog, lock-step or not."""
    limits = shield_config(robot, facts, config.hz)
    if not (config.lockstep and facts.kind == "sim"):
        return limits
    return lockstep_shield_config(limits)


def clock_settings(config: DaemonConfig) -> ClockConfig:
    """Returns the control clock's settings: ``config.hz``, and in lock-step no spinning
    before deadlines (``spin_margin_s = 0``: the wait is one sleep). The spin buys sub-ms
    tick precision, which lock-step has no use for — the learner sets its pace — and at the
    fast rates lock-step runs at (``resetfree-sim``: 500, now 1000 Hz) it burned up to half
    of every period on a core the learner needs."""
    if config.lockstep:
        return ClockConfig(rate_hz=config.hz, spin_margin_s=0.0)
    return ClockConfig(rate_hz=config.hz)


def observation_spaces(robot: Robot, cameras: list[Camera]) -> dict[str, ArraySpec]:
    """Returns the wire observation space: one spec per camera image plus the robot's arrays."""
    space = {c.name: c.image_spec.unbounded() for c in cameras}
    space.update({name: s.unbounded() for name, s in robot.state_spec.items()})
    return space
