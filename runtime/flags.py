"""The command line of ``resetfree-runtime``: every flag is a shortcut for one config key.

The runtime's settings are one :class:`~runtime.config.RuntimeConfig`. A run's is built in
layers, each overriding the one before, key by key, and validated once, on the result:

1. the defaults (the config dataclasses' fields);
2. ``--config FILE``: TOML, one table per section (``[robot]``, ``[loop]``, ``[link]``,
   ``[process]``, ``[policy]``, ``[isolation]``, ``[outbox]``; ``seed`` at the top);
3. the flags: each sets its key (``--hz 50`` is ``loop.hz = 50.0``; :data:`FLAGS` is the table,
   and ``--help`` ends with it); a flag not given sets nothing;
4. ``--set SECTION.KEY=VALUE`` (repeatable; TOML values, bare words as strings, ``none`` for None).

So a file holds a robot's settings, a flag changes one for a run, and ``--set`` reaches every key,
the ones without a flag too. ``--print-config`` prints the result as a file and exits.

The old form of ``--config``, one flat ``[runtime]`` table of flag names (``hz = 50``,
``spill_dir = "..."``), still loads: each name is translated by the flag's own entry in
:data:`FLAGS` (its type, choices and conversion, as the flag would be), and a WARNING shows the
file's new form. It loads rather than fails because a robot PC's file should not stop its robot
after an update, and the translation is the flag table itself, so it cannot drift from it. A
file mixing the two forms is refused.
"""

from __future__ import annotations

import argparse
import logging
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.config_layers import checked_layer, load_toml, merge_layers, override_layer, toml_text
from runtime.config import RuntimeConfig
from runtime.isolation import GC_MODES
from runtime.policy_slot import CONV_DTYPES, PROJECTION_DTYPES
from runtime.robots import OBS_MODES, RESET_SCHEDULES

logger = logging.getLogger(__name__)

_D = RuntimeConfig()  # the defaults the help texts show


