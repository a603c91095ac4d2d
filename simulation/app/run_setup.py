"""``resetfree-sim``'s run directory: what was asked (:class:`RunSpec`, ``run.json``, resume),
the learner config it resolves to (``config.toml``: profile → task preset → ``--config`` →
``--set``), and the expert demos it trains from (``demos/``)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from learner.config import LearnerConfig, profile
from protocol.atomic import write_bytes_atomic
from simulation.app.processes import ProcessError
from simulation.earl_import import BUNDLED_DEMOS
from simulation.tasks import task_info
from simulation.tasks.base import RESET_SCHEDULES, ObsMode, ResetSchedule

logger = logging.getLogger(__name__)

TASKS = ("tabletop", "door", "peg", "cube")


OrchestratorError = ProcessError
"""A child that does not come up, a malformed endpoints file, or a bad run directory (the
orchestrator's errors are those of :mod:`simulation.app.processes`, which it runs on)."""


# ============================================================================ run spec
UNBOUNDED_STEPS = 10**9
"""``RunSpec.steps`` of a run that only a time limit ends (not shown as a target)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSpec:
    """Everything ``resetfree-sim`` was asked to do."""

    run_dir: Path
    """Run directory (created; reused on resume)."""
    task: str = "tabletop"
    """Task: tabletop, door, peg or cube."""
    obs: ObsMode = "state"
    """Observation mode of the runtimes and the learner."""
    steps: int = 200_000
    """Total env steps of the run (over all runtimes, across resumes); ``UNBOUNDED_STEPS`` for
    a run bounded by wall-clock time only (the learning benchmark)."""
    robots: int = 1
    """Simulated runtimes feeding the learner."""
    seed: int = 0
    """Seed of the learner; runtime i gets ``seed + i``."""
    resume: bool = False
    """Continue the run in ``run_dir`` (its ``run.json`` and ``config.toml``)."""
    profile: str | None = None
    """Learner profile (default: ``sim``, or what ``config.toml`` says on resume)."""
    config: Path | None = None
    """User TOML layered over the profile and the task preset."""
    overrides: tuple[str, ...] = ()
    """``section.key=value`` overrides, applied last."""
    demos: Path | None = None
    """Directory of demo files; None generates expert demos into ``RUN_DIR/demos``."""
    eval_every: int = 10_000
    """Env steps between deployed-policy evaluations."""
    eval_episodes: int = 10
    """Episodes per evaluation."""
    video: bool = True
    """Write ``videos/eval_<step>`` of the first two episodes."""
    bc: bool = True
    """Compute the BC baseline (``bc.json``) in a child at the start."""
    bc_steps: int = 10_000
    """BC gradient steps."""
    bc_seeds: int | None = None
    """BC actors trained (seeds ``seed``, ``seed + 1``, …), the baseline being their mean;
    None: :data:`DEFAULT_BC_SEEDS` for the observation mode."""
    max_wall_s: float | None = None
    """Stop cleanly after this many seconds (benchmarks); None: only ``steps`` ends the run."""
    reset_every: int | None = None
    """Env steps between environment resets of each simulated robot (``--reset-every``,
    recorded as source ``flag``); None: the task's interval under :attr:`reset_schedule`;
    0: never."""
    reset_schedule: ResetSchedule = "paper"
    """The task's reset schedule when ``reset_every`` is None: ``paper`` (MEDAL++: every 10k
    steps for tabletop, door and peg; cube never) or ``earl`` (EARL's own: door and tabletop
    200k, peg 100k)."""
    operator: bool = False
    """Each runtime emulates the person watching a reset-free run (``resetfree-runtime
    --operator``): when a backward turn ends with the scene lost (the task's operator rule; only
    cube declares one) the environment is reset and counted as an intervention."""
    hz: float | None = 1000.0
    """Control rate of the runtimes (None: the runtime's default, 10 Hz). In lock-step the
    learner sets the pace; the rate only caps it, so the default (the runtime's highest) lets
    a simulated run go as fast as training allows. The cap binds only in the seed phase, where
    there is no training to wait for: 500 Hz held it to ~440 steps/s, 1000 Hz ~750 (door)."""
    device: str = "auto"
    """Learner torch device."""
    learner_threads: int = 1
    """Learner torch threads."""
    log_level: str = "INFO"
    """Log level of the children."""
    status_every: float = 1.0
    """Seconds between status polls."""
    display_every: float = 2.0
    """Seconds between progress lines."""
    start_timeout: float = 90.0
    """Seconds a child has to write its endpoints file."""
    stop_timeout: float = 60.0
    """Seconds a child has to exit after SIGTERM before it is killed."""
    stall_warn_s: float = 60.0
    """Seconds without new env steps before the display warns of a stall (with the figures)."""
    learner_module: str = "learner"
    """Module run as ``python -m`` for the learner (tests substitute a stand-in)."""
    runtime_module: str = "runtime"
    """Module run as ``python -m`` for each runtime (tests substitute a stand-in)."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"RunSpec.task must be one of {TASKS}, got {self.task!r}")
        if self.obs not in ("state", "pixels"):
            raise ValueError(f"RunSpec.obs must be state or pixels, got {self.obs!r}")
        for name in ("steps", "robots", "eval_every", "eval_episodes", "bc_steps", "learner_threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"RunSpec.{name} must be a positive int, got {value!r}")
        if self.bc_seeds is not None and (not isinstance(self.bc_seeds, int) or isinstance(self.bc_seeds, bool)
                                          or self.bc_seeds < 1):
            raise ValueError(f"RunSpec.bc_seeds must be a positive int or None, got {self.bc_seeds!r}")
        if self.reset_every is not None and (not isinstance(self.reset_every, int) or self.reset_every < 0):
            raise ValueError(f"RunSpec.reset_every must be a non-negative int or None, got {self.reset_every!r}")
        if self.reset_schedule not in RESET_SCHEDULES:
            raise ValueError(f"RunSpec.reset_schedule must be one of {RESET_SCHEDULES}, got {self.reset_schedule!r}")
        if self.operator and task_info(self.task).operator_rule is None:
            raise ValueError(f"RunSpec.operator: task {self.task} declares no rule for when a person must put its "
                             "scene back (cube does)")
        for name in ("max_wall_s", "hz"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"RunSpec.{name} must be positive or None, got {value!r}")
        for name in ("status_every", "display_every", "start_timeout", "stop_timeout", "stall_warn_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"RunSpec.{name} must be positive, got {getattr(self, name)!r}")

    def to_json(self) -> dict[str, Any]:
        """Returns the spec as JSON builtins (paths as strings) for ``run.json``, plus the
        environment-reset schedule the runtimes get: ``reset_interval`` (steps; null: never)
        and ``reset_source`` (``paper``, ``earl`` or ``flag``)."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, Path):
                out[key] = str(value)
        out["overrides"] = list(self.overrides)
        out["reset_interval"] = reset_interval(self)
        out["reset_source"] = reset_source(self)
        return out


DEFAULT_TASK = "door"
"""The task ``resetfree-sim`` runs with no ``--task``: door in state mode, from EARL's own five
forward and five backward demonstrations (shipped), with ``simulation/configs/door_state.toml``.
What a run shows, and when, is measured in docs/learning.md (the learning suite)."""
DEFAULT_OBS = "state"
"""The observation mode ``resetfree-sim`` runs with no ``--obs``."""


DEFAULT_BC_SEEDS: dict[str, int] = {"state": 3, "pixels": 1}
"""BC seeds per observation mode: with a handful of demos one BC seed is a coin toss (peg,
EARL's first five demos: 0.35 and 0.75), and a state BC costs about a minute; a pixel BC
costs far more on a CPU, so it gets one."""


def bc_seed_count(spec: RunSpec) -> int:
    """Returns how many BC seeds the baseline of ``spec`` trains."""
    return spec.bc_seeds if spec.bc_seeds is not None else DEFAULT_BC_SEEDS[spec.obs]


def reset_interval(spec: RunSpec) -> int | None:
    """Returns the steps between environment resets the runtimes get (None: never):
    ``spec.reset_every`` when given (0: never), else the task's interval under
    ``spec.reset_schedule`` (paper: 10k for tabletop, door and peg; earl: EARL's own)."""
    if spec.reset_every is not None:
        return spec.reset_every or None
    return task_info(spec.task).scheduled_reset_interval(spec.reset_schedule)


def reset_source(spec: RunSpec) -> str:
    """Returns where :func:`reset_interval` came from: ``flag`` (``--reset-every``), else the
    schedule's name (``paper`` or ``earl``)."""
    return "flag" if spec.reset_every is not None else spec.reset_schedule


RESUMED_FIELDS = ("task", "obs", "robots", "seed", "demos", "eval_every", "eval_episodes", "video", "bc_steps",
                  "bc_seeds", "reset_every", "reset_schedule")
"""What a resumed run takes from its ``run.json`` (the rest comes from the new command line)."""

LEGACY_RESET_SCHEDULE: dict[str, ResetSchedule] = {"tabletop": "paper"}
"""The schedule a run directory written before ``reset_schedule`` existed ran on (no
``--reset-every``): tabletop reset every 10k steps (= the paper's), every other task on
EARL's schedule, so resuming it keeps its schedule."""


def resumed_spec(spec: RunSpec) -> RunSpec:
    """Returns ``spec`` with :data:`RESUMED_FIELDS` read from ``spec.run_dir/run.json``.

    Raises OrchestratorError when the run directory has no readable ``run.json``.
    """
    path = spec.run_dir / "run.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise OrchestratorError(f"--resume {spec.run_dir}: cannot read {path}: {e}") from e
    patch: dict[str, Any] = {k: saved[k] for k in RESUMED_FIELDS if k in saved}
    if "reset_schedule" not in saved:
        patch["reset_schedule"] = LEGACY_RESET_SCHEDULE.get(patch.get("task", spec.task), "earl")
    if patch.get("demos") is not None:
        patch["demos"] = Path(patch["demos"])
    return dataclasses.replace(spec, **patch)


# ============================================================================ config
def preset_text(task: str, obs: str) -> str | None:
    """Returns the shipped preset ``simulation/configs/<task>_<obs>.toml``, or None."""
    from importlib import resources

    entry = resources.files("simulation").joinpath("configs", f"{task}_{obs}.toml")
    return entry.read_text(encoding="utf-8") if entry.is_file() else None


def resolve_config(spec: RunSpec) -> LearnerConfig:
    """Builds the learner config: profile → task preset → ``spec.config`` → ``spec.overrides``.

    On resume the run's ``config.toml`` replaces profile, preset and file. The run's seed
    is always ``spec.seed``. Raises ValueError on unknown keys or bad values.
    """
    saved = spec.run_dir / "config.toml"
    if spec.resume and saved.exists():
        cfg = LearnerConfig.from_toml(saved)
    else:
        cfg = profile(spec.profile or "sim")
        text = preset_text(spec.task, spec.obs)
        if text is not None:
            import tomllib

            cfg = LearnerConfig.from_dict(tomllib.loads(text), base=cfg)
        if spec.config is not None:
            cfg = LearnerConfig.from_toml(spec.config, base=cfg)
    return cfg.with_overrides([*spec.overrides, f"seed={spec.seed}"])


ANY_LOOPBACK_PORT = "tcp://127.0.0.1:0"
"""The endpoints the learner of a run binds: loopback, port 0 (the system picks a free port,
so runs side by side never collide); the ports it got are in ``RUN_DIR/endpoints.json``."""

CONFIG_HEADER = ("# The learner config of this run (profile -> task preset -> --config -> --set).\n"
                 "# [service] uplink/weights/control: port 0 asks for a free port at each start; the\n"
                 "# endpoints the learner bound are in endpoints.json beside this file.\n")
"""The comment at the top of a run's ``config.toml``."""


def run_config(spec: RunSpec) -> LearnerConfig:
    """Returns the learner config of the run: :func:`resolve_config` plus what the learner's
    command line sets (lock-step, run directory, device, threads, endpoints on any free port),
    so ``config.toml`` records what the learner really runs with. Raises ValueError."""
    return resolve_config(spec).with_overrides([
        'service.mode="lockstep"', f"service.run_dir={json.dumps(str(spec.run_dir))}",
        f"service.device={json.dumps(spec.device)}", f"service.torch_threads={spec.learner_threads}",
        *(f"service.{key}={json.dumps(ANY_LOOPBACK_PORT)}" for key in ("uplink", "weights", "control"))])


def config_toml(cfg: LearnerConfig) -> str:
    """Returns the text of a run's ``config.toml``: :data:`CONFIG_HEADER` and ``cfg``."""
    return CONFIG_HEADER + "\n" + to_toml(cfg.to_dict())


def to_toml(data: Mapping[str, Any]) -> str:
    """Returns ``LearnerConfig.to_dict()``-shaped data as TOML (None written as ``"none"``,
    which the config reads back as None). Raises ValueError for an unsupported value."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, Mapping)]
    for name, section in data.items():
        if isinstance(section, Mapping):
            lines += ["", f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in section.items()]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if value is None:
        return '"none"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value == math.inf else "-inf" if value == -math.inf
                                                 else repr(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ValueError(f"cannot write {type(value).__name__} {value!r} as TOML")


# ============================================================================ demos
"""State demos shipped with the package, ``<task>_<direction>.npz`` (their source and licence:
``NOTICE.md`` beside them): EARL's own demonstration sets of door, peg and tabletop (the
paper's protocol); ``door_one_demo/`` holds the first door episode of each direction alone."""


def bundled_demos(task: str, obs: ObsMode) -> dict[str, Path] | None:
    """Returns the shipped forward and backward demo files of ``task`` (direction → path), or
    None when the package has none for it (pixel runs never: the shipped demos are states)."""
    if obs != "state":
        return None
    paths = {d: BUNDLED_DEMOS / f"{task}_{d}.npz" for d in ("forward", "backward")}
    return paths if all(p.is_file() for p in paths.values()) else None


def prepare_demos(spec: RunSpec) -> Path:
    """Returns the demo directory: ``spec.demos``; else ``RUN_DIR/demos`` holding a copy of the
    task's shipped demos (:func:`bundled_demos`: EARL's own sets of door, peg and tabletop
    in state mode); else expert demos generated there (forward + backward, the task's
    default episode count). Files already there are kept (a resumed run).

    Blocks while the experts run. Raises OrchestratorError when ``spec.demos`` is not a
    directory with ``.npz`` files.
    """
    if spec.demos is not None:
        if not spec.demos.is_dir() or not any(spec.demos.glob("*.npz")):
            raise OrchestratorError(f"--demos {spec.demos}: not a directory of .npz demo files")
        return spec.demos
    from protocol.demos import save_demos
    from simulation.tools.demos_cli import CUBE_DEFAULT_EPISODES, EARL_DEFAULT_EPISODES, generate

    out = spec.run_dir / "demos"
    out.mkdir(parents=True, exist_ok=True)
    shipped = bundled_demos(spec.task, spec.obs)
    if shipped is not None:
        for direction, source in shipped.items():
            path = out / source.name
            if not path.exists():
                write_bytes_atomic(path, source.read_bytes())
                logger.info("copied the shipped %s %s demos to %s (their source: %s)", spec.task, direction,
                            path, BUNDLED_DEMOS / "NOTICE.md")
        return out
    episodes = CUBE_DEFAULT_EPISODES if spec.task == "cube" else EARL_DEFAULT_EPISODES
    for direction in ("forward", "backward"):
        path = out / f"{spec.task}_{direction}.npz"
        if path.exists():
            continue
        demos = generate(spec.task, direction, episodes=episodes, obs=spec.obs, seed=spec.seed,
                         split="id" if spec.task == "cube" else None)
        save_demos(path, demos)
        logger.info("wrote %s: %d episodes, %d transitions", path, demos.num_episodes, demos.num_transitions)
    return out
