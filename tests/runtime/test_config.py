"""The runtime's config: one typed config of sections, built from defaults, a TOML file, the flags
(each a shortcut for one key) and ``--set``; the old ``[runtime]`` file form."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from runtime.__main__ import main
from runtime.config import SECTIONS, LinkConfig, LoopSettings, RuntimeConfig
from runtime.daemon_config import loop_settings, policy_settings, shield_settings
from runtime.flags import FLAGS, build_parser, runtime_config
from runtime.robots import RobotConfig, RobotFacts, RobotSpecError
from tests.runtime.fakes import FakeRobot

#: every flag of the parser before the config (git show 18b5ea5:runtime/__main__.py) and its
#: default there, by argparse dest; each must still exist and default to the same meaning
OLD_DEFAULTS = {
    "robot": "sim:tabletop", "learner": "tcp://127.0.0.1:5555", "obs": "state", "hz": 10.0, "lockstep": False,
    "spill_dir": None, "control_bind": "tcp://127.0.0.1:5558", "keys": None, "seed": None, "switch_every": 200,
    "reset_every": None, "reset_schedule": None, "max_steps": None, "ack_wait": 10.0, "batch_steps": 16,
    "lockstep_lag": None, "franka_host": "172.16.0.2", "camera": None, "task": None, "cpu": None,
    "priority": "fifo", "cpu_latency_us": 0, "keep_heap": True, "gc": "freeze", "threads": 1,
    "conv_dtype": "auto", "projection_dtype": "float32", "no_explore": False, "prefetch_lead_ms": 10.0,
    "prefetch_passes": None, "log_level": "INFO",
    "operator": False,  # added after the [runtime] table's time; an old table can set it too
}

#: one non-default command line per flag, and the value its key then holds
SAMPLES: dict[str, tuple[list[str], object]] = {
    "--robot": (["franka"], "franka"), "--learner": (["tcp://10.0.0.2:5555"], "tcp://10.0.0.2:5555"),
    "--obs": (["pixels"], "pixels"), "--hz": (["50"], 50.0), "--lockstep": ([], True),
    "--spill-dir": (["/data/spill"], Path("/data/spill")), "--control-bind": (["tcp://0.0.0.0:1"], "tcp://0.0.0.0:1"),
    "--keys": (["keys"], Path("keys")), "--seed": (["7"], 7), "--switch-every": (["150"], 150),
    "--reset-every": (["400"], 400), "--reset-schedule": (["earl"], "earl"), "--max-steps": (["99"], 99),
    "--ack-wait": (["3"], 3.0), "--batch-steps": (["8"], 8), "--lockstep-lag": (["32"], 32),
    "--franka-host": (["franka.local"], "franka.local"), "--camera": (["wrist=1"], ("wrist=1",)),
    "--task": (["cube"], "cube"), "--cpu": (["1"], 1), "--priority": (["nice"], "nice"),
    "--cpu-latency-us": (["off"], None), "--keep-heap": ([], True), "--gc": (["manual"], "manual"),
    "--threads": (["2"], 2), "--conv-dtype": (["float32"], "float32"), "--projection-dtype": (["float16"], "float16"),
    "--no-explore": ([], False), "--prefetch-lead-ms": (["5"], 0.005), "--prefetch-passes": (["2"], 2),
    "--log-level": (["DEBUG"], "DEBUG"), "--operator": ([], True),
}


def _get(config: RuntimeConfig, key: str) -> object:
    section, _, name = key.rpartition(".")
    return getattr(getattr(config, section) if section else config, name)


def _flat(config: RuntimeConfig) -> dict[str, object]:
    out = {}
    for name, value in config.to_dict().items():
        out.update({f"{name}.{k}": v for k, v in value.items()} if isinstance(value, dict) else {name: value})
    return out


def test_every_old_flag_is_kept_and_defaults_to_its_keys_default() -> None:
    assert {flag.dest for flag in FLAGS} == set(OLD_DEFAULTS)
    default = RuntimeConfig()
    for flag in FLAGS:
        assert flag.to_config(OLD_DEFAULTS[flag.dest]) == _get(default, flag.key), flag.name
    assert runtime_config([]) == default  # no flag given: the defaults
    assert len({flag.key for flag in FLAGS}) == len(FLAGS)  # one key each


@pytest.mark.parametrize("flag", FLAGS, ids=lambda f: f.name)
def test_each_flag_sets_its_key_and_nothing_else(flag) -> None:
    argv, value = SAMPLES[flag.name]
    name = "--no-keep-heap" if flag.name == "--keep-heap" else flag.name
    expected = value if flag.name != "--keep-heap" else False
    if flag.name == "--lockstep-lag":
        argv = [*argv, "--batch-steps", "16"]  # the default, given: only the lag differs
    config = runtime_config([name, *argv])
    assert _get(config, flag.key) == expected
    changed = {k for k, v in _flat(config).items() if v != _flat(RuntimeConfig())[k]}
    assert changed == {flag.key}, changed


def test_layers_apply_file_then_flags_then_set(tmp_path: Path) -> None:
    path = tmp_path / "robot.toml"
    path.write_text('seed = 4\n[loop]\nhz = 20\nbatch_steps = 8\n[link]\nlearner = "tcp://gpu:5555"\n'
                    '[robot]\ncameras = ["wrist=1", "top=2"]\n')
    base = ["--config", str(path)]
    from_file = runtime_config(base)
    assert (from_file.seed, from_file.loop.hz, from_file.loop.batch_steps) == (4, 20.0, 8)
    assert from_file.link.learner == "tcp://gpu:5555" and from_file.robot.cameras == ("wrist=1", "top=2")
    flagged = runtime_config([*base, "--hz", "30", "--camera", "side=3"])
    assert flagged.loop.hz == 30.0 and flagged.robot.cameras == ("side=3",)  # a flag replaces the file's value
    assert flagged.loop.batch_steps == 8 and flagged.seed == 4  # the file's other keys stay
    # --set wins over the flag and the file, wherever it stands on the command line
    for argv in ([*base, "--hz", "30", "--set", "loop.hz=40"], ["--set", "loop.hz=40", "--hz", "30", *base]):
        assert runtime_config(argv).loop.hz == 40.0
    # validated once, on the result: the file's batches of 8 and a lag of 8 are fine once --set makes it so
    assert runtime_config([*base, "--lockstep-lag", "8"]).loop.lag == 8
    assert runtime_config(["--lockstep-lag", "8", "--set", "loop.batch_steps=8"]).loop.lockstep_lag == 8


def test_unknown_keys_and_bad_values_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[loop]\nhzz = 3\n")
    with pytest.raises(ValueError, match=r"bad.toml.*loop\.hzz"):
        runtime_config(["--config", str(bad)])
    bad.write_text("[lop]\nhz = 3\n")
    with pytest.raises(ValueError, match="lop"):
        RuntimeConfig.from_toml(bad)
    bad.write_text("[loop]\nhz = 0\n")
    with pytest.raises(ValueError, match=r"loop\.hz: must be in \(0, 1000\]"):
        RuntimeConfig.from_toml(bad)
    bad.write_text("[loop\n")
    with pytest.raises(ValueError, match="invalid TOML"):
        RuntimeConfig.from_toml(bad)
    config = RuntimeConfig()
    for override, message in [("loop.hz=fast", "loop.hz: must be float"), ("nosuch=1", "nosuch"),
                              ("loop.hz", "KEY=VALUE"), ("loop=3", "loop"),
                              ("isolation.priority=rt", "isolation.priority"),
                              ("loop.batch_steps=1.5", "loop.batch_steps: must be int"),
                              ("robot.cameras=wrist", "robot.cameras: must be a list"),
                              ("robot.cameras=['wrist']", "robot.cameras"), ("seed=true", "seed: must be int"),
                              ("process.log_level=loud", "process.log_level"),
                              ("policy.conv_dtype=int8", "policy.conv_dtype")]:
        with pytest.raises(ValueError, match=message):
            config.with_overrides([override])
    with pytest.raises(RobotSpecError, match="not both"):  # still the robot family's error
        config.with_overrides(["robot.reset_every=10", "robot.reset_schedule=earl"])
    assert main(["--set", "link.peer_timeout=3"]) == 2  # one line, before any robot is built
    assert capsys.readouterr().err == ("resetfree-runtime: unknown config key(s) in [link]: "
                                       "['link.peer_timeout']\n")
    with pytest.raises(ValueError, match="loop: must be a LoopSettings"):
        RuntimeConfig(loop=LinkConfig())  # type: ignore[arg-type]


def test_values_are_coerced_to_the_fields_types() -> None:
    config = RuntimeConfig().with_overrides(
        ["loop.hz=50", "process.spill_dir=/data/spill", "link.learner=tcp://gpu:5555", "isolation.cpu_latency_us=none",
         "loop.max_steps=1000", "robot.cameras=['wrist=1']", "seed=3", "isolation.priority=none"])
    assert config.loop.hz == 50.0 and isinstance(config.loop.hz, float)
    assert config.process.spill_dir == Path("/data/spill") and config.spill_dir == Path("/data/spill")
    assert config.link.learner == "tcp://gpu:5555" and config.isolation.cpu_latency_us is None
    assert config.loop.max_steps == 1000 and config.robot.cameras == ("wrist=1",) and config.seed == 3
    assert config.isolation.priority == "none"  # the string, not None: the field is no Optional


def test_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = RuntimeConfig().with_overrides(
        ["seed=9", "robot.spec=franka", "robot.cameras=['wrist=1', 'top=2']", "robot.task=cube", "loop.hz=50",
         "loop.lockstep=true", "loop.max_steps=500", "link.keys_dir=keys", "process.spill_dir=/tmp/spill",
         "isolation.cpu_latency_us=none", "isolation.cpu=1", "policy.explore=false", "outbox.writer_queue=64"])
    assert RuntimeConfig.from_dict(config.to_dict()) == config
    path = tmp_path / "config.toml"
    path.write_text(config.to_toml())
    assert RuntimeConfig.from_toml(path) == config
    assert runtime_config(["--config", str(path)]) == config
    # --print-config writes the file a run would use
    argv = ["--robot", "sim:door", "--hz", "20", "--cpu-latency-us", "off", "--set", "loop.switch_every=100"]
    assert main([*argv, "--print-config"]) == 0
    path.write_text(capsys.readouterr().out)
    assert runtime_config(["--config", str(path)]) == runtime_config(argv)
    assert list(config.to_dict()) == ["seed", *SECTIONS]


def test_the_old_runtime_table_loads_as_its_flags_did(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    old = tmp_path / "old.toml"
    old.write_text('[runtime]\nrobot = "franka"\nhz = 50\nspill_dir = "/data/spill"\nno_explore = true\n'
                   'cpu_latency_us = "off"\nprefetch_lead_ms = 5\ncamera = ["wrist=1"]\nkeep_heap = false\n'
                   'seed = 3\nlockstep = true\npriority = "nice"\n')
    flags = ["--robot", "franka", "--hz", "50", "--spill-dir", "/data/spill", "--no-explore", "--cpu-latency-us",
             "off", "--prefetch-lead-ms", "5", "--camera", "wrist=1", "--no-keep-heap", "--seed", "3", "--lockstep",
             "--priority", "nice"]
    with caplog.at_level(logging.WARNING):
        config = runtime_config(["--config", str(old)])
    assert config == runtime_config(flags)
    assert "old form" in caplog.text and "[loop]\nhz = 50" in caplog.text  # the new form, to copy
    # as before, the file sets what the flags do not
    assert runtime_config(["--config", str(old), "--hz", "20"]).loop.hz == 20.0
    for text, message in [('[runtime]\nhzz = 3\n', "hzz"), ('[runtime]\nhz = "fast"\n', "hz"),
                          ('[runtime]\npriority = "rt"\n', "priority"),
                          ('[runtime]\nhz = 5\n[loop]\nbatch_steps = 8\n', "cannot be mixed")]:
        old.write_text(text)
        with pytest.raises(ValueError, match=message):
            runtime_config(["--config", str(old)])
    old.write_text('[runtime]\nhz = 5\n')
    with pytest.raises(ValueError, match="old form"):  # the library reads the new form only, and says so
        RuntimeConfig.from_toml(old)


def test_the_daemon_derives_the_parts_settings() -> None:
    config = RuntimeConfig(seed=5, loop=LoopSettings(batch_steps=8, prefetch_lead_s=0.004, lockstep=True))
    assert policy_settings(config).seed == 5  # the exploration noise follows the top-level seed...
    assert policy_settings(config.with_overrides(["policy.seed=11"])).seed == 11  # ...unless set itself
    facts = RobotFacts(kind="sim", task="t", position_scale=0.05, reset_interval=400, goal_per_turn=True)
    limits = shield_settings(config, FakeRobot(), facts)
    loop = loop_settings(config, limits, facts)
    assert (loop.batch_steps, loop.prefetch_lead_s, loop.lockstep) == (8, 0.004, True)
    assert (loop.max_frame_age_s, loop.env_reset_every, loop.draw_goal_each_turn) == (limits.max_frame_age_s, 400, True)
    assert RuntimeConfig(robot=RobotConfig(spec="sim:door")).spill_dir.name == "sim-door"
    assert config.session_settings.switch_interval == config.loop.switch_every


def test_help_lists_each_flags_key() -> None:
    text = " ".join(build_parser().format_help().split())
    for flag in FLAGS:
        assert f"{flag.name} {flag.key}" in text, flag.name
    with pytest.raises(dataclasses.FrozenInstanceError):  # a built config is never changed
        RuntimeConfig().seed = 3  # type: ignore[misc]


def test_the_documented_robot_file_loads(tmp_path: Path) -> None:
    """docs/real-robot.md's example of a runtime config file is one."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "real-robot.md").read_text()
    block = text.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "robot.toml"
    path.write_text(block)
    config = runtime_config(["--config", str(path)])
    assert config.robot.spec == "franka" and len(config.robot.cameras) == 2
    assert config.link.learner == "tcp://10.0.0.20:5555" and config.link.keys_dir == Path("keys")


def test_the_spill_cap_is_configurable_and_checked() -> None:
    assert RuntimeConfig().process.spill_max_bytes == 8 * 2**30
    assert runtime_config(["--set", "process.spill_max_bytes=1073741824"]).process.spill_max_bytes == 2**30
    with pytest.raises(ValueError, match="spill_max_bytes"):
        runtime_config(["--set", "process.spill_max_bytes=1000"])
