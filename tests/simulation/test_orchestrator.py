"""resetfree-sim's orchestrator: helpers, child processes, and whole runs against stand-ins.

The stand-ins are this module run as ``python -m tests.simulation.test_orchestrator``: a
learner that binds a real control server and weights publisher (port 0), writes
``endpoints.json``, counts env steps at a fixed rate and publishes real forward actors; and
a runtime that answers status, records an e-stop and exits after its ``--max-steps``. They
speak the integration contract's command lines, so the orchestrator runs unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import asyncio
import io
import json
import os
import signal
import sys
import time
import types
from pathlib import Path

import pytest

from learner.config import LearnerConfig, profile
from learner.networks import NetworkConfig
from simulation.app.orchestrator import (ChildProcess, Orchestrator, OrchestratorError, RunSpec, bc_command, learner_command,
                                     pick_endpoint, read_endpoints, resolve_config, resumed_spec, runtime_command,
                                     steps_per_runtime, to_toml)
from simulation.app.run_setup import config_toml, run_config
from simulation.app.progress import ProgressDisplay, Snapshot, format_line

REPO = Path(__file__).resolve().parents[2]
TINY = ("network.hidden_dim=16",)


# ============================================================================ helpers
@pytest.mark.parametrize("name", ["sim", "robot"])
def test_toml_round_trip_of_profiles(tmp_path: Path, name: str) -> None:
    cfg = profile(name).with_overrides(["network.cameras=['wrist']", "seed=7"])
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg.to_dict()))
    assert LearnerConfig.from_toml(path) == cfg


def test_resolve_config_layers_file_overrides_and_seed(tmp_path: Path) -> None:
    user = tmp_path / "user.toml"
    user.write_text("[agent]\nlr = 1e-4\n[network]\nhidden_dim = 64\n")
    spec = RunSpec(run_dir=tmp_path / "run", config=user, overrides=("network.hidden_dim=32",), seed=5)
    cfg = resolve_config(spec)
    assert (cfg.agent.lr, cfg.network.hidden_dim, cfg.seed) == (1e-4, 32, 5)
    with pytest.raises(ValueError, match="nope"):
        resolve_config(RunSpec(run_dir=tmp_path / "run", overrides=("agent.nope=1",)))


def test_cube_on_states_gives_the_robot_profiles_discriminators_the_state(tmp_path: Path) -> None:
    import torch

    from learner.discriminators import DiscriminatorError
    from learner.trainer import MedalTrainer
    from simulation.tools.demos_cli import generate
    from simulation.app.practice import state_spec

    demos = generate("cube", "forward", episodes=1, obs="state", max_steps=20, seed=0)
    # the robot profile's discriminators see the wrist camera only, which a state observation lacks
    with pytest.raises(DiscriminatorError, match="wrist"):
        MedalTrainer(profile("robot"), state_spec("cube"), 5, (demos, None))
    cfg = resolve_config(RunSpec(run_dir=tmp_path / "run", task="cube", obs="state", profile="robot"))
    assert (cfg.vice.cameras, cfg.medal.cameras) == (None, None)
    trainer = MedalTrainer(cfg, state_spec("cube"), 5, (demos, None))
    assert trainer.vice.logits({"state": torch.as_tensor(demos.observations["state"][:3])}).shape == (3,)


def test_the_default_run_uses_the_door_preset(tmp_path: Path) -> None:
    from simulation.app.run_setup import DEFAULT_OBS, DEFAULT_TASK

    assert (DEFAULT_TASK, DEFAULT_OBS) == ("door", "state")
    spec = RunSpec(run_dir=tmp_path / "run", task=DEFAULT_TASK, obs=DEFAULT_OBS)
    cfg = resolve_config(spec)
    sim = profile("sim")
    # the preset changes only the width and the forward reward form; the rest is the profile's
    assert (cfg.network.hidden_dim, sim.network.hidden_dim) == (256, 1024)
    assert (cfg.schedule.vice_reward_form, cfg.network.num_critics) == ("log_d", sim.network.num_critics)
    assert cfg.vice == sim.vice and cfg.medal == sim.medal and cfg.agent == sim.agent
    # the command line still wins over the preset
    spec = dataclasses.replace(spec, overrides=("vice.updates_per_round=2",))
    assert resolve_config(spec).vice.updates_per_round == 2


def test_resume_reads_run_json_and_config(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(OrchestratorError, match="run.json"):
        resumed_spec(RunSpec(run_dir=run, resume=True))
    (run / "run.json").write_text(json.dumps(RunSpec(run_dir=run, task="door", robots=3, seed=4).to_json()))
    (run / "config.toml").write_text(to_toml(profile("sim").with_overrides(["agent.lr=2e-4"]).to_dict()))
    spec = resumed_spec(RunSpec(run_dir=run, resume=True, steps=999))
    assert (spec.task, spec.robots, spec.seed, spec.steps) == ("door", 3, 4, 999)
    assert resolve_config(spec).agent.lr == 2e-4


def test_config_toml_records_the_endpoints_the_learner_binds(tmp_path: Path) -> None:
    spec = RunSpec(run_dir=tmp_path, task="door")
    path = tmp_path / "config.toml"
    path.write_text(config_toml(run_config(spec)))
    saved = LearnerConfig.from_toml(path)
    learner = learner_command(spec, saved, tmp_path / "demos", resume=False)
    # what the learner is told to bind (any free port), not the profile's 5555/5556/5557
    assert (saved.service.uplink, saved.service.weights, saved.service.control) == (
        learner[learner.index("--bind") + 1], learner[learner.index("--weights-bind") + 1],
        learner[learner.index("--control-bind") + 1]) == ("tcp://127.0.0.1:0",) * 3
    text = path.read_text()
    assert ":5555" not in text
    assert any("endpoints.json" in line for line in text.splitlines() if line.startswith("#"))  # where the ports are
    assert (saved.service.mode, saved.service.run_dir) == ("lockstep", str(tmp_path))


def test_spec_validation_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="RunSpec.robots"):
        RunSpec(run_dir=tmp_path, robots=0)
    with pytest.raises(ValueError, match="RunSpec.task"):
        RunSpec(run_dir=tmp_path, task="kitchen")
    with pytest.raises(ValueError, match="RunSpec.bc_seeds"):
        RunSpec(run_dir=tmp_path, bc_seeds=0)


def test_steps_per_runtime() -> None:
    assert steps_per_runtime(1000, 0, 3) == 334
    assert steps_per_runtime(1000, 400, 2) == 300
    assert steps_per_runtime(1000, 1000, 2) == 0 and steps_per_runtime(1000, 1200, 1) == 0


def test_commands_follow_the_contract(tmp_path: Path) -> None:
    spec = RunSpec(run_dir=tmp_path, task="door", obs="pixels", seed=3, hz=20)
    learner = learner_command(spec, profile("sim"), tmp_path / "demos", resume=False)
    assert learner[1:3] == ["-m", "learner"]
    for flag, value in [("--bind", "tcp://127.0.0.1:0"), ("--weights-bind", "tcp://127.0.0.1:0"),
                        ("--control-bind", "tcp://127.0.0.1:0"), ("--mode", "lockstep"), ("--run-dir", str(tmp_path)),
                        ("--demos", str(tmp_path / "demos")), ("--config", str(tmp_path / "config.toml"))]:
        assert learner[learner.index(flag) + 1] == value
    assert "--resume" in learner_command(spec, profile("sim"), tmp_path, resume=True)
    runtime = runtime_command(spec, 2, "tcp://127.0.0.1:4000", max_steps=50, switch_every=200)
    for flag, value in [("--robot", "sim:door"), ("--learner", "tcp://127.0.0.1:4000"), ("--obs", "pixels"),
                        ("--seed", "5"), ("--max-steps", "50"), ("--switch-every", "200"), ("--hz", "20"),
                        ("--control-bind", "tcp://127.0.0.1:0")]:
        assert runtime[runtime.index(flag) + 1] == value
    assert "--lockstep" in runtime and runtime[runtime.index("--spill-dir") + 1].endswith("robot2")
    assert runtime[runtime.index("--reset-every") + 1] == "10000"  # the paper's schedule, always explicit
    from runtime.__main__ import runtime_config

    config = runtime_config(runtime[3:])  # the real runtime takes every flag
    assert config.isolation.priority == "none" and config.isolation.cpu_latency_us is None  # lock-step: no RT levers
    tabletop = runtime_command(dataclasses.replace(spec, task="tabletop"), 0, "tcp://127.0.0.1:4000",
                               max_steps=50, switch_every=200)
    assert tabletop[tabletop.index("--reset-every") + 1] == "10000"  # the paper's schedule
    earl = runtime_command(dataclasses.replace(spec, reset_schedule="earl"), 0, "tcp://127.0.0.1:4000",
                           max_steps=50, switch_every=200)
    assert earl[earl.index("--reset-every") + 1] == "200000"  # EARL's door schedule
    cube = runtime_command(dataclasses.replace(spec, task="cube"), 0, "tcp://127.0.0.1:4000",
                           max_steps=50, switch_every=200)
    assert cube[cube.index("--reset-every") + 1] == "0"  # never
    assert "--operator" not in cube
    operated = runtime_command(dataclasses.replace(spec, task="cube", operator=True), 0, "tcp://127.0.0.1:4000",
                               max_steps=50, switch_every=200)
    assert "--operator" in operated and runtime_config(operated[3:]).robot.operator
    with pytest.raises(ValueError, match="declares no rule"):
        dataclasses.replace(spec, operator=True)  # door
    demos = tmp_path / "demos"
    assert bc_command(spec, demos)[bc_command(spec, demos).index("--seeds") + 1] == "1"  # pixels: one BC seed
    state = dataclasses.replace(spec, obs="state")
    assert bc_command(state, demos)[bc_command(state, demos).index("--seeds") + 1] == "3"
    five = dataclasses.replace(spec, bc_seeds=5)
    assert bc_command(five, demos)[bc_command(five, demos).index("--seeds") + 1] == "5"


def test_endpoints_file_forms(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.json"
    assert read_endpoints(path) is None
    path.write_text(json.dumps({"endpoints": {"control": "tcp://127.0.0.1:1", "pid": 3}}))
    assert read_endpoints(path) == {"control": "tcp://127.0.0.1:1"}
    path.write_text(json.dumps({"uplink_endpoint": "tcp://a:1"}))
    assert pick_endpoint(read_endpoints(path) or {}, "uplink") == "tcp://a:1"
    with pytest.raises(OrchestratorError, match="weights"):
        pick_endpoint({"uplink": "x"}, "weights")
    path.write_text("[1, 2]")
    with pytest.raises(OrchestratorError, match="object"):
        read_endpoints(path)


def test_child_process_stop_tail_and_kill(tmp_path: Path) -> None:
    async def scenario() -> None:
        polite = ChildProcess("polite", [sys.executable, "-c", "import time; print('hello from child', flush=True); "
                                         "time.sleep(60)"], tmp_path / "polite.log")
        stubborn = ChildProcess("stubborn", [sys.executable, "-c", "import signal, time; "
                                             "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
                                             "time.sleep(60)"], tmp_path / "stubborn.log")
        polite.start()
        stubborn.start()
        assert await polite.wait(0.2) is None and polite.running
        deadline = time.monotonic() + 10
        while "ready" not in stubborn.tail() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await polite.stop(5.0) == -signal.SIGTERM
        assert "hello from child" in polite.tail()
        assert await stubborn.stop(0.5) == -signal.SIGKILL  # ignored SIGTERM: killed at the deadline
        assert os.getpgid(os.getpid()) != polite.pid  # own session: a terminal's Ctrl-C skips it

    asyncio.run(scenario())


def test_progress_display_throttles_and_refreshes_in_place() -> None:
    out = io.StringIO()
    display = ProgressDisplay(out, interval=2.0, tty=False)
    assert display.update(Snapshot(env_steps=0), now=0.0) is not None
    assert display.update(Snapshot(env_steps=10), now=1.0) is None  # within the interval
    line = display.update(Snapshot(env_steps=400, updates=100, utd=1.0, agent="backward", success=0.5,
                                   success_step=300, bc_success=0.8, target_steps=1000), now=2.0)
    assert line is not None and "200.0 steps/s" in line and "400/1,000" in line and "acting: backward" in line
    assert "updates 100 (50.0/s, UTD 1.00)" in line
    assert "success 50% @300" in line and "BC 80%" in line and out.getvalue().count("\n") == 2
    tty = io.StringIO()
    live = ProgressDisplay(tty, tty=True)
    live.update(Snapshot(env_steps=1), now=0.0)
    live.message("eval done")
    live.update(Snapshot(env_steps=2), now=5.0)
    live.close()
    assert tty.getvalue().startswith("\rsteps 1") and "\neval done\n\rsteps 2" in tty.getvalue()


def test_progress_line_says_what_the_seed_phase_and_bc_are() -> None:
    seed = format_line(Snapshot(env_steps=3400, seed_phase=True, seed_steps=10_000, agent="forward",
                                target_steps=200_000), 512.0, 0.0)
    assert seed.startswith("seed phase (random actions) 3,400/10,000  512.0 steps/s"), seed
    assert "updates" not in seed and "UTD" not in seed  # nothing is trained yet
    assert "success: no eval yet" in seed and seed.endswith("BC training…")
    assert format_line(Snapshot(seed_phase=True), 0.0, 0.0).startswith("seed phase (random actions) 0  ")
    after = format_line(Snapshot(env_steps=12_000, seed_steps=10_000, target_steps=200_000), 0.0, 0.0)
    assert after.startswith("steps 12,000/200,000") and "seed phase" not in after
    assert format_line(Snapshot(bc_success=1.0), 0.0, 0.0).endswith("BC 100%")
    assert format_line(Snapshot(bc_state="failed"), 0.0, 0.0).endswith("BC failed")
    assert "BC" not in format_line(Snapshot(bc_state="off"), 0.0, 0.0)  # --no-bc: nothing to wait for
    assert "success: evaluating…" in format_line(Snapshot(evaluating=True), 0.0, 0.0)


def test_progress_line_keeps_within_120_characters() -> None:
    # a long run at its widest: seven-digit steps, an evaluation running, BC known
    widest = Snapshot(env_steps=999_999, updates=989_999, utd=1.0, agent="backward", success=1.0,
                      success_step=990_012, bc_success=1.0, target_steps=1_000_000, evaluating=True)
    line = format_line(widest, 123.4, 123.4)
    assert len(line) <= 120, line
    # progress, success and BC stay; the details go
    assert "steps 999,999/1,000,000" in line and "success 100% @990,012 (evaluating…)" in line
    assert line.endswith("BC 100%") and "updates" not in line
    for snap in (widest, dataclasses.replace(widest, env_steps=134_000, updates=124_000, target_steps=200_000,
                                            success_step=130_012, evaluating=False),
                 Snapshot(env_steps=3400, seed_phase=True, seed_steps=10_000, agent="backward")):
        assert len(format_line(snap, 1234.5, 1234.5)) <= 120
    # the default 200k-step run on a CPU keeps every detail
    typical = dataclasses.replace(widest, env_steps=134_000, updates=124_000, target_steps=200_000,
                                  success=0.8, success_step=130_012, evaluating=False)
    full = format_line(typical, 25.1, 25.0)
    assert len(full) <= 120 and "updates 124,000 (25.0/s, UTD 1.00)" in full and "acting: backward" in full
    assert len(format_line(typical, 25.1, 25.0, width=80)) <= 80


def test_a_resumed_run_shows_its_latest_evaluation(tmp_path: Path) -> None:
    from simulation.app.evaluator import EvalRecord, append_eval

    run = tmp_path / "run"
    first = Orchestrator(RunSpec(run_dir=run, task="door", bc=False), ProgressDisplay(io.StringIO(), tty=False))
    first._prepare()
    before = first.snapshot()
    assert before.success is None and before.seed_steps == 10_000 and before.bc_state == "off"  # --no-bc
    for step, rate in ((20_000, 0.7), (10_000, 0.4)):  # evals.csv as an interrupted run left it
        append_eval(run / "evals.csv", EvalRecord(step=step, success_rate=rate, mean_return=1.0, returns=(1.0,),
                                                  wall_s=60.0, weights_version=step))
    resumed = Orchestrator(RunSpec(run_dir=run, resume=True), ProgressDisplay(io.StringIO(), tty=False))
    resumed._prepare()
    snap = resumed.snapshot()
    assert (snap.success, snap.success_step) == (0.7, 20_000)
    assert "success 70% @20,000" in format_line(snap, 0.0, 0.0)


def test_stall_is_reported_once_with_the_lockstep_figures(tmp_path: Path) -> None:
    out = io.StringIO()
    orchestrator = Orchestrator(RunSpec(run_dir=tmp_path, stall_warn_s=0.05), ProgressDisplay(out, tty=False))
    orchestrator.learner_detail = {"env_steps": 3200, "trained_position": 3200}
    orchestrator.runtime_details = [{"acked_seq": 3200, "trained_through": 3184, "next_seq": 3200}]
    orchestrator._check_stall()
    time.sleep(0.1)
    orchestrator._check_stall()
    orchestrator._check_stall()
    assert out.getvalue().count("warning: no env steps") == 1 and "trained_through 3184" in out.getvalue()
    orchestrator.learner_detail = {"env_steps": 3216}
    orchestrator._check_stall()  # moving again: a later stall is reported anew
    time.sleep(0.1)
    orchestrator._check_stall()
    assert out.getvalue().count("warning: no env steps") == 2


def test_bc_baseline_takes_forward_demos_only(tmp_path: Path) -> None:
    from protocol.demos import save_demos
    from simulation.app.bc_baseline import BaselineError, forward_demos
    from simulation.tools.demos_cli import generate

    with pytest.raises(BaselineError, match="no forward demos"):
        forward_demos(tmp_path, "tabletop", "state")
    save_demos(tmp_path / "b.npz", generate("tabletop", "backward", episodes=1))
    with pytest.raises(BaselineError, match="no forward demos"):
        forward_demos(tmp_path, "tabletop", "state")
    save_demos(tmp_path / "f1.npz", generate("tabletop", "forward", episodes=1))
    save_demos(tmp_path / "f2.npz", generate("tabletop", "forward", episodes=2, seed=3))
    assert forward_demos(tmp_path, "tabletop", "state").num_episodes == 3
    with pytest.raises(BaselineError, match="run is door/state"):
        forward_demos(tmp_path, "door", "state")


def test_earl_state_runs_start_from_the_shipped_earl_demos(tmp_path: Path) -> None:
    from protocol.demos import load_demos
    from simulation.app.run_setup import bundled_demos, prepare_demos
    from simulation.earl_import import BUNDLED_DEMOS

    assert bundled_demos("door", "pixels") is None and bundled_demos("cube", "state") is None
    assert bundled_demos("peg", "state") is not None and bundled_demos("tabletop", "state") is not None
    assert (BUNDLED_DEMOS / "NOTICE.md").is_file()
    spec = RunSpec(run_dir=tmp_path / "run", task="door")
    out = prepare_demos(spec)
    assert out == tmp_path / "run" / "demos"
    for direction in ("forward", "backward"):
        copied = out / f"door_{direction}.npz"
        assert copied.read_bytes() == (BUNDLED_DEMOS / f"door_{direction}.npz").read_bytes()
        demos = load_demos(copied)
        assert (demos.meta.task, demos.meta.direction, demos.meta.source) == ("door", direction, "earl")
        assert demos.num_episodes == 5 and bool(demos.episode_success.all())  # EARL's whole set
    (out / "door_forward.npz").write_bytes(b"kept")  # a resumed run keeps what it has
    prepare_demos(spec)
    assert (out / "door_forward.npz").read_bytes() == b"kept"


def test_bc_baseline_over_seeds_reports_each_and_their_mean(tmp_path: Path) -> None:
    from learner.bc import BCConfig
    from protocol.demos import save_demos
    from simulation.app.bc_baseline import BaselineConfig, bc_seeds_text, run_baseline
    from simulation.tools.demos_cli import generate

    save_demos(tmp_path / "f.npz", generate("tabletop", "forward", episodes=1))
    cfg = BaselineConfig(task="tabletop", episodes=2, bc=BCConfig(steps=20, batch_size=16, seed=4), seeds=2)
    result = run_baseline(cfg, tmp_path, NetworkConfig(hidden_dim=16))
    assert [p["seed"] for p in result["per_seed"]] == [4, 5] and result["seeds"] == 2
    assert len(result["returns"]) == 4
    assert result["success_rate"] == pytest.approx(sum(p["success_rate"] for p in result["per_seed"]) / 2)
    assert bc_seeds_text(result).startswith(", mean of 2 seeds: ")
    assert bc_seeds_text({"success_rate": 0.5}) == ""
    with pytest.raises(ValueError, match="BaselineConfig.seeds"):
        BaselineConfig(task="tabletop", seeds=0)


# ============================================================================ whole runs with stand-ins
def test_the_outcome_waits_for_the_learners_last_updates(tmp_path: Path) -> None:
    """In lock-step the updates for the runtimes' last batches run after the runtimes stopped,
    and a status polled during the run may fall between a batch's ingest and its updates: a
    clean end polls the learner until it owes no update, so the outcome's ``env_steps`` and
    ``updates`` are the run's final figures (updates = post-seed steps at UTD 1)."""
    orchestrator = Orchestrator(RunSpec(run_dir=tmp_path), ProgressDisplay(io.StringIO(), tty=False))
    figures = iter([{"env_steps": 1040, "updates": 30, "updates_owed": 10},
                    {"env_steps": 1040, "updates": 38, "updates_owed": 2},
                    {"env_steps": 1040, "updates": 40, "updates_owed": 0}])
    polls: list[int] = []

    async def poll() -> None:
        orchestrator.learner_detail = next(figures)
        polls.append(orchestrator.learner_detail["updates"])

    orchestrator._poll_learner = poll  # type: ignore[method-assign]
    orchestrator.learner = types.SimpleNamespace(running=True)  # type: ignore[assignment]
    asyncio.run(orchestrator._settle_learner())
    assert polls == [30, 38, 40] and orchestrator.learner_detail["updates"] == 40
    # a learner that does not report the figure (an older one, a stand-in) is polled once
    orchestrator.learner_detail = {}
    figures = iter([{"env_steps": 5, "updates": 5}])
    asyncio.run(orchestrator._settle_learner())
    assert orchestrator.learner_detail == {"env_steps": 5, "updates": 5}


