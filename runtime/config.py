"""The runtime's whole configuration (:class:`RuntimeConfig`): one typed, frozen config of sections.

Each section is one TOML table and, where a part of the runtime has a config of its own, is
that config, so every default is declared once, beside what it configures:

* top level: ``seed`` (the simulation, the seed-phase actions, the exploration noise);
* ``[robot]``: :class:`runtime.robots.RobotConfig`, which robot, its cameras, its resets;
* ``[loop]``: :class:`LoopSettings`, rate, lock-step, agent turns, batches, warm-up, stop;
* ``[link]``: :class:`LinkConfig`, the learner's endpoint, keys and timeouts;
* ``[process]``: :class:`ProcessConfig`, spill directory, control endpoint, logging;
* ``[policy]``: :class:`runtime.policy_slot.PolicySlotConfig`, inference dtypes, exploration;
* ``[isolation]``: :class:`runtime.isolation.IsolationConfig`, CPU, priority, GC, heap, latency;
* ``[outbox]``: :class:`runtime.outbox.OutboxConfig`, the outbox's memory bounds.

A run is the defaults, then a TOML file, then the command line (``runtime.flags``: each flag sets
one key, then ``--set section.key=value``). :meth:`RuntimeConfig.from_dict`, ``from_toml`` and
``with_overrides`` apply a layer (``protocol.config_layers``); unknown keys and bad values raise
ValueError naming the key. What a robot *is* (its scale, limits, reset schedules) is declared by
its kind (``runtime.robots``), never configured here.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from protocol.config_layers import load_toml, overlay, override_layer, to_layer, toml_text
from protocol.session import DEFAULT_SWITCH_INTERVAL, SessionSettings
from runtime.clock import ClockConfig
from runtime.isolation import IsolationConfig
from runtime.loop import LoopConfig
from runtime.outbox import OutboxConfig
from runtime.policy_slot import PolicySlotConfig
from runtime.robots import RobotConfig
from runtime.spill import SpillConfig

logger = logging.getLogger(__name__)

LOCKSTEP_LAG_BATCHES = 2
"""Default lock-step lag in uplink batches: two batches let the loop record (and send) batch
*k + 1* while the learner trains on batch *k*, so the two processes work at once; one batch
(the earlier rule) left one of them idle at every moment."""

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoopSettings:
    """The control loop as the daemon runs it. The daemon builds the loop's own
    :class:`~runtime.loop.LoopConfig` from these and the robot's facts
    (``runtime.daemon_config.loop_settings``), the clock's from ``hz`` and ``lockstep``."""

    hz: float = ClockConfig.rate_hz
    """Control rate in Hz."""
    lockstep: bool = LoopConfig.lockstep
    """Simulation: wait for the learner's updates before each tick (reproducible learning curves)."""
    lockstep_lag: int | None = None
    """Lock-step: how many steps the loop may run ahead of the learner's ``trained_through``
    (None: :data:`LOCKSTEP_LAG_BATCHES` batches). At least ``batch_steps``; with two batches
    the loop records the next batch while the learner trains on the previous one."""
    switch_every: int = DEFAULT_SWITCH_INTERVAL
    """Steps per agent before the other takes over (sent hashed in ``hello``)."""
    batch_steps: int = LoopConfig.batch_steps
    """Steps per uplink batch."""
    max_steps: int | None = None
    """Stop cleanly after this many recorded steps, once they are acked (None: run until signalled)."""
    prefetch_lead_s: float = LoopConfig.prefetch_lead_s
    """Warm the caches for the acting policy this long before each tick (0: off; ``LoopConfig``)."""
    prefetch_passes: int | None = LoopConfig.prefetch_passes
    """Warm-up inferences before each tick; None: by the period (``LoopConfig.prefetch_passes``)."""

    def __post_init__(self) -> None:
        if not 0 < self.hz <= 1000:
            raise ValueError(f"hz: must be in (0, 1000], got {self.hz}")
        if self.switch_every < 1:
            raise ValueError(f"switch_every: must be positive, got {self.switch_every}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps: must be positive or None, got {self.max_steps}")
        if self.batch_steps < 1:
            raise ValueError(f"batch_steps: must be positive, got {self.batch_steps}")
        if self.lockstep_lag is not None and self.lockstep_lag < self.batch_steps:
            raise ValueError(f"lockstep_lag: must be at least batch_steps ({self.batch_steps}), got "
                             f"{self.lockstep_lag} (the learner only sees whole batches)")
        if not self.prefetch_lead_s >= 0:
            raise ValueError(f"prefetch_lead_s: must be >= 0, got {self.prefetch_lead_s}")
        if self.prefetch_passes is not None and self.prefetch_passes < 1:
            raise ValueError(f"prefetch_passes: must be positive or None, got {self.prefetch_passes}")

    @property
    def lag(self) -> int:
        """Lock-step: steps the loop may run ahead of ``trained_through`` (``lockstep_lag``)."""
        return self.lockstep_lag if self.lockstep_lag is not None else LOCKSTEP_LAG_BATCHES * self.batch_steps


