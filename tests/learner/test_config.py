"""Learner config: paper profiles, TOML layering, dotted overrides, hash stability."""

import argparse

import pytest

from learner.config import LearnerConfig, add_config_arguments, config_from_args, profile


def test_sim_profile_is_table_1():
    cfg = profile("sim")
    assert cfg.network.num_critics == 5 and cfg.network.num_min_target == 2
    assert cfg.network.feature_dim == 50
    assert cfg.agent.update_to_data == 1 and cfg.agent.batch_size == 256
    assert cfg.agent.lr == 3e-4 and cfg.agent.gamma == 0.99 and cfg.agent.tau == 0.005
    assert cfg.agent.forward_temperature == 0.0 and cfg.agent.bc_form == "log_likelihood"
    # the authors' backward agent: α from 1, learnt towards +|A|/2
    assert (cfg.agent.backward_temperature, cfg.agent.backward_learn_temperature) == (1.0, True)
    assert cfg.agent.backward_target_entropy == 0.5
    assert cfg.replay.demo_per_batch == 16
    assert cfg.schedule.seed_frames == 10_000
    # the authors' linear_offset(1.0, 0.1, 10000, 50000), forward agent only
    assert cfg.schedule.bc_weight(10_000) == 1.0 and cfg.schedule.bc_weight(10**6) == pytest.approx(0.1)
    assert cfg.schedule.bc_agents == (0,)
    assert cfg.schedule.vice_positives == "last_frames" and cfg.schedule.goal_frames == 10
    assert (cfg.vice.updates_per_round, cfg.vice.updates_every, cfg.vice.batch_size) == (10, 500, 512)
    assert (cfg.medal.updates_per_round, cfg.medal.updates_every) == (10, 100)


def test_robot_profile_is_a2():
    cfg = profile("robot")
    assert cfg.schedule.seed_frames == 2_000
    assert cfg.replay.demo_per_batch == 32
    assert cfg.schedule.bc_weight(0) == 1.0 and cfg.schedule.bc_weight(10_000) == 0.0
    assert cfg.schedule.bc_weight(5_000) == pytest.approx(0.5)
    assert (cfg.vice.updates_per_round, cfg.vice.updates_every) == (1, 1000)
    assert cfg.vice.cameras == ("wrist",) and cfg.vice.use_proprio is False
    assert (cfg.medal.updates_per_round, cfg.medal.updates_every) == (1, 500)
    assert cfg.medal.cameras == ("wrist",) and cfg.medal.use_proprio is True
    assert cfg.network.feature_dim == 256
    with pytest.raises(ValueError, match="profile"):
        profile("lab")


