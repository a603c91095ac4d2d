"""Policy slot: verification of weight blobs, versioning, atomic swap, inference."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest
import torch

from runtime.errors import PolicyError
from runtime.policy_slot import PolicySlot, weights_sha256
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
    wrong_shape = dict(good.tensors, **{name: np.zeros((1, 1), np.float32)})
    wrong_dtype = dict(good.tensors, **{name: good.tensors[name].astype(np.float64)})
    missing = {k: v for k, v in good.tensors.items() if k != name}
    extra = dict(good.tensors, bogus=np.zeros(1, np.float32))
    return {
        "checksum": tampered(good, sha256="0" * 64),
        "nan": tampered(good, tensors=nan, sha256=weights_sha256(nan)),
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
