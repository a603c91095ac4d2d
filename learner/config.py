"""The learner's whole configuration: every section, two paper profiles, TOML and overrides.

Profiles (MEDAL++, Sharma et al. 2023): ``sim`` follows Table 1, ``robot`` Appendix A.2 (with
the authors' robot feature dim of 256). A run is ``profile`` → TOML file → ``--set`` overrides,
each layer naming fields as ``section.field``; unknown keys raise ValueError naming the key.

``config_hash()`` fingerprints what must agree between a runtime and the learner it feeds
(the network architecture, the agent-switch schedule and the seed-frame count); the runtime
sends its hash in ``hello`` and the learner refuses a mismatch.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from learner.agent import AgentConfig
from learner.discriminators import DiscriminatorConfig
from learner.networks import NetworkConfig
from learner.replay import ReplayConfig
from learner.schedule import ScheduleConfig
from protocol.config_layers import load_toml, overlay, override_layer
from protocol.session import DEFAULT_SWITCH_INTERVAL, SessionSettings
from protocol.tensors import WIRE_DTYPES

logger = logging.getLogger(__name__)

PROFILES = ("sim", "robot")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SwitchConfig:
    """Forward/backward agent switching, executed by the runtime (fixed interval, paper)."""

    interval: int = DEFAULT_SWITCH_INTERVAL
    """Environment steps one agent acts before control passes to the other (authors' code: 200)."""

    def __post_init__(self) -> None:
        if not isinstance(self.interval, int) or self.interval < 1:
            raise ValueError(f"SwitchConfig.interval must be a positive int, got {self.interval!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    """The learner process: endpoints, device, publishing and checkpoint cadence."""

    uplink: str = "tcp://127.0.0.1:5555"
    """ROUTER endpoint the runtimes' uplink connects to (loopback by default)."""
    weights: str = "tcp://127.0.0.1:5556"
    """PUB endpoint the actor weights are published on."""
    control: str = "tcp://127.0.0.1:5557"
    """REP endpoint of the control channel."""
    run_dir: str = "runs/default"
    """Directory of checkpoints and TensorBoard logs."""
    device: str = "auto"
    """Torch device: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda``, ``cuda:N``."""
    torch_threads: int = 1
    """Intra-op threads on CPU (leave cores to a runtime on the same machine)."""
    cpus: tuple[int, ...] = ()
    """CPUs the learner process may run on (Linux); empty: all. On a PC that also runs the
    runtime, keep the learner off the runtime's ``--cpu`` so it neither takes that core nor
    evicts the loop's caches (``resetfree-bench runtime --cpu 1 --load-cpus 0``)."""
    tune_allocator: bool = True
    """Keep freed activations in glibc's heap (``learner.agent.tune_cpu_allocator``)."""
    publish_every: int = 100
    """Agent updates between weight publications."""
    checkpoint_every: int = 10_000
    """Agent updates between checkpoints."""
    keep_checkpoints: int = 3
    """Checkpoints kept on disk (newest first)."""
    disk_warn_gib: float = 20.0
    """The run directory's size (checkpoints, journal, TensorBoard) above which every
    checkpoint logs a WARNING; the progress line always shows it (``disk_gib``)."""
    log_every: int = 100
    """Agent updates between metric logs."""
    mode: str = "realtime"
    """``realtime``: train as fast as possible on the update credit, report the achieved UTD;
    ``lockstep``: do exactly the updates owed before acknowledging ``trained_through``."""
    journal_fsync: bool = True
    """fsync the ingest journal before each ack (survives power loss, not only a crash)."""
    journal_retention_steps: int = 0
    """Steps the ingest journal keeps at least; 0 means twice ``replay.capacity`` (both buffers)."""
    progress_every_s: float = 5.0
    """Seconds between console progress lines."""
    weights_dtype: str = "float16"
    """Dtype float tensors are published in: ``float16`` halves every swap's bytes (transfer,
    checksum, copy) at a rounding of 2⁻¹¹ relative — finer than the bf16 (2⁻⁸) the encoder
    computes in under autocast; a tensor float16 cannot hold goes as float32. ``float32``
    publishes the tensors exactly. Checkpoints always keep float32."""
    max_declared_loss: int = 2**32
    """Most steps one hello may declare lost (the gap rule, docs/protocol.md); a hello
    declaring more is refused with the reason. A runtime only loses what its spill log
    dropped, and an 8 GiB spill log holds about 10⁸ state steps; 2³² also keeps the
    ``lost_steps`` total far inside what msgpack encodes."""

    def __post_init__(self) -> None:
        if self.weights_dtype not in WIRE_DTYPES:
            raise ValueError(f"ServiceConfig.weights_dtype must be one of {WIRE_DTYPES}, got {self.weights_dtype!r}")
        for name in ("torch_threads", "publish_every", "checkpoint_every", "keep_checkpoints", "log_every",
                     "max_declared_loss"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ServiceConfig.{name} must be a positive int, got {value!r}")
        object.__setattr__(self, "cpus", tuple(self.cpus))
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in self.cpus):
            raise ValueError(f"ServiceConfig.cpus must be CPU numbers >= 0, got {self.cpus!r}")
        if self.mode not in ("realtime", "lockstep"):
            raise ValueError(f"ServiceConfig.mode must be realtime or lockstep, got {self.mode!r}")
        if not self.disk_warn_gib > 0:
            raise ValueError(f"ServiceConfig.disk_warn_gib must be > 0, got {self.disk_warn_gib!r}")
        if not isinstance(self.journal_retention_steps, int) or self.journal_retention_steps < 0:
            raise ValueError(f"ServiceConfig.journal_retention_steps must be an int >= 0, "
                             f"got {self.journal_retention_steps!r}")
        if not self.progress_every_s > 0:
            raise ValueError(f"ServiceConfig.progress_every_s must be > 0, got {self.progress_every_s!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"ServiceConfig.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


#: section name -> config class, in the order they appear in to_dict()
SECTIONS: dict[str, type] = {
    "network": NetworkConfig,
    "agent": AgentConfig,
    "replay": ReplayConfig,
    "vice": DiscriminatorConfig,
    "medal": DiscriminatorConfig,
    "schedule": ScheduleConfig,
    "switch": SwitchConfig,
    "service": ServiceConfig,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class LearnerConfig:
    """Everything the learner process needs; build with :func:`profile`, not field by field."""

    profile: str = "sim"
    """Name of the profile the config started from (``sim`` or ``robot``)."""
    seed: int = 0
    """Seed of torch, numpy and Python RNGs."""
    network: NetworkConfig = dataclasses.field(default_factory=NetworkConfig)
    """Encoder / actor / critic architecture (shared with the runtime)."""
    agent: AgentConfig = dataclasses.field(default_factory=AgentConfig)
    """REDQ optimisation."""
    replay: ReplayConfig = dataclasses.field(default_factory=ReplayConfig)
    """Replay capacity and demo oversampling."""
    vice: DiscriminatorConfig = dataclasses.field(default_factory=DiscriminatorConfig)
    """Forward-goal discriminator (VICE)."""
    medal: DiscriminatorConfig = dataclasses.field(default_factory=DiscriminatorConfig)
    """Backward state-distribution discriminator (MEDAL)."""
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    """Seed frames, BC decay, VICE positives."""
    switch: SwitchConfig = dataclasses.field(default_factory=SwitchConfig)
    """Agent switching interval (runtime side)."""
    service: ServiceConfig = dataclasses.field(default_factory=ServiceConfig)
    """Endpoints, device, cadence."""

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"LearnerConfig.profile must be one of {PROFILES}, got {self.profile!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"LearnerConfig.seed must be an int, got {self.seed!r}")
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"LearnerConfig.{name} must be a {cls.__name__}")
        if self.replay.batch_size != self.agent.batch_size:
            raise ValueError(
                f"replay.batch_size ({self.replay.batch_size}) must equal agent.batch_size ({self.agent.batch_size})"
            )

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Returns the config as JSON/TOML-ready builtins (tuples as lists, None kept)."""
        out: dict[str, Any] = {"profile": self.profile, "seed": self.seed}
        for name in SECTIONS:
            out[name] = _jsonable(dataclasses.asdict(getattr(self, name)))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base: LearnerConfig | None = None) -> LearnerConfig:
        """Overlays ``data`` on ``base`` (default: the profile ``data`` names, else ``sim``).

        Sections may be partial. Raises ValueError naming an unknown key or a bad value.
        """
        if base is None or ("profile" in data and data["profile"] != base.profile):
            base = profile(str(data.get("profile", base.profile if base else "sim")))
        return overlay(base, {k: v for k, v in data.items() if k != "profile"})

    @classmethod
    def from_toml(cls, path: str | Path, *, base: LearnerConfig | None = None) -> LearnerConfig:
        """Loads a TOML file (``profile = "robot"``, ``[agent]`` tables…) over ``base``.

        Raises ValueError on unknown keys or bad values, OSError when unreadable.
        """
        return cls.from_dict(load_toml(path), base=base)

    def with_overrides(self, overrides: Sequence[str]) -> LearnerConfig:
        """Returns a copy with ``section.field=value`` overrides applied (values in TOML syntax,
        bare words taken as strings; ``protocol.config_layers.override_layer``). Raises
        ValueError naming a malformed or unknown key."""
        return LearnerConfig.from_dict(override_layer(overrides, self), base=self)

    def session_settings(self) -> SessionSettings:
        """Returns the runtime-shared settings in the wire's form (``protocol.session``)."""
        return SessionSettings(switch_interval=self.switch.interval)

    def config_hash(self) -> str:
        """Returns the sha256 hex of what runtime and learner must share (spaces-independent):
        the network, the agent switch and the seed-frame count, as canonical JSON."""
        shared = {
            "network": self.network.to_dict(),
            "switch": _jsonable(dataclasses.asdict(self.switch)),
            "seed_frames": self.schedule.seed_frames,
        }
        canonical = json.dumps(shared, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


def profile(name: str) -> LearnerConfig:
    """Returns the paper profile ``sim`` (Table 1) or ``robot`` (A.2); ValueError otherwise."""
    if name == "sim":
        return LearnerConfig(
            profile="sim",
            replay=ReplayConfig(demo_per_batch=16),
            vice=DiscriminatorConfig(updates_every=500, updates_per_round=10, batch_size=512, share_encoder=True),
            medal=DiscriminatorConfig(updates_every=100, updates_per_round=10, batch_size=512, share_encoder=False),
            # Table 1 says only that the BC regulariser is on; the authors' simulation code puts it
            # on the forward agent, λ = 1 until step 10k, then linear to 0.1 at step 50k.
            schedule=ScheduleConfig(seed_frames=10_000, bc_weight_start=1.0, bc_weight_end=0.1,
                                    bc_decay_start=10_000, bc_decay_steps=40_000, bc_agents=(0,)),
        )
    if name == "robot":
        return LearnerConfig(
            profile="robot",
            network=NetworkConfig(feature_dim=256),
            # Both agents without an entropy bonus (A.2; the authors' Franka code: train_alpha false).
            agent=AgentConfig(backward_temperature=0.0, backward_learn_temperature=False),
            replay=ReplayConfig(demo_per_batch=32),
            vice=DiscriminatorConfig(updates_every=1000, updates_per_round=1, batch_size=512,
                                     cameras=("wrist",), use_proprio=False, share_encoder=True),
            medal=DiscriminatorConfig(updates_every=500, updates_per_round=1, batch_size=512,
                                      cameras=("wrist",), use_proprio=True, share_encoder=False),
            schedule=ScheduleConfig(seed_frames=2_000, bc_weight_start=1.0, bc_weight_end=0.0,
                                    bc_decay_steps=10_000),
        )
    raise ValueError(f"unknown profile {name!r}; expected one of {PROFILES}")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``--profile``, ``--config FILE`` and repeatable ``--set KEY=VALUE`` to ``parser``."""
    parser.add_argument("--profile", choices=PROFILES, default=None, help="paper profile (default: sim)")
    parser.add_argument("--config", type=Path, default=None, help="TOML file layered over the profile")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override, e.g. --set agent.lr=1e-4 (repeatable, applied last)")


def config_from_args(args: argparse.Namespace) -> LearnerConfig:
    """Builds the config from :func:`add_config_arguments`' options: profile → file → --set.

    Raises ValueError on unknown keys or bad values.
    """
    cfg = profile(args.profile or "sim")
    if args.config is not None:
        cfg = LearnerConfig.from_toml(args.config, base=cfg)
        if args.profile is not None and cfg.profile != args.profile:
            raise ValueError(f"--profile {args.profile} contradicts profile = {cfg.profile!r} in {args.config}")
    return cfg.with_overrides(args.overrides)


# ---------------------------------------------------------------------- helpers
def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


