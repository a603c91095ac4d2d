"""resetfree-eval: the BC baseline on the simulated cube, task success, trials.csv and
summary.json, learner checkpoints, clear errors, and the real-robot operator prompts (fakes)."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hardware.franka import FrankaConfig, FrankaRobot
from hardware.realsense import RealSenseCamera, RealSenseConfig
from learner import checkpoint
from learner.bc import BCConfig
from learner.networks import NetworkConfig, build_actor
from protocol.demos import save_demos
from simulation.tools.demos_cli import generate
from simulation.tools.eval_cli import EvalConfig, main, run_trials
from simulation.tools.policies import PolicyLoadError, read_policy, save_bc_policy
from simulation.tools.rig import Rig, RigConfig, build_rig
from tests.hardware.fakes import panda_py as fake_panda
from tests.hardware.fakes import pyrealsense2 as fake_rs

SIZE = 24
TINY = ["--set", "network.feature_dim=16", "--set", "network.hidden_dim=32", "--set", "network.conv_channels=8"]
NET = NetworkConfig(feature_dim=16, hidden_dim=32, conv_channels=8)
_IDS = itertools.count()


@pytest.fixture(scope="module")
def demos_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demos") / "cube_fwd.npz"
    save_demos(path, generate("cube", "forward", episodes=2, obs="pixels", image_size=SIZE, max_steps=30, seed=3))
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_bc_baseline_on_sim_cube(tmp_path: Path, demos_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--robot", "sim:cube", "--trials", "3", "--horizon", "6", "--hz", "50", "--split", "ood"]
    out = tmp_path / "bc"
    assert main([*common, "--policy", f"bc:{demos_file}", "--bc-steps", "20", "--bc-batch-size", "16",
                 "--out", str(out), *TINY]) == 0
    text = capsys.readouterr().out
    assert "BC policy saved to" in text and "on the ood split" in text
    rows = _rows(out / "trials.csv")
    assert [r["trial"] for r in rows] == ["1", "2", "3"] and {r["split"] for r in rows} == {"ood"}
    assert all(r["steps"] == "6" and r["success"] in ("True", "False") for r in rows)
    # lock-step pacing: no timing holds, however loaded the machine (they made the rerun differ)
    assert all(r["holds"] == "0" for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "bc" and summary["trials"] == 3 and summary["horizon"] == 6
    assert summary["success_rate"] == pytest.approx(sum(r["success"] == "True" for r in rows) / 3)
    assert [t["steps"] for t in summary["per_trial"]] == [6, 6, 6] and summary["shield"]["ticks"] == 18
    # the saved BC checkpoint is reusable, and lockstep evaluation is deterministic
    again = tmp_path / "again"
    assert main([*common, "--policy", str(out / "bc-policy"), "--out", str(again)]) == 0
    # wall_s is wall-clock time, not a result; everything the policy decides must repeat
    def outcome(table: list[dict[str, str]]) -> list[dict[str, str]]:
        return [{k: v for k, v in row.items() if k != "wall_s"} for row in table]

    assert outcome(_rows(again / "trials.csv")) == outcome(rows)
    source = read_policy(out / "bc-policy")
    assert source.obs_spec == {"wrist": ((3, SIZE, SIZE), "uint8"), "third_person": ((3, SIZE, SIZE), "uint8"),
                               "proprio": ((4,), "float32")}
    assert source.image_size() == SIZE and source.action_dim == 5


def test_state_policy_runs_on_the_twin_in_state_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demos = tmp_path / "cube_state.npz"
    save_demos(demos, generate("cube", "forward", episodes=2, obs="state", max_steps=30, seed=3))
    out = tmp_path / "bc-state"
    assert main(["--robot", "sim:cube", "--trials", "2", "--horizon", "5", "--hz", "50", "--policy", f"bc:{demos}",
                 "--bc-steps", "10", "--bc-batch-size", "16", "--out", str(out), *TINY]) == 0
    assert read_policy(out / "bc-policy").obs_spec == {"state": ((12,), "float32")}
    assert [r["steps"] for r in _rows(out / "trials.csv")] == ["5", "5"]
    # the real robot has no state vector: said at start-up, before any motion
    assert main(["--robot", "franka", "--trials", "1", "--policy", str(out / "bc-policy"),
                 "--out", str(tmp_path / "real")]) == 1
    assert "only a simulated robot has a state vector" in capsys.readouterr().err


class GraspScript:
    """A proprio-only stand-in policy: descend, close, lift (the cube starts centred at seed 24)."""

    kind = "scripted"
    path = Path("scripted")

    def __call__(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        z, width = observation["proprio"][2], observation["proprio"][3]
        closing = z < 0.03 or width < 0.075
        down = -1.0 if not closing else (0.0 if width > 0.055 else 1.0)
        return np.array([0, 0, down, 0, 1.0 if closing else -1.0], dtype=np.float32)


def test_success_comes_from_the_task(tmp_path: Path) -> None:
    rig = build_rig(RigConfig(robot="sim:cube", hz=50, image_size=16, seed=24, pacing="lockstep"))
    with rig:
        summary = run_trials(rig, GraspScript(), EvalConfig(out=tmp_path, trials=1, horizon=40),  # type: ignore[arg-type]
                             out=lambda _: None)
    trial = summary.trials[0]
    assert trial.success and 15 < trial.first_success < 40 and summary.success_rate == 1.0
    assert _rows(tmp_path / "trials.csv")[0]["success"] == "True"


def _learner_checkpoint(run_dir: Path, spec: dict) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    actors = [build_actor(spec, 5, NET) for _ in range(2)]
    state = {"agents": [{"encoder": a.encoder.state_dict(), "actor": a.actor.state_dict(), "critic": {}}
                        for a in actors]}
    checkpoint.save_checkpoint(run_dir, updates=7, state=state, config={"network": NET.to_dict()})
    return run_dir, actors[1]


def test_learner_checkpoint_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = {"wrist": ((3, 16, 16), "uint8"), "proprio": ((4,), "float32")}
    run, backward = _learner_checkpoint(tmp_path / "run", spec)
    source = read_policy(run, agent="backward")
    assert source.kind == "learner" and source.obs_spec is None and source.action_dim == 5
    policy = source.build(spec)
    obs = {"wrist": np.full((3, 16, 16), 90, np.uint8), "proprio": np.ones(4, np.float32), "extra": np.zeros(2)}
    with torch.no_grad():
        expected = backward({"wrist": torch.from_numpy(obs["wrist"])[None],
                             "proprio": torch.from_numpy(obs["proprio"])[None]})[0].numpy()
    assert np.allclose(policy(obs), expected, atol=1e-6)
    with pytest.raises(PolicyLoadError, match="do not fit"):
        source.build({"wrist": ((3, 24, 24), "uint8"), "proprio": ((4,), "float32")})
    with pytest.raises(PolicyLoadError, match="no such"):
        read_policy(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PolicyLoadError, match="no checkpoint"):
        read_policy(tmp_path / "empty")
    with pytest.raises(PolicyLoadError, match="agent"):
        read_policy(run, agent="sideways")
    # corrupt the only checkpoint: a clear error naming the file, from the library and the CLI
    tensors = run / "ckpt-7" / checkpoint.TENSORS_FILE
    tensors.write_bytes(tensors.read_bytes()[:100])
    with pytest.raises(PolicyLoadError, match="checksum mismatch"):
        read_policy(run)
    assert main(["--robot", "sim:cube", "--policy", str(run), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "unusable checkpoint" in err and "tensors.safetensors" in err
    # a checkpoint holding something else
    checkpoint.save_checkpoint(tmp_path / "other", updates=1, state={"x": torch.zeros(1)}, config={})
    with pytest.raises(PolicyLoadError, match="not a learner or BC policy"):
        read_policy(tmp_path / "other")


def test_real_robot_asks_the_operator(tmp_path: Path) -> None:
    host, serial = f"fake-eval-{next(_IDS)}", f"fake-eval-cam-{next(_IDS)}"
    arm = fake_panda._add_arm(host)
    fake_rs._add_device(serial, width=160, height=120, fps=60)
    robot = FrankaRobot(FrankaConfig(hostname=host), library=fake_panda)
    camera = RealSenseCamera(RealSenseConfig(serial=serial, width=160, height=120, fps=60, image_size=16),
                             name="wrist", library=fake_rs)
    rig = Rig(RigConfig(robot="franka", hz=50, image_size=16, cameras=(("wrist", serial),)), robot,
              {"wrist": camera}, robot.config.max_translation_step)
    spec = {"wrist": ((3, 16, 16), "uint8"), "proprio": ((4,), "float32")}
    torch.manual_seed(1)
    network = build_actor(spec, 5, NET)
    save_bc_policy(tmp_path / "bc", network.state_dict(), obs_spec=spec, net_config=NET,
                   bc_config=BCConfig(steps=1), demos_path="none")
    policy = read_policy(tmp_path / "bc").build()
    answers = iter(["", "y", "", "maybe", "n"])
    questions: list[str] = []

    def prompt(question: str) -> str:
        questions.append(question)
        return next(answers)

    with rig:
        summary = run_trials(rig, policy, EvalConfig(out=tmp_path / "out", trials=2, split="ood", horizon=5),
                             prompt=prompt, out=lambda _: None)
    assert [t.success for t in summary.trials] == [True, False]
    assert "OUTSIDE" in questions[0] and questions.count(questions[1]) == 3  # "maybe" is asked again
    assert arm is not None and summary.shield["ticks"] == 10
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["successes"] == 1