def _spec(tmp_path: Path, **kw: object) -> RunSpec:
    base: dict[str, object] = dict(run_dir=tmp_path / "run", task="tabletop", steps=600, robots=2, eval_every=200,
                                   eval_episodes=2, bc_steps=30, overrides=TINY, status_every=0.2, display_every=0.5,
                                   stop_timeout=15.0, start_timeout=60.0, log_level="WARNING",
                                   learner_module="tests.simulation.test_orchestrator",
                                   runtime_module="tests.simulation.test_orchestrator")
    base.update(kw)
    return RunSpec(**base)  # type: ignore[arg-type]


@pytest.fixture
def standins(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("FAKE_STEPS_CAP", "600")
    return monkeypatch


def _run(spec: RunSpec) -> tuple[Orchestrator, str]:
    out = io.StringIO()
    orchestrator = Orchestrator(spec, ProgressDisplay(out, interval=0.5, tty=False))
    outcome = asyncio.run(orchestrator.run())
    orchestrator.outcome = outcome  # type: ignore[attr-defined]
    return orchestrator, out.getvalue()


def test_full_run_with_standins(tmp_path: Path, standins: pytest.MonkeyPatch) -> None:
    orchestrator, shown = _run(_spec(tmp_path))
    outcome = orchestrator.outcome  # type: ignore[attr-defined]
    run = tmp_path / "run"
    assert outcome.reason == "finished" and outcome.ok, (outcome, shown)
    assert outcome.exit_codes == {"learner": 0, "runtime0": 0, "runtime1": 0, "bc": 0}
    assert outcome.env_steps == 600 and outcome.resets == 2 and outcome.bc_success is not None
    assert outcome.bc_success_seeds is not None and len(outcome.bc_success_seeds) == 3  # state mode: three seeds
    rows = (run / "evals.csv").read_text().splitlines()
    assert rows[0].startswith("step,success_rate") and len(rows) >= 3  # >= 1 during the run + the final one
    assert rows[-1].startswith("600,")
    assert (run / "curves.png").stat().st_size > 0 and list((run / "videos").glob("eval_*.mp4"))
    assert {p.name for p in (run / "demos").iterdir()} == {"tabletop_forward.npz", "tabletop_backward.npz"}
    assert LearnerConfig.from_toml(run / "config.toml").network.hidden_dim == 16
    run_json = json.loads((run / "run.json").read_text())
    assert run_json["robots"] == 2
    assert (run_json["reset_interval"], run_json["reset_source"]) == (10_000, "paper")  # the schedule used
    assert {p.name for p in (run / "logs").iterdir()} >= {"learner.log", "runtime0.log", "runtime1.log", "bc.log"}
    assert json.loads((run / "ckpt-600" / "state.json").read_text())["env_steps"] == 600  # SIGTERM → checkpoint
    # the runtimes were asked for their share of the steps left, with the learner's switch interval
    command = (run / "logs" / "runtime1.log").read_text()
    assert 0 < int(command.split("--max-steps ")[1].split()[0]) <= 300 and "--switch-every 200" in command
    assert "steps/s" in shown and "eval @" in shown
    # the stand-in learner publishes nothing before 300 steps (its seed phase): the evaluation
    # due at 200 waited for the first forward policy instead of failing
    assert "evaluation due at 200 env steps: no forward policy yet" in shown, shown
    # every evaluation ran a published policy (its step label is the last status poll's
    # env_steps, which can trail the publication at 300 by one poll)
    assert all(int(r.split(",")[-1]) >= 0 for r in rows[1:]) and int(rows[1].split(",")[0]) >= 200, rows


def test_dead_runtime_is_reported_and_the_rest_stop(tmp_path: Path, standins: pytest.MonkeyPatch) -> None:
    standins.setenv("FAKE_RUNTIME_EXIT", "3")
    orchestrator, shown = _run(_spec(tmp_path, robots=1, bc=False, video=False))
    outcome = orchestrator.outcome  # type: ignore[attr-defined]
    assert outcome.reason == "failed: runtime0 exited with code 3" and not outcome.ok
    assert "exited unexpectedly with code 3" in shown and "fake runtime failing on purpose" in shown
    assert outcome.exit_codes["learner"] == 0  # stopped cleanly: it checkpointed
    assert list((tmp_path / "run").glob("ckpt-*"))


@pytest.mark.slow  # two runs back to back: ~12 s on the shared 2-core machine
def test_interrupt_then_resume_continues_steps_and_evals(tmp_path: Path, standins: pytest.MonkeyPatch) -> None:
    standins.setenv("FAKE_STEPS_CAP", "100000")
    spec = _spec(tmp_path, robots=1, steps=100_000, bc=False, video=False)

    async def interrupted() -> Orchestrator:
        orchestrator = Orchestrator(spec, ProgressDisplay(io.StringIO(), interval=0.5, tty=False))
        task = asyncio.create_task(orchestrator.run())
        deadline = time.monotonic() + 60
        while (orchestrator.evaluation is None or not orchestrator.evaluation.evaluator.records
               or not orchestrator.runtime_details or not orchestrator.runtime_details[0]):
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.1)
        orchestrator.interrupt()
        orchestrator.outcome = await task  # type: ignore[attr-defined]
        return orchestrator

    first = asyncio.run(interrupted())
    assert first.outcome.reason == "interrupted" and first.outcome.ok  # type: ignore[attr-defined]
    run = tmp_path / "run"
    assert (run / "runtimes" / "robot0" / "paused").exists()  # held before SIGTERM (a stop, not an e-stop)
    steps_before = first.outcome.env_steps  # type: ignore[attr-defined]
    rows_before = len((run / "evals.csv").read_text().splitlines())
    standins.setenv("FAKE_STEPS_CAP", str(steps_before + 400))
    resumed, _ = _run(RunSpec(run_dir=run, resume=True, steps=steps_before + 400, status_every=0.2,
                              stop_timeout=15.0, learner_module=spec.learner_module,
                              runtime_module=spec.runtime_module, log_level="WARNING"))
    outcome = resumed.outcome  # type: ignore[attr-defined]
    assert outcome.reason == "finished" and outcome.env_steps == steps_before + 400
    assert "--resume" in (run / "logs" / "learner.log").read_text()
    steps = [int(r.split(",")[0]) for r in (run / "evals.csv").read_text().splitlines()[1:]]
    assert len(steps) > rows_before - 1 and steps == sorted(steps) and steps[-1] == steps_before + 400