@dataclasses.dataclass(frozen=True, kw_only=True)
class LinkConfig:
    """The learner connection (``runtime.learner_link.LearnerLink``)."""

    learner: str = "tcp://127.0.0.1:5555"
    """The learner's uplink endpoint."""
    keys_dir: Path | None = None
    """CURVE keys directory (``resetfree-keys generate``); None: plaintext loopback."""
    connect_retry_s: float = 2.0
    """Pause between hello attempts while the learner is not up."""
    hello_timeout_s: float = 5.0
    """Deadline for one welcome."""
    peer_timeout_s: float = 5.0
    """Learner silent this long ⇒ reconnect (steps spill meanwhile)."""
    ack_wait_s: float = 10.0
    """``loop.max_steps``: how long to wait for the final acks."""

    def __post_init__(self) -> None:
        if not self.learner:
            raise ValueError("learner: must be an endpoint, e.g. tcp://127.0.0.1:5555")
        for name in ("connect_retry_s", "hello_timeout_s", "peer_timeout_s", "ack_wait_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProcessConfig:
    """The daemon process: where it keeps its state, where operators reach it, what it logs."""

    spill_dir: Path | None = None
    """Spill log, session state and ``endpoints.json``; None: ``~/.cache/resetfree/spill/<robot>``
    (:attr:`RuntimeConfig.spill_dir`)."""
    control_bind: str = "tcp://127.0.0.1:5558"
    """Control server endpoint (port 0: a free port, written to ``SPILL_DIR/endpoints.json``)."""
    spill_max_bytes: int = SpillConfig.max_bytes
    """Disk cap of the spill log (all its segments): at the cap the loop holds the robot until
    the learner acks, so nothing recorded is dropped; a WARNING at 80%. 8 GiB by default: with
    two 84×84 cameras a step is about 42 KB, so at 10 Hz the log holds some 5.6 hours of steps
    the learner has not acked (a state-only step is under 1 KB)."""
    status_log_interval_s: float = 10.0
    """Interval of the daemon's INFO status line."""
    log_level: str = "INFO"
    """DEBUG, INFO, WARNING, ERROR (any case)."""

    def __post_init__(self) -> None:
        if not self.control_bind:
            raise ValueError("control_bind: must be an endpoint, e.g. tcp://127.0.0.1:5558")
        if (not isinstance(self.spill_max_bytes, int) or isinstance(self.spill_max_bytes, bool)
                or self.spill_max_bytes < SpillConfig.segment_bytes):
            raise ValueError(f"spill_max_bytes: must be an int of at least one segment ({SpillConfig.segment_bytes} "
                             f"bytes), got {self.spill_max_bytes!r}")
        if not self.status_log_interval_s > 0:
            raise ValueError(f"status_log_interval_s: must be positive, got {self.status_log_interval_s}")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ValueError(f"log_level: must be one of {LOG_LEVELS}, got {self.log_level!r}")


_LEGACY_HINT = ("a flat [runtime] table is the old form of the runtime's config file; resetfree-runtime "
                "--config still reads it, and --print-config writes its new form (tables such as [loop], "
                "[link], [robot])")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    """Everything ``resetfree-runtime`` is told; see the module docstring. Build it with
    :meth:`from_dict`, :meth:`from_toml` or :meth:`with_overrides`, or section by section."""

    seed: int | None = None
    """Seed of the simulation, the seed-phase random actions and (unless ``policy.seed``) the
    exploration noise; None: fresh entropy."""
    robot: RobotConfig = dataclasses.field(default_factory=RobotConfig)
    """Which robot, its cameras and (simulation) its resets."""
    loop: LoopSettings = dataclasses.field(default_factory=LoopSettings)
    """Rate, lock-step, agent turns, batching, cache warm-up, when to stop."""
    link: LinkConfig = dataclasses.field(default_factory=LinkConfig)
    """The learner's endpoint, keys and timeouts."""
    process: ProcessConfig = dataclasses.field(default_factory=ProcessConfig)
    """Spill directory, control endpoint, logging."""
    policy: PolicySlotConfig = dataclasses.field(default_factory=PolicySlotConfig)
    """The policy slot: inference dtypes, exploration, blob limits. Its ``seed`` None (the
    default) means the top-level ``seed``."""
    isolation: IsolationConfig = dataclasses.field(default_factory=IsolationConfig)
    """Affinity, priority, GC, heap and wake-up latency levers."""
    outbox: OutboxConfig = dataclasses.field(default_factory=OutboxConfig)
    """The outbox's memory bounds (the spill log's disk cap is ``runtime.spill.SpillConfig``'s)."""

    def __post_init__(self) -> None:
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise ValueError(f"seed: must be an int or None, got {self.seed!r}")
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"{name}: must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")

    # ------------------------------------------------------------------ derived
    @property
    def spill_dir(self) -> Path:
        """The spill directory: ``process.spill_dir``, or ``~/.cache/resetfree/spill/<robot>``."""
        if self.process.spill_dir is not None:
            return Path(self.process.spill_dir)
        return Path.home() / ".cache" / "resetfree" / "spill" / self.robot.spec.replace(":", "-")

    @property
    def session_settings(self) -> SessionSettings:
        """The settings shared with the learner (hashed into ``hello.config_hash``)."""
        return SessionSettings(switch_interval=self.loop.switch_every)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Returns the config as JSON-ready builtins (tuples as lists, paths as strings, None kept)."""
        return to_layer(self)

    def to_toml(self) -> str:
        """Returns the config as a TOML file :meth:`from_toml` reads back to an equal config."""
        return toml_text(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base: RuntimeConfig | None = None) -> RuntimeConfig:
        """Returns ``base`` (default: the defaults) with ``data`` (``{"loop": {"hz": 50.0}}``,
        sections may be partial) applied. Raises ValueError naming an unknown key or a bad value."""
        if "runtime" in data:
            raise ValueError(_LEGACY_HINT)
        return overlay(base or cls(), data)

    @classmethod
    def from_toml(cls, path: str | Path, *, base: RuntimeConfig | None = None) -> RuntimeConfig:
        """Returns ``base`` with the TOML file at ``path`` applied (one table per section).
        Raises ValueError on invalid TOML, unknown keys or bad values; OSError when unreadable."""
        try:
            return cls.from_dict(load_toml(path), base=base)
        except ValueError as e:
            if not str(e).startswith(str(path)):
                e.args = (f"{path}: {e}", *e.args[1:])  # the same exception, naming the file
            raise

    def with_overrides(self, overrides: Sequence[str]) -> RuntimeConfig:
        """Returns a copy with ``section.field=VALUE`` overrides applied (TOML values, bare words
        as strings, ``none`` for None). Raises ValueError naming a malformed or unknown key or a bad value."""
        return self.from_dict(override_layer(overrides, self), base=self)


SECTIONS: dict[str, type] = {"robot": RobotConfig, "loop": LoopSettings, "link": LinkConfig, "process": ProcessConfig,
                             "policy": PolicySlotConfig, "isolation": IsolationConfig, "outbox": OutboxConfig}
"""Section name → its config class, in :meth:`RuntimeConfig.to_dict`'s order."""

__all__ = ["LOCKSTEP_LAG_BATCHES", "SECTIONS", "LinkConfig", "LoopSettings", "ProcessConfig", "RuntimeConfig"]
