"""protocol.spaces: one array-spec type for the devices and the wire."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hardware.interfaces import ArraySpec as DeviceArraySpec
from protocol.codec import decode, encode
from protocol.errors import ProtocolError
from protocol.messages import Hello
from protocol.spaces import ALLOWED_DTYPES, ArraySpec, obs_spec_of


def test_the_devices_and_the_wire_share_one_type() -> None:
    assert DeviceArraySpec is ArraySpec


@pytest.mark.parametrize("kwargs, match", [
    (dict(shape=(3,), dtype="complex64"), "dtype"), (dict(shape=(3,), dtype="object"), "dtype"),
    (dict(shape=(-1,), dtype="float32"), "non-negative"), (dict(shape=(True,), dtype="float32"), "non-negative"),
    (dict(shape=(2.0,), dtype="float32"), "non-negative"),
])
def test_a_bad_spec_is_a_protocol_error_naming_the_field(kwargs: dict, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        ArraySpec(**kwargs)


def test_bounds_broadcast_and_stay_off_the_wire() -> None:
    spec = ArraySpec(shape=(3,), dtype="float32", low=-1.0, high=(1.0, 2.0, 3.0))
    assert spec.low_array().tolist() == [-1.0, -1.0, -1.0] and spec.high_array().tolist() == [1.0, 2.0, 3.0]
    assert np.isinf(ArraySpec(shape=(2,), dtype="float32").low_array()).all()
    wire = spec.unbounded()
    assert (wire.low, wire.high, wire.shape, wire.dtype) == (None, None, (3,), "float32")
    hello = Hello(session_id="s", robot="sim", task="door", observation_space={"state": wire}, action_space=wire,
                  config_hash="h", next_seq=0, oldest_seq=0)
    assert decode(encode(hello)) == hello


@given(st.dictionaries(st.text(min_size=1, max_size=8),
                       st.tuples(st.lists(st.integers(0, 512), max_size=4), st.sampled_from(sorted(ALLOWED_DTYPES))),
                       max_size=5))
def test_obs_spec_of_is_the_learners_form_of_a_space(entries: dict) -> None:
    space = {name: ArraySpec(shape=tuple(shape), dtype=dtype, low=0.0) for name, (shape, dtype) in entries.items()}
    assert obs_spec_of(space) == {name: (tuple(shape), dtype) for name, (shape, dtype) in entries.items()}
    assert all(isinstance(d, int) for shape, _ in obs_spec_of(space).values() for d in shape)