def _latency(text: str) -> int | None:
    """``--cpu-latency-us``: a non-negative int, or ``off``."""
    if text.strip().lower() in ("off", "none"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected µs (an integer >= 0) or 'off', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected µs >= 0 or 'off', got {value}")
    return value


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Flag:
    """One flag of ``resetfree-runtime`` and the config key it sets."""

    name: str
    """The flag (``--hz``); its argparse dest (``hz``) is also its name in an old ``[runtime]`` table."""
    key: str
    """The config key it sets: ``section.field``, or ``seed``."""
    help: str
    """Its ``--help`` text."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """``add_argument`` options: type, choices, action, metavar."""
    to_config: Callable[[Any], Any] = _same
    """The flag's parsed value → the key's value (``--prefetch-lead-ms`` 5 → 0.005 s)."""

    @property
    def dest(self) -> str:
        """argparse's attribute name of the flag."""
        return self.name[2:].replace("-", "_")

    def value(self, raw: Any) -> Any:
        """Returns the key's value for ``raw``, the flag's value as an old ``[runtime]`` table gave
        it: a string goes through the flag's type (as argparse treats a string default), then its
        choices are checked. Raises ValueError naming the flag."""
        kind = self.options.get("type")
        if isinstance(raw, str) and kind is not None:
            try:
                raw = kind(raw)
            except (ValueError, argparse.ArgumentTypeError) as e:
                raise ValueError(f"{self.dest} ({self.name}): {e}") from e
        choices = self.options.get("choices")
        if choices is not None and raw not in choices:
            raise ValueError(f"{self.dest} ({self.name}): must be one of {list(choices)}, got {raw!r}")
        return self.to_config(raw)


FLAGS: tuple[Flag, ...] = (
    Flag("--robot", "robot.spec", "sim:TASK (tabletop, door, peg, cube) or franka"),
    Flag("--learner", "link.learner", "learner uplink endpoint"),
    Flag("--obs", "robot.obs", "simulated observation mode", {"choices": OBS_MODES}),
    Flag("--hz", "loop.hz", f"control rate in Hz (default {_D.loop.hz:g})", {"type": float}),
    Flag("--lockstep", "loop.lockstep", "simulation: wait for the learner's updates before each tick "
         "(reproducible learning curves)", {"action": "store_true"}),
    Flag("--spill-dir", "process.spill_dir", "spill log + session state (default ~/.cache/resetfree/spill/<robot>)",
         {"type": Path}),
    Flag("--control-bind", "process.control_bind", "control server endpoint (port 0: pick one; written to "
         "SPILL_DIR/endpoints.json)"),
    Flag("--keys", "link.keys_dir", "CURVE keys directory (resetfree-keys generate)", {"type": Path}),
    Flag("--seed", "seed", "seed of the simulation and the seed-phase actions", {"type": int}),
    Flag("--switch-every", "loop.switch_every", "steps per agent before switching to the other (default "
         f"{_D.loop.switch_every})", {"type": int}),
    Flag("--reset-every", "robot.reset_every", "simulation: steps between environment resets (default: "
         "--reset-schedule's; 0: never). A real robot is never reset", {"type": int}),
    Flag("--reset-schedule", "robot.reset_schedule", "simulation: the task's reset schedule when --reset-every is "
         "not given: paper (the default: every 10000 steps for tabletop, door and peg, as MEDAL++; cube never) or "
         "earl (EARL's own: door and tabletop 200000, peg 100000)", {"choices": RESET_SCHEDULES}),
    Flag("--operator", "robot.operator", "simulation: emulate the person who puts the scene back when a backward "
         "turn ends where practice cannot go on (the task's rule; cube: the cube out of reach), counting each "
         "intervention", {"action": "store_true"}),
    Flag("--max-steps", "loop.max_steps", "stop cleanly after N steps (waits for acks)", {"type": int}),
    Flag("--ack-wait", "link.ack_wait_s", "--max-steps: seconds to wait for final acks", {"type": float}),
    Flag("--batch-steps", "loop.batch_steps", "steps per uplink batch", {"type": int}),
    Flag("--lockstep-lag", "loop.lockstep_lag", "lock-step: steps the loop may run ahead of the learner's "
         "trained_through (at least --batch-steps; default two batches, so the runtime records the next batch "
         "while the learner trains on the last)", {"type": int}),
    Flag("--franka-host", "robot.franka_host", "Franka control box address"),
    Flag("--camera", "robot.cameras", "RealSense camera (repeatable)", {"action": "append", "metavar": "NAME=SERIAL"},
         to_config=lambda values: tuple(values or ())),
    Flag("--task", "robot.task", "task name sent to the learner (real robot; sim: from --robot)"),
    Flag("--cpu", "isolation.cpu", "pin the runtime to this CPU", {"type": int}),
    Flag("--priority", "isolation.priority", "scheduling priority: fifo (SCHED_FIFO, falls back to nice without "
         "the privilege), nice, none. Measured on 2 cores with a learner training: fifo gives 0 overruns at 10 "
         "and 50 Hz where nice gives hundreds", {"choices": ("none", "nice", "fifo")}),
    Flag("--cpu-latency-us", "isolation.cpu_latency_us", "hold the CPUs' wake-up latency at this many µs "
         "(/dev/cpu_dma_latency, needs root): idle CPUs poll instead of halting, so the loop's sleeps end on "
         f"time; costs power, not CPU time. off: leave it. Default {_D.isolation.cpu_latency_us}",
         {"type": _latency, "metavar": "US|off"}),
    Flag("--keep-heap", "isolation.keep_heap", "glibc: keep freed memory instead of unmapping it, so a weights "
         "swap does not interrupt the loop's CPU to flush its TLB (costs the heap's peak in memory)",
         {"action": argparse.BooleanOptionalAction}),
    Flag("--gc", "isolation.gc_mode", "garbage-collector handling (jitter)", {"choices": GC_MODES}),
    Flag("--threads", "isolation.torch_threads", "torch threads for inference", {"type": int}),
    Flag("--conv-dtype", "policy.conv_dtype", "dtype of the pixel conv trunk at inference: bfloat16 computes as "
         "the learner's autocast does (about half the time on CPUs with AMX/AVX512-BF16); auto picks it where "
         "the CPU has native bf16", {"choices": CONV_DTYPES}),
    Flag("--projection-dtype", "policy.projection_dtype", "dtype of the image projection layer at inference: "
         "float16 halves the bytes it reads per tick and was faster on an idle CPU with AVX512-FP16, slower with "
         "a learner on the same cores (see PolicySlotConfig)", {"choices": PROJECTION_DTYPES}),
    Flag("--no-explore", "policy.explore", "act with the policy's mean action instead of sampling from it (to "
         "show a learned policy; practice needs the sampling, as the learner's own agent does)",
         {"action": "store_true"}, to_config=lambda no_explore: not no_explore),
    Flag("--prefetch-lead-ms", "loop.prefetch_lead_s", "warm the CPU caches for the acting policy this long "
         "before each tick (one inference on the previous observation; 0: off): an inference right after "
         "idling runs ~2x slower", {"type": float}, to_config=lambda ms: ms / 1e3),
    Flag("--prefetch-passes", "loop.prefetch_passes", "warm-up inferences before each tick (default: one per "
         "30 ms of period, 1 to 3; at 10 Hz under learner load a second pass took inference from 2.8 to 1.95 ms "
         "here)", {"type": int}),
    Flag("--log-level", "process.log_level", "DEBUG, INFO, WARNING, ERROR"),
)
"""Every flag and the key it sets, in ``--help``'s order."""


class _HelpFormatter(argparse.HelpFormatter):
    """Fills the description and epilog without breaking a flag's name at its hyphen."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent,
                             break_on_hyphens=False)


def build_parser() -> argparse.ArgumentParser:
    """Returns the daemon's argument parser (every flag documented in ``--help``, and the key it
    sets listed at its end). A flag not given is absent from the parsed namespace."""
    p = argparse.ArgumentParser(
        prog="resetfree-runtime", formatter_class=_HelpFormatter,
        description="Run the robot-side control loop and stream its steps to a learner. "
        "'resetfree-runtime ctl --help' for the operator commands.",
        epilog="Each flag sets one key of the runtime's config, over --config FILE and under --set: "
        + "; ".join(f"{f.name} {f.key}" for f in FLAGS) + ". Keys without a flag are set in the file or "
        "with --set (e.g. --set link.peer_timeout_s=3, --set outbox.max_memory_batches=1024).")
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="TOML file of config sections ([robot], [loop], [link], [process], [policy], [isolation], "
                        "[outbox]; seed at the top), over the defaults; the flags and --set override it. The old "
                        "flat [runtime] table of flag names still loads (with a warning showing the new form)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set loop.hz=50 (repeatable, applied last)")
    p.add_argument("--print-config", action="store_true", help="print the resulting config as a --config file and exit")
    for flag in FLAGS:
        p.add_argument(flag.name, default=argparse.SUPPRESS, help=flag.help, **flag.options)
    return p


def config_from_args(args: argparse.Namespace) -> RuntimeConfig:
    """Returns the config of parsed ``args``: the defaults, then ``--config``, then the flags
    given, then ``--set`` (see the module docstring). Raises ValueError naming a bad key or value
    (a RobotSpecError for contradictory reset settings), OSError when the file is unreadable."""
    layers: list[Mapping[str, Any]] = []
    if args.config is not None:
        layers.append(file_layer(args.config))
    layers.append(flag_layer(args))
    layers.append(override_layer(args.overrides, _D))
    return RuntimeConfig.from_dict(merge_layers(*layers))


def runtime_config(argv: list[str]) -> RuntimeConfig:
    """Returns the config ``resetfree-runtime argv`` would run with (the daemon's options only,
    not ``ctl``). Raises SystemExit on a malformed flag (argparse), ValueError/OSError as
    :func:`config_from_args`."""
    return config_from_args(build_parser().parse_args(argv))


def flag_layer(args: argparse.Namespace) -> dict[str, Any]:
    """Returns the layer the flags given in ``args`` set."""
    return _layer((flag.key, flag.to_config(getattr(args, flag.dest))) for flag in FLAGS if hasattr(args, flag.dest))


def file_layer(path: Path) -> dict[str, Any]:
    """Returns the layer of a ``--config`` file: its tables as they are, or an old-form file's
    ``[runtime]`` table translated through :data:`FLAGS` (logging its new form as a WARNING).
    Raises ValueError naming the file and the bad key, OSError when unreadable."""
    data = load_toml(path)
    if "runtime" not in data:
        try:
            return checked_layer(_D, data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
    if len(data) > 1:
        raise ValueError(f"{path}: a [runtime] table (the old form) and config sections cannot be mixed, found "
                         f"{sorted(data)}; move the [runtime] keys into the sections (a file of the [runtime] "
                         "table alone is read, with a warning that shows its new form)")
    try:
        layer = checked_layer(_D, legacy_layer(data["runtime"]))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    logger.warning("%s: the [runtime] table of flag names is the old form of a runtime config file; it was read "
                   "as the new form below (resetfree-runtime --config FILE --print-config writes a whole file):\n%s",
                   path, toml_text(layer).rstrip())
    return layer


def legacy_layer(table: Mapping[str, Any]) -> dict[str, Any]:
    """Returns the layer of an old ``[runtime]`` table (flag names with underscores, e.g.
    ``spill_dir``, ``no_explore``, ``prefetch_lead_ms``), each translated as its flag is.
    Raises ValueError naming an unknown name or a bad value."""
    if not isinstance(table, Mapping):
        raise ValueError(f"[runtime] must be a table, got {type(table).__name__}")
    by_dest = {flag.dest: flag for flag in FLAGS}
    unknown = sorted(set(table) - set(by_dest))
    if unknown:
        raise ValueError(f"unknown key(s) in [runtime]: {unknown} (its keys are flag names, e.g. spill_dir)")
    return _layer((by_dest[name].key, by_dest[name].value(raw)) for name, raw in table.items())


def _layer(items: Any) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for key, value in items:
        section, _, name = key.rpartition(".")
        (layer.setdefault(section, {}) if section else layer)[name] = value
    return layer


__all__ = ["FLAGS", "Flag", "build_parser", "config_from_args", "file_layer", "flag_layer", "legacy_layer",
           "runtime_config"]
