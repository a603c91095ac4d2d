"""The environment-reset schedule: the paper's 10k steps by default for the EARL tasks,
EARL's own one flag away, ``--reset-every N`` over both, and the run directory saying which."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.config import RuntimeConfig
from simulation.app.__main__ import build_parser, reset_text, spec_from_args
from simulation.app.orchestrator import RunSpec, resumed_spec
from simulation.app.practice import PracticeConfig
from simulation.app.run_commands import runtime_command
from simulation.app.run_setup import reset_interval, reset_source
from simulation.tasks import task_info
from simulation.tasks.base import PAPER_RESET_INTERVAL, TaskInfo

PAPER = {"tabletop": 10_000, "door": 10_000, "peg": 10_000, "cube": None}
EARL = {"tabletop": 200_000, "door": 200_000, "peg": 100_000, "cube": None}


@pytest.mark.parametrize("task", sorted(PAPER))
def test_task_info_holds_both_schedules(task: str) -> None:
    info = task_info(task)
    assert info.reset_interval == PAPER[task] and info.earl_reset_interval == EARL[task]
    assert info.scheduled_reset_interval("paper") == PAPER[task]
    assert info.scheduled_reset_interval("earl") == EARL[task]
    assert PAPER_RESET_INTERVAL == 10_000
    with pytest.raises(ValueError, match="reset schedule"):
        info.scheduled_reset_interval("authors")  # type: ignore[arg-type]


def test_task_info_requires_and_validates_its_declarations() -> None:
    good = dict(name="t", eval_horizon=10, reset_interval=5, earl_reset_interval=None, move_scale=0.01,
                success_threshold=0.1, cameras=("c",), state_dim=2, proprio_dim=2, action_dim=2,
                state_goals=((1.0,),), operator_rule=None)
    TaskInfo(**good)  # type: ignore[arg-type]
    for missing in ("move_scale", "earl_reset_interval", "reset_interval", "state_goals"):
        with pytest.raises(TypeError, match=missing):
            TaskInfo(**{k: v for k, v in good.items() if k != missing})  # type: ignore[arg-type]
    for field, bad in [("move_scale", 0.0), ("move_scale", -0.01), ("move_scale", float("nan")),
                       ("move_scale", float("inf")), ("move_scale", "0.01"), ("earl_reset_interval", 0),
                       ("reset_interval", -5), ("reset_interval", 2.5), ("state_goals", ((1.0, 2.0),)),
                       ("state_goals", ((1.0,), (1.0, 2.0))), ("state_goals", ((float("nan"),),))]:
        with pytest.raises(ValueError, match=field):
            TaskInfo(**{**good, field: bad})  # type: ignore[arg-type]


# ---------------------------------------------------------------------- resetfree-sim
def _spec(tmp_path: Path, task: str, **kw: object) -> RunSpec:
    return RunSpec(run_dir=tmp_path / "run", task=task, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("task", sorted(PAPER))
def test_run_spec_default_earl_and_flag(tmp_path: Path, task: str) -> None:
    default = _spec(tmp_path, task)
    assert (reset_interval(default), reset_source(default)) == (PAPER[task], "paper")
    earl = _spec(tmp_path, task, reset_schedule="earl")
    assert (reset_interval(earl), reset_source(earl)) == (EARL[task], "earl")
    flag = _spec(tmp_path, task, reset_every=5_000, reset_schedule="earl")
    assert (reset_interval(flag), reset_source(flag)) == (5_000, "flag")
    never = _spec(tmp_path, task, reset_every=0)
    assert (reset_interval(never), reset_source(never)) == (None, "flag")
    for spec, every in ((default, PAPER[task]), (earl, EARL[task]), (flag, 5_000), (never, None)):
        command = runtime_command(spec, 0, "tcp://127.0.0.1:4000", max_steps=10, switch_every=200)
        assert command[command.index("--reset-every") + 1] == str(every or 0)
    with pytest.raises(ValueError, match="reset_schedule"):
        _spec(tmp_path, task, reset_schedule="authors")


def test_run_json_records_the_schedule_used(tmp_path: Path) -> None:
    for kw, recorded in [({}, (10_000, "paper")), ({"reset_schedule": "earl"}, (200_000, "earl")),
                         ({"reset_every": 2_500}, (2_500, "flag")), ({"reset_every": 0}, (None, "flag"))]:
        saved = json.loads(json.dumps(_spec(tmp_path, "door", **kw).to_json()))
        assert (saved["reset_interval"], saved["reset_source"]) == recorded
    # what resetfree-sim writes as run.json is that dict (Orchestrator._prepare)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps(_spec(tmp_path, "peg", reset_schedule="earl").to_json()))
    resumed = resumed_spec(RunSpec(run_dir=run, resume=True))
    assert (resumed.task, resumed.reset_schedule, reset_interval(resumed)) == ("peg", "earl", 100_000)


@pytest.mark.parametrize("task, schedule", [("door", "earl"), ("peg", "earl"), ("tabletop", "paper")])
def test_resuming_a_run_from_before_the_schedule_keeps_its_schedule(tmp_path: Path, task: str, schedule: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    legacy = _spec(tmp_path, task).to_json()
    for key in ("reset_schedule", "reset_interval", "reset_source"):
        del legacy[key]
    (run / "run.json").write_text(json.dumps(legacy))
    resumed = resumed_spec(RunSpec(run_dir=run, resume=True))
    # before: door and peg ran on EARL's schedule, tabletop every 10k (= the paper's)
    assert resumed.reset_schedule == schedule and reset_interval(resumed) == {"door": 200_000, "peg": 100_000,
                                                                              "tabletop": 10_000}[task]


def test_resetfree_sim_flags(tmp_path: Path) -> None:
    parser = build_parser()

    def spec(*argv: str) -> RunSpec:
        return spec_from_args(parser.parse_args(["--run-dir", str(tmp_path / "r"), *argv]))

    assert (spec().reset_schedule, spec().reset_every) == ("paper", None)
    assert reset_interval(spec()) == 10_000  # the default task is door
    assert reset_interval(spec("--reset-schedule", "earl")) == 200_000
    assert reset_interval(spec("--task", "peg", "--reset-schedule", "earl")) == 100_000
    assert (reset_interval(spec("--reset-every", "3000")), reset_source(spec("--reset-every", "3000"))) == (3000, "flag")
    assert reset_text(spec()) == "every 10,000 steps (paper)"
    assert reset_text(spec("--task", "cube")) == "never (paper)"
    with pytest.raises(SystemExit):
        parser.parse_args(["--reset-every", "3000", "--reset-schedule", "earl"])  # one or the other
    with pytest.raises(SystemExit):
        parser.parse_args(["--reset-schedule", "authors"])


# ---------------------------------------------------------------------- resetfree-runtime
def _runtime_args(*argv: str) -> RuntimeConfig:
    from runtime.__main__ import runtime_config

    return runtime_config(["--robot", "sim:door", *argv])


@pytest.mark.parametrize("argv, interval, source", [
    ((), 10_000, "paper"), (("--reset-schedule", "paper"), 10_000, "paper"),
    (("--reset-schedule", "earl"), 200_000, "earl"), (("--reset-every", "4000"), 4_000, "flag"),
    (("--reset-every", "0"), None, "flag")])
def test_runtime_flags_pick_the_interval(argv: tuple[str, ...], interval: int | None, source: str) -> None:
    from runtime.__main__ import resolve_facts, robot_setup
    from runtime.robot_kinds import ROBOTS

    args = _runtime_args(*argv)
    robot, _ = ROBOTS.build(args.robot.spec, robot_setup(args))  # built, not connected
    facts, where = resolve_facts(args, robot)
    assert (facts.reset_interval, where) == (interval, source)
    assert facts.position_scale == 0.01  # the door's declared move_scale


def test_runtime_refuses_contradictory_reset_flags() -> None:
    from runtime.__main__ import check_reset_flags
    from runtime.robots import RobotSpecError

    with pytest.raises(RobotSpecError, match="not both"):
        check_reset_flags(_runtime_args("--reset-every", "100", "--reset-schedule", "earl"))
    with pytest.raises(RobotSpecError, match=">= 0"):
        check_reset_flags(_runtime_args("--reset-every", "-1"))
    with pytest.raises(SystemExit):
        _runtime_args("--reset-schedule", "authors")


# ---------------------------------------------------------------------- simulation.app.practice
@pytest.mark.parametrize("task", ["tabletop", "door", "peg"])
def test_practice_config_schedule(task: str) -> None:
    assert PracticeConfig(task=task).reset_interval == PAPER[task]
    assert PracticeConfig(task=task, reset_schedule="earl").reset_interval == EARL[task]
    assert PracticeConfig(task=task, reset_every=300, reset_schedule="earl").reset_interval == 300
    assert PracticeConfig(task=task, reset_every=0).reset_interval is None
    with pytest.raises(ValueError, match="reset_schedule"):
        PracticeConfig(task=task, reset_schedule="authors")  # type: ignore[arg-type]