# ============================================================================ the stand-ins
def _fake_learner(argv: list[str]) -> int:
    import numpy as np
    import torch

    from learner.networks import build_actor
    from protocol.messages import Command, Status, Weights
    from protocol.transport import ControlServer, ControlServerConfig, WeightsPublisher, WeightsPublisherConfig
    from simulation.app.evaluator import task_spec

    p = argparse.ArgumentParser()
    for flag in ("--profile", "--config", "--demos", "--bind", "--weights-bind", "--control-bind", "--mode",
                 "--device", "--threads", "--seed", "--log-level", "--run-dir", "--resume"):
        p.add_argument(flag)
    args = p.parse_args(argv)
    run_dir = Path(args.resume or args.run_dir)
    rate, cap = 400.0, int(os.environ["FAKE_STEPS_CAP"])
    start_steps = 0
    if args.resume:
        latest = max(run_dir.glob("ckpt-*"), key=lambda d: int(d.name.split("-")[1]))
        start_steps = json.loads((latest / "state.json").read_text())["env_steps"]
    cfg = LearnerConfig.from_toml(args.config)
    obs_spec, action_dim = task_spec("tabletop", "state")
    stop = asyncio.Event()
    t0 = time.monotonic()

    def env_steps() -> int:
        return min(cap, start_steps + int((time.monotonic() - t0) * rate))

    seed_frames = int(os.environ.get("FAKE_SEED_FRAMES", "300"))  # as the learner: no weights before

    async def handler(cmd: Command) -> Status:
        n = env_steps()
        return Status(request_id=cmd.request_id, role="learner", state="running", ok=True, message="",
                      detail={"env_steps": n, "updates": n, "utd": 1.0, "seed_phase": n < seed_frames})

    async def main() -> None:
        control = ControlServer(ControlServerConfig(endpoint=args.control_bind, role="learner"), handler)
        publisher = WeightsPublisher(WeightsPublisherConfig(endpoint=args.weights_bind))
        endpoints = {"uplink": "tcp://127.0.0.1:9", "weights": await publisher.start(),
                     "control": await control.start()}
        tmp = run_dir / "endpoints.json.tmp"
        tmp.write_text(json.dumps(endpoints))
        tmp.replace(run_dir / "endpoints.json")
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with asyncio.TaskGroup() as tg:
            served = tg.create_task(control.run())
            version = 0
            while not stop.is_set():
                if env_steps() < seed_frames:  # the seed phase: nothing published
                    try:
                        await asyncio.wait_for(stop.wait(), 0.05)
                    except TimeoutError:
                        pass
                    continue
                version += 1
                torch.manual_seed(version)
                actor = build_actor(obs_spec, action_dim, cfg.network)
                tensors = {k: v.numpy() for k, v in actor.state_dict().items()}
                publisher.publish(Weights.create(agent="forward", version=version, tensors=tensors))
                publisher.publish(Weights.create(agent="backward", version=version,
                                                 tensors={"x": np.zeros(1, np.float32)}))
                try:
                    await asyncio.wait_for(stop.wait(), 0.2)
                except TimeoutError:
                    pass
            served.cancel()
        publisher.close()
        ckpt = run_dir / f"ckpt-{env_steps()}"
        ckpt.mkdir(exist_ok=True)
        (ckpt / "state.json").write_text(json.dumps({"env_steps": env_steps()}))

    print("fake learner", " ".join(sys.argv), flush=True)
    asyncio.run(main())
    return 0