def test_overrides_types_and_unknown_keys():
    cfg = profile("sim").with_overrides(
        ["agent.lr=1e-4", "network.cameras=['wrist']", "agent.stddev_clip=none", "seed=3",
         "service.run_dir=runs/x", "agent.backward_temperature=1"]
    )
    assert cfg.agent.lr == 1e-4 and cfg.network.cameras == ("wrist",)
    assert cfg.agent.stddev_clip is None and cfg.seed == 3 and cfg.service.run_dir == "runs/x"
    assert isinstance(cfg.agent.backward_temperature, float)
    with pytest.raises(ValueError, match="agent.bogus"):
        cfg.with_overrides(["agent.bogus=1"])
    with pytest.raises(ValueError, match="nosection.x"):
        cfg.with_overrides(["nosection.x=1"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        cfg.with_overrides(["agent.lr"])
    with pytest.raises(ValueError, match="lr"):
        cfg.with_overrides(["agent.lr=-1"])
    with pytest.raises(ValueError, match="agent.batch_size"):
        cfg.with_overrides(["agent.batch_size='big'"])
    assert cfg.service.weights_dtype == "float16"
    assert cfg.with_overrides(["service.weights_dtype=float32"]).service.weights_dtype == "float32"
    with pytest.raises(ValueError, match="weights_dtype"):
        cfg.with_overrides(["service.weights_dtype=bfloat16"])


def test_toml_layering_and_round_trip(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('profile = "robot"\nseed = 5\n[agent]\nlr = 1e-3\n[vice]\ncameras = ["wrist", "third_person"]\n')
    cfg = LearnerConfig.from_toml(path)
    assert cfg.profile == "robot" and cfg.seed == 5 and cfg.agent.lr == 1e-3
    assert cfg.vice.cameras == ("wrist", "third_person")
    assert cfg.replay.demo_per_batch == 32  # untouched robot value
    assert LearnerConfig.from_dict(cfg.to_dict()) == cfg
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent]\nlearning_rate = 1\n")
    with pytest.raises(ValueError, match="agent.learning_rate"):
        LearnerConfig.from_toml(bad)
    bad.write_text("[sevice]\nx = 1\n")
    with pytest.raises(ValueError, match="sevice"):
        LearnerConfig.from_toml(bad)


def test_argparse_integration(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[agent]\ntau = 0.01\n")
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--profile", "robot", "--config", str(path), "--set", "agent.lr=2e-4"])
    cfg = config_from_args(args)
    assert cfg.profile == "robot" and cfg.agent.tau == 0.01 and cfg.agent.lr == 2e-4


def test_config_hash_is_stable_and_covers_shared_fields_only():
    a, b = profile("sim"), profile("sim")
    assert a.config_hash() == b.config_hash() and len(a.config_hash()) == 64
    assert a.with_overrides(["agent.lr=1e-4", "service.run_dir=x"]).config_hash() == a.config_hash()
    assert a.with_overrides(["network.hidden_dim=512"]).config_hash() != a.config_hash()
    assert a.with_overrides(["switch.interval=100"]).config_hash() != a.config_hash()
    assert a.with_overrides(["schedule.seed_frames=5"]).config_hash() != a.config_hash()
    assert profile("robot").config_hash() != a.config_hash()


def test_session_settings_follow_the_switch_section():
    cfg = profile("sim").with_overrides(["switch.interval=150"])
    assert cfg.session_settings().switch_interval == 150


def test_learner_cpus_from_the_command_line_and_validated(tmp_path):
    from learner.__main__ import build_parser
    from learner.__main__ import resolve_config as resolve_learner_config

    args = build_parser().parse_args(["--demos", str(tmp_path), "--cpus", "0,1", "--run-dir", str(tmp_path)])
    cfg, _ = resolve_learner_config(args)
    assert cfg.service.cpus == (0, 1)
    assert profile("sim").service.cpus == ()  # default: every CPU
    with pytest.raises(ValueError, match="service.cpus|ServiceConfig.cpus"):
        profile("sim").with_overrides(["service.cpus=[-1]"])


def test_learner_set_is_applied_after_the_flags(tmp_path):
    # --help: "--set ... applied last"; a flag sets its key unless --set names the same key
    from learner.__main__ import build_parser
    from learner.__main__ import resolve_config as resolve_learner_config

    argv = ["--demos", str(tmp_path), "--run-dir", str(tmp_path), "--seed", "1", "--threads", "2"]
    cfg, _ = resolve_learner_config(build_parser().parse_args(argv))
    assert cfg.seed == 1 and cfg.service.torch_threads == 2
    cfg, _ = resolve_learner_config(build_parser().parse_args([*argv, "--set", "seed=5"]))
    assert cfg.seed == 5 and cfg.service.torch_threads == 2


def test_cpu_lists_parse_or_name_the_bad_list():
    from learner.placement import parse_cpus

    assert parse_cpus("0,2") == (0, 2) and parse_cpus("") == () and parse_cpus(" 1 ") == (1,)
    for bad in ("a", "0,x", "-1"):
        with pytest.raises(ValueError, match="CPU list"):
            parse_cpus(bad)
