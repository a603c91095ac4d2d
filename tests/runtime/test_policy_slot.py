"""Policy slot: verification of weight blobs, versioning, atomic swap, inference."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis.extra.numpy import array_shapes, arrays
from hypothesis.strategies import floats

from runtime.errors import PolicyError
from runtime.policy_slot import PolicySlot, weights_sha256
from runtime.policy_weights import all_finite
from tests.runtime.fakes import ACTION_DIM, TinyPolicy, make_weights

torch.set_num_threads(1)
OBS = {"proprio": np.array([0.1, 0.2, 0.3, 0.0], np.float32)}


def reference_action(weights, obs) -> np.ndarray:
    module = TinyPolicy()
    module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.tensors.items()})
    with torch.no_grad():
        return module({k: torch.from_numpy(v)[None] for k, v in obs.items()})[0].numpy()


def test_offer_activates_and_act_matches_a_reference() -> None:
    slot = PolicySlot(TinyPolicy)
    try:
        assert not slot.has_policy(0)
        with pytest.raises(PolicyError):
            slot.act(0, OBS)
        weights = make_weights("forward", 1, seed=3)
        result = asyncio.run(slot.offer(weights))
        assert result.accepted and result.agent == 0 and result.version == 1
        assert result.swap_to_active_ms < 1000
        action = slot.act(0, OBS)
        assert action.shape == (ACTION_DIM,) and action.dtype == np.float32
        np.testing.assert_allclose(action, reference_action(weights, OBS), rtol=1e-5)
        assert not slot.has_policy(1) and slot.version(0) == 1
    finally:
        slot.close()


def tampered(weights, **changes):
    return dataclasses.replace(weights, **changes)


def bad_blobs():
    good = make_weights("forward", 5)
    name = sorted(good.tensors)[0]
    nan = dict(good.tensors, **{name: np.full_like(good.tensors[name], np.nan)})
    half = {k: v.astype(np.float16) for k, v in good.tensors.items()}  # the learner's wire dtype
    one_nan16, one_inf16 = dict(half), dict(half)
    one_nan16[name] = half[name].copy()
    one_nan16[name].flat[-1] = np.nan
    one_inf16[name] = half[name].copy()
    one_inf16[name].flat[0] = -np.inf
    wrong_shape = dict(good.tensors, **{name: np.zeros((1, 1), np.float32)})
    wrong_dtype = dict(good.tensors, **{name: good.tensors[name].astype(np.float64)})
    missing = {k: v for k, v in good.tensors.items() if k != name}
    extra = dict(good.tensors, bogus=np.zeros(1, np.float32))
    return {
        "checksum": tampered(good, sha256="0" * 64),
        "nan": tampered(good, tensors=nan, sha256=weights_sha256(nan)),
        "one_nan_float16": tampered(good, tensors=one_nan16, sha256=weights_sha256(one_nan16)),
        "one_inf_float16": tampered(good, tensors=one_inf16, sha256=weights_sha256(one_inf16)),
        "shape": tampered(good, tensors=wrong_shape, sha256=weights_sha256(wrong_shape)),
        "dtype": tampered(good, tensors=wrong_dtype, sha256=weights_sha256(wrong_dtype)),
        "missing": tampered(good, tensors=missing, sha256=weights_sha256(missing)),
        "extra": tampered(good, tensors=extra, sha256=weights_sha256(extra)),
        "agent": tampered(good, agent="sideways"),
        "version_type": tampered(good, version="7"),
        "tensors_type": tampered(good, tensors=[1, 2]),
        "not_weights": object(),
        "older": make_weights("forward", 1),
        "same": make_weights("forward", 2, seed=9),
    }


@pytest.mark.parametrize("kind", sorted(bad_blobs()))
def test_bad_blobs_are_rejected_and_the_current_policy_stays(kind: str) -> None:
    slot = PolicySlot(TinyPolicy)
    try:
        current = make_weights("forward", 2, seed=1)
        assert slot.offer_blocking(current).accepted
        before = slot.act(0, OBS)
        result = asyncio.run(slot.offer(bad_blobs()[kind]))
        assert not result.accepted and result.reason
        assert slot.rejected == 1 and slot.version(0) == 2
        np.testing.assert_array_equal(slot.act(0, OBS), before)
    finally:
        slot.close()


@settings(max_examples=200, deadline=None)
@given(arrays(np.float16, array_shapes(max_dims=3, max_side=40), elements=floats(width=16, allow_nan=True)))
def test_the_float16_finiteness_test_agrees_with_numpy(array: np.ndarray) -> None:
    assert all_finite(array) == bool(np.isfinite(array).all())
    assert all_finite(array.T) == bool(np.isfinite(array).all())  # not C-contiguous


def test_the_float16_finiteness_test_at_the_edges_of_the_format() -> None:
    edges = np.array([65504, -65504, 32768, 6e-8, -0.0, 0.0, 1.0], np.float16)  # largest, subnormal, zeros
    assert all_finite(edges)
    for bad in (np.inf, -np.inf, np.nan):
        assert not all_finite(np.append(edges, np.float16(bad)))


def test_newer_versions_swap_and_the_old_module_is_reused() -> None:
    slot = PolicySlot(TinyPolicy)
    try:
        for version in range(1, 5):
            result = slot.offer_blocking(make_weights("backward", version, seed=version))
            assert result.accepted
            np.testing.assert_allclose(slot.act(1, OBS), reference_action(make_weights("backward", version,
                                                                                       seed=version), OBS), rtol=1e-5)
        assert slot.accepted == 4 and slot.counters()["version_backward"] == 4
    finally:
        slot.close()


def test_accepts_a_protocol_weights_message() -> None:
    from protocol.messages import Weights

    slot = PolicySlot(TinyPolicy)
    try:
        tensors = make_weights("forward", 1, seed=4).tensors
        assert slot.offer_blocking(Weights.create(agent="backward", version=3, tensors=tensors)).accepted
        assert slot.version(1) == 3
    finally:
        slot.close()


def test_checksum_is_order_independent_and_content_sensitive() -> None:
    a = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.int64)}
    b = {"b": np.ones(2, np.int64), "x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    assert weights_sha256(a) == weights_sha256(b)
    assert weights_sha256(a) != weights_sha256({**a, "x": a["x"].reshape(3, 2)})
    assert weights_sha256(a) != weights_sha256({**a, "b": np.ones(2, np.int32)})


def test_float16_weights_load_into_a_float32_policy() -> None:
    from protocol.messages import Weights
    from protocol.tensors import weights_in_dtype

    exact = make_weights("forward", 1, seed=4)
    half = weights_in_dtype(exact.tensors, "float16")
    assert all(a.dtype == np.float16 for a in half.values())
    slot = PolicySlot(TinyPolicy)
    try:
        assert slot.offer_blocking(Weights.create(agent="forward", version=1, tensors=half)).accepted
        np.testing.assert_allclose(slot.act(0, OBS), reference_action(exact, OBS), atol=2e-3)
    finally:
        slot.close()


def test_bfloat16_conv_trunk_acts_like_the_float32_pixel_actor() -> None:
    from learner.networks import NetworkConfig, build_actor
    from protocol.messages import Weights
    from runtime.policy_slot import PolicySlotConfig

    spec = {"wrist": ((3, 84, 84), "uint8"), "proprio": ((4,), "float32")}
    net = NetworkConfig(hidden_dim=64)
    tensors = {k: v.numpy().copy() for k, v in build_actor(spec, 3, net).state_dict().items()}
    rng = np.random.default_rng(0)
    obs = {"wrist": rng.integers(0, 256, (3, 84, 84), dtype=np.uint8), "proprio": rng.standard_normal(4).astype(np.float32)}
    actions = {}
    for dtype in ("float32", "bfloat16"):
        slot = PolicySlot.for_actor(spec, 3, net.to_dict(), PolicySlotConfig(conv_dtype=dtype, explore=False))
        try:
            assert slot.offer_blocking(Weights.create(agent="forward", version=1, tensors=tensors)).accepted
            actions[dtype] = slot.act(0, obs)
        finally:
            slot.close()
    assert np.abs(actions["float32"]).max() > 1e-3
    np.testing.assert_allclose(actions["bfloat16"], actions["float32"], atol=1e-2)


def test_actor_slot_samples_the_policy_gaussian_in_practice_and_its_mean_otherwise() -> None:
    from learner.networks import NetworkConfig, build_actor
    from protocol.messages import Weights
    from runtime.policy_slot import PolicySlotConfig

    spec = {"state": ((5,), "float32")}
    net = NetworkConfig(hidden_dim=32)
    actor = build_actor(spec, 3, net).eval()
    tensors = {k: v.numpy().copy() for k, v in actor.state_dict().items()}
    obs = {"state": np.linspace(-1, 1, 5).astype(np.float32)}
    with torch.no_grad():
        mu, log_std = actor.actor(actor.encoder({"state": torch.from_numpy(obs["state"])[None]}))
        mean_action = actor({"state": torch.from_numpy(obs["state"])[None]})[0].numpy()
    weights = Weights.create(agent="forward", version=1, tensors=tensors)
    shown = PolicySlot.for_actor(spec, 3, net.to_dict(), PolicySlotConfig(explore=False))
    practice = PolicySlot.for_actor(spec, 3, net.to_dict(), PolicySlotConfig(seed=7))
    try:
        assert shown.offer_blocking(weights).accepted and practice.offer_blocking(weights).accepted
        np.testing.assert_allclose(shown.act(0, obs), mean_action, atol=1e-6)
        samples = np.stack([practice.act(0, obs) for _ in range(4000)])
    finally:
        shown.close()
        practice.close()
    assert samples.shape == (4000, 3) and samples.dtype == np.float32 and np.abs(samples).max() < 1
    pre_tanh = np.arctanh(np.clip(samples, -1 + 1e-6, 1 - 1e-6))
    np.testing.assert_allclose(pre_tanh.mean(0), mu[0].numpy(), atol=0.1)
    np.testing.assert_allclose(pre_tanh.std(0), log_std[0].exp().numpy(), rtol=0.1)


def test_prefetch_reads_the_active_weights_and_is_a_no_op_before_them() -> None:
    slot = PolicySlot(TinyPolicy)
    try:
        slot.prefetch(0)
        assert len(slot.prefetch_s) == 0
        assert slot.offer_blocking(make_weights("forward", 1)).accepted
        slot.prefetch(0)
        slot.prefetch(1)  # no backward weights yet
        assert len(slot.prefetch_s) == 1 and slot.counters()["prefetch_p50_ms"] > 0
    finally:
        slot.close()


def test_traced_policy_follows_every_swap_like_the_eager_module() -> None:
    from learner.networks import NetworkConfig, build_actor
    from protocol.messages import Weights
    from runtime.policy_slot import PolicySlotConfig

    spec = {"wrist": ((3, 84, 84), "uint8"), "proprio": ((4,), "float32")}
    net = NetworkConfig(hidden_dim=32)
    rng = np.random.default_rng(1)
    obs = {"wrist": rng.integers(0, 256, (3, 84, 84), dtype=np.uint8), "proprio": rng.standard_normal(4).astype(np.float32)}
    slots = {trace: PolicySlot.for_actor(spec, 2, net.to_dict(),
                                         PolicySlotConfig(conv_dtype="float32", trace=trace, explore=False))
             for trace in (True, False)}
    try:
        for version in range(1, 6):  # more swaps than spare modules: every module is reused
            torch.manual_seed(version)
            tensors = {k: v.numpy().copy() for k, v in build_actor(spec, 2, net).state_dict().items()}
            agent = "forward" if version % 2 else "backward"
            actions = []
            for slot in slots.values():
                assert slot.offer_blocking(Weights.create(agent=agent, version=version, tensors=tensors)).accepted
                actions.append(slot.act(0 if agent == "forward" else 1, obs))
            np.testing.assert_allclose(actions[0], actions[1], rtol=1e-5, atol=1e-6)
    finally:
        for slot in slots.values():
            slot.close()


def _pixel_actor_blob(spec, net, seed=0):
    from learner.networks import build_actor

    torch.manual_seed(seed)
    return {k: v.numpy().copy() for k, v in build_actor(spec, 3, net).state_dict().items()}


def test_float16_projection_acts_like_float32_from_float32_and_float16_blobs() -> None:
    from learner.networks import NetworkConfig
    from protocol.messages import Weights
    from protocol.tensors import weights_in_dtype
    from runtime.policy_slot import PolicySlotConfig

    spec = {"wrist": ((3, 84, 84), "uint8"), "proprio": ((4,), "float32")}
    net = NetworkConfig(hidden_dim=64)
    tensors = _pixel_actor_blob(spec, net)
    rng = np.random.default_rng(2)
    obs = {"wrist": rng.integers(0, 256, (3, 84, 84), dtype=np.uint8), "proprio": rng.standard_normal(4).astype(np.float32)}
    actions = {}
    for projection, wire in (("float32", "float32"), ("float16", "float32"), ("float16", "float16")):
        slot = PolicySlot.for_actor(spec, 3, net.to_dict(), PolicySlotConfig(conv_dtype="float32", explore=False,
                                                                             projection_dtype=projection))
        try:
            blob = weights_in_dtype(tensors, wire)
            assert slot.offer_blocking(Weights.create(agent="forward", version=1, tensors=blob)).accepted
            actions[projection, wire] = slot.act(0, obs)
        finally:
            slot.close()
    reference = actions["float32", "float32"]
    assert np.abs(reference).max() > 1e-3
    for key in (("float16", "float32"), ("float16", "float16")):
        np.testing.assert_allclose(actions[key], reference, atol=5e-3)


def test_a_projection_value_beyond_float16_is_rejected_and_the_policy_stays() -> None:
    from learner.networks import NetworkConfig
    from protocol.messages import Weights
    from runtime.policy_slot import PolicySlotConfig

    spec = {"wrist": ((3, 84, 84), "uint8"), "proprio": ((4,), "float32")}
    net = NetworkConfig(hidden_dim=32)
    good = _pixel_actor_blob(spec, net)
    huge = {k: v.copy() for k, v in good.items()}
    huge["encoder.projection.0.weight"][0, 0] = 1e6  # finite in float32, inf in float16
    obs = {"wrist": np.zeros((3, 84, 84), np.uint8), "proprio": np.zeros(4, np.float32)}
    for projection, accepted in (("float16", False), ("float32", True)):
        slot = PolicySlot.for_actor(spec, 3, net.to_dict(), PolicySlotConfig(projection_dtype=projection, explore=False))
        try:
            assert slot.offer_blocking(Weights.create(agent="forward", version=1, tensors=good)).accepted
            before = slot.act(0, obs)
            result = slot.offer_blocking(Weights.create(agent="forward", version=2, tensors=huge))
            assert result.accepted is accepted
            if not accepted:
                assert "float16" in result.reason and slot.version(0) == 1
                np.testing.assert_array_equal(slot.act(0, obs), before)
        finally:
            slot.close()