def _fake_runtime(argv: list[str]) -> int:
    from protocol.messages import Command, Status
    from protocol.transport import ControlServer, ControlServerConfig

    p = argparse.ArgumentParser()
    for flag in ("--robot", "--learner", "--obs", "--spill-dir", "--control-bind", "--seed", "--switch-every",
                 "--max-steps", "--log-level", "--hz", "--reset-every", "--priority", "--cpu-latency-us"):
        p.add_argument(flag)
    p.add_argument("--lockstep", action="store_true")
    args = p.parse_args(argv)
    spill = Path(args.spill_dir)
    stop = asyncio.Event()

    async def handler(cmd: Command) -> Status:
        if cmd.kind in ("estop", "pause"):
            (spill / cmd.kind.replace("estop", "estopped").replace("pause", "paused")).touch()
        return Status(request_id=cmd.request_id, role="runtime", state="running", ok=True, message="",
                      detail={"steps": 1, "agent": "forward", "env_resets": 1})

    async def main() -> int:
        control = ControlServer(ControlServerConfig(endpoint=args.control_bind), handler)
        (spill / "endpoints.json").write_text(json.dumps({"control": await control.start()}))
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with asyncio.TaskGroup() as tg:
            served = tg.create_task(control.run())
            try:
                await asyncio.wait_for(stop.wait(), int(args.max_steps) / 400.0 + 0.3)
            except TimeoutError:
                pass
            served.cancel()
        code = int(os.environ.get("FAKE_RUNTIME_EXIT", "0"))
        if code:
            print("fake runtime failing on purpose", flush=True)
        return code

    print("fake runtime", " ".join(sys.argv), flush=True)
    return asyncio.run(main())


if __name__ == "__main__":
    sys.exit(_fake_runtime(sys.argv[1:]) if "--robot" in sys.argv else _fake_learner(sys.argv[1:]))
