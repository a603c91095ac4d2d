"""Shield: property tests — no input of any kind yields a command outside the limits."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hardware.interfaces import RobotState, Workspace
from runtime.shield import Shield, ShieldConfig

WS = Workspace(low=(0.3, -0.3, 0.05), high=(0.7, 0.3, 0.5))


def make_config(**overrides: object) -> ShieldConfig:
    base: dict[str, object] = dict(
        action_low=(-1.0, -1.0, -1.0, -0.5, -1.0), action_high=(1.0, 1.0, 1.0, 0.5, 1.0), workspace=WS,
        position_scale=0.05, max_step=(0.03, 0.03, 0.02), max_speed=0.3, control_period_s=0.1,
        gripper_index=4, gripper_min=-0.8, gripper_max=0.9)
    base.update(overrides)
    return ShieldConfig(**base)  # type: ignore[arg-type]


def state_at(position: np.ndarray, age: float = 0.0) -> RobotState:
    return RobotState(timestamp=time.monotonic() - age, ee_position=position, gripper=0.0)


def assert_within_limits(shield: Shield, command: np.ndarray, position: np.ndarray | None) -> None:
    cfg = shield.config
    assert isinstance(command, np.ndarray) and command.dtype == np.float32 and command.shape == (5,)
    assert np.all(np.isfinite(command))
    assert np.all(command >= np.float32(cfg.action_low)) and np.all(command <= np.float32(cfg.action_high))
    assert cfg.gripper_min - 1e-6 <= command[4] <= cfg.gripper_max + 1e-6
    delta = command[:3].astype(np.float64) * cfg.position_scale
    assert np.all(np.abs(delta) <= np.asarray(cfg.max_step) + 1e-6)
    assert np.linalg.norm(delta) <= cfg.max_speed * cfg.control_period_s + 1e-6
    if position is not None and np.all(position >= WS.low) and np.all(position <= WS.high):
        target = position + delta
        assert np.all(target >= np.asarray(WS.low) - 1e-6) and np.all(target <= np.asarray(WS.high) + 1e-6)


floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
garbage = st.one_of(
    st.none(), st.integers(), floats, st.text(max_size=5), st.lists(floats, max_size=7),
    st.dictionaries(st.text(max_size=3), floats, max_size=3),
    hnp.arrays(dtype=st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_, np.complex64]),
               shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=6), elements=None),
    hnp.arrays(dtype=np.float64, shape=5, elements=floats),
    hnp.arrays(dtype=np.float32, shape=5, elements=st.floats(width=32)),
    st.builds(object),
)
positions = hnp.arrays(dtype=np.float64, shape=3, elements=st.floats(-2, 2))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(action=garbage, position=positions, missed=st.booleans(),
       frame_age=st.one_of(st.floats(0, 0.5), st.just(math.inf), st.just(math.nan)))
def test_no_input_yields_a_command_outside_limits(action, position, missed, frame_age) -> None:
    shield = Shield(make_config())
    result = shield.filter(action, state_at(position), time.monotonic(), {"wrist": frame_age}, missed)
    assert_within_limits(shield, result.command, position)
    if result.held:
        assert np.all(result.command[:4] == 0) and result.reasons


@settings(max_examples=200, deadline=None)
@given(state=st.one_of(st.none(), st.integers(), st.builds(object),
                       st.builds(RobotState, timestamp=floats, ee_position=st.one_of(positions, garbage),
                                 gripper=floats)),
       action=hnp.arrays(dtype=np.float64, shape=5, elements=st.floats(-5, 5)))
def test_garbage_state_always_holds_or_stays_in_limits(state, action) -> None:
    shield = Shield(make_config())
    result = shield.filter(action, state, time.monotonic(), {}, False)
    assert_within_limits(shield, result.command, None)


def test_nan_holds_and_keeps_the_gripper() -> None:
    shield = Shield(make_config())
    pos = np.array([0.5, 0.0, 0.3])
    first = shield.filter(np.array([0.1, 0, 0, 0, 0.5]), state_at(pos), time.monotonic(), {}, False)
    assert not first.held and first.command[4] == pytest.approx(0.5)
    held = shield.filter(np.array([np.nan, 0, 0, 0, -1.0]), state_at(pos), time.monotonic(), {}, False)
    assert held.held and held.reasons == ("non_finite",)
    assert held.command.tolist() == pytest.approx([0, 0, 0, 0, 0.5])
    assert shield.counters.by_reason["non_finite"] == 1 and shield.counters.held == 1


def test_workspace_step_speed_and_gripper_clips_are_counted() -> None:
    shield = Shield(make_config())
    near_edge = np.array([0.69, 0.0, 0.3])
    result = shield.filter(np.array([1.0, 0.0, 0.0, 0.0, 1.0]), state_at(near_edge), time.monotonic(), {}, False)
    assert not result.held
    assert result.command[0] * 0.05 == pytest.approx(0.01, abs=1e-6)  # stops at the wall
    assert "workspace_clip" in result.reasons and "gripper_clip" in result.reasons
    result = shield.filter(np.array([1.0, 1.0, 1.0, 0.0, 0.0]), state_at(np.array([0.5, 0.0, 0.3])),
                           time.monotonic(), {}, False)
    assert {"step_clip", "speed_clip"} <= set(result.reasons)
    counts = shield.counters.snapshot()
    assert counts["ticks"] == 2 and counts["workspace_clip"] == 1 and counts["speed_clip"] == 1


def test_watchdog_holds_on_stale_inputs_and_missed_deadline() -> None:
    shield = Shield(make_config(max_state_age_s=0.05, max_frame_age_s=0.1))
    pos = np.array([0.5, 0.0, 0.3])
    act = np.zeros(5)
    now = time.monotonic()
    assert shield.filter(act, None, now, {}, False).reasons == ("state_missing",)
    assert shield.filter(act, state_at(pos, age=1.0), now, {}, False).reasons == ("state_stale",)
    assert shield.filter(act, state_at(pos), now, {"wrist": 0.5}, False).reasons == ("frame_stale",)
    assert shield.filter(act, state_at(pos), now, {}, True).reasons == ("deadline_missed",)
    lenient = Shield(make_config(hold_on_deadline_miss=False))
    result = lenient.filter(act, state_at(pos), time.monotonic(), {}, True)
    assert not result.held and lenient.counters.by_reason["deadline_missed"] == 1


@pytest.mark.parametrize("field,value", [
    ("action_low", (0.1, -1, -1, -1, -1)), ("max_speed", 0.0), ("gripper_index", 1),
    ("position_axes", (0, 0, 1)), ("max_step", (0.1, -0.1, 0.1)), ("gripper_min", 2.0)])
def test_config_rejects_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field.split("_")[0]):
        make_config(**{field: value})


@settings(max_examples=300, deadline=None)
@given(action=hnp.arrays(dtype=np.float32, shape=5, elements=st.floats(-1, 1, width=32)),
       fraction=hnp.arrays(dtype=np.float64, shape=3, elements=st.floats(0, 1)))
def test_an_action_within_every_limit_passes_bit_for_bit(action, fraction) -> None:
    cfg = make_config(gripper_min=-1.0, gripper_max=1.0, action_low=(-1.0,) * 5, action_high=(1.0,) * 5)
    # a move within the step and speed limits, from a position whose target stays in the box
    action = action.copy()
    action[:3] *= np.float32(0.34)  # |dx|, |dy|, |dz| <= 0.017 m: under every step, norm under 0.03
    margin = 0.02
    position = np.asarray(WS.low) + margin + fraction * (np.asarray(WS.high) - np.asarray(WS.low) - 2 * margin)
    result = Shield(cfg).filter(action, state_at(position), time.monotonic(), {}, False)
    assert not result.held and result.reasons == ()
    assert np.array_equal(result.command, action)  # not even the low bits change


def test_no_rounding_clip_of_full_scale_or_tiny_actions() -> None:
    # max_step equal to the scale (what runtime.robots.shield_config gives): a full-scale
    # action is within it, and a component far below the position's precision survives
    cfg = make_config(max_step=(0.05, 0.05, 0.05), max_speed=0.05 * math.sqrt(3) * 10 * 1.001,
                      gripper_min=-1.0, gripper_max=1.0, action_low=(-1.0,) * 5, action_high=(1.0,) * 5)
    shield = Shield(cfg)
    for position in (np.array([0.6, 0.2, 0.3]), np.array([0.37, -0.23, 0.41])):
        for action in (np.array([1.0, -1.0, 1.0, 0.5, -1.0], np.float32),
                       np.array([-1.0, -1.1e-15, 1e-30, 0.0, 1.0], np.float32)):
            result = shield.filter(action, state_at(position), time.monotonic(), {}, False)
            assert result.reasons == () and np.array_equal(result.command, action)
    assert shield.counters.by_reason == {}


# ----------------------------------------------------------------------------- issue 17, hole 7
def assert_exactly_within_limits(shield: Shield, command: np.ndarray, position: np.ndarray) -> None:
    """No tolerance: the float32 command, read as float64, inside every limit, the end-effector
    limits computed as a robot would (``position + float64(command) * scale``)."""
    cfg = shield.config
    assert command.dtype == np.float32 and np.all(np.isfinite(command))
    c = command.astype(np.float64)
    assert np.all(c >= np.asarray(cfg.action_low)) and np.all(c <= np.asarray(cfg.action_high)), c
    g = cfg.gripper_index % cfg.action_dim
    assert cfg.gripper_min <= c[g] <= cfg.gripper_max, c[g]
    delta = c[list(cfg.position_axes)] * cfg.position_scale
    assert np.all(np.abs(delta) <= np.asarray(cfg.max_step)), delta
    assert np.linalg.norm(delta) <= cfg.max_speed * cfg.control_period_s, delta
    if np.all(position >= cfg.workspace.low) and np.all(position <= cfg.workspace.high):
        target = position + delta
        assert np.all(target >= np.asarray(cfg.workspace.low)) and np.all(target <= np.asarray(cfg.workspace.high))


bound = st.floats(0.05, 1.0).map(lambda x: round(x, 3))  # decimal limits: rarely a float32 value


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(action=hnp.arrays(dtype=np.float64, shape=5, elements=st.floats(-3, 3)),
       position=hnp.arrays(dtype=np.float64, shape=3, elements=st.floats(0.25, 0.75)),
       low=st.tuples(bound, bound, bound, bound), high=st.tuples(bound, bound, bound, bound),
       grip=st.tuples(bound, bound), step=st.tuples(bound, bound, bound), speed=bound,
       scale=st.sampled_from([0.05, 0.01, 0.3, 1 / 3]))
def test_the_float32_command_is_inside_every_limit_exactly(action, position, low, high, grip, step, speed,
                                                           scale) -> None:
    """Hole 7: the shield clipped in float64 and then rounded to float32, so a command could
    exceed a limit by half a float32 ulp (float32(-0.3) < -0.3). Now it clips in the dtype sent."""
    cfg = make_config(action_low=(-low[0], -low[1], -low[2], -low[3], -1.0),
                      action_high=(high[0], high[1], high[2], high[3], 1.0),
                      gripper_min=-grip[0], gripper_max=grip[1], position_scale=scale,
                      max_step=tuple(s * scale for s in step), max_speed=speed, control_period_s=0.1,
                      workspace=Workspace(low=(0.3, 0.31, 0.29), high=(0.7, 0.7, 0.71)))
    shield = Shield(cfg)
    result = shield.filter(action, state_at(position), time.monotonic(), {}, False)
    assert_exactly_within_limits(shield, result.command, position)
    assert_exactly_within_limits(shield, shield.hold_command(), position)


def test_minus_point_three_stays_at_or_above_minus_point_three() -> None:
    shield = Shield(make_config(action_low=(-1.0, -1.0, -1.0, -0.3, -1.0), gripper_min=-0.3))
    result = shield.filter(np.array([0.0, 0.0, 0.0, -5.0, -5.0]), state_at(np.array([0.5, 0.0, 0.3])),
                           time.monotonic(), {}, False)
    assert float(result.command[3]) >= -0.3 and float(result.command[4]) >= -0.3
    assert result.command[3] == np.nextafter(np.float32(-0.3), np.float32(0))
    assert np.all(shield.clip_to_action_space(np.array([-7.0, 7.0, 0.5, -0.3, 1.0])).astype(np.float64)
                  >= np.asarray(shield.config.action_low))
