"""Codec: round trips for every message, stock-msgpack compatibility, and a decoder that
answers any hostile input with ProtocolError only."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.codec import Limits, Spaces, decode, encode
from protocol.errors import ChecksumError, ProtocolError
from protocol.messages import MESSAGE_TYPES, Ack, Weights, messages_equal
from protocol.spaces import ArraySpec
from tests.protocol.strategies import messages, small_batch

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(messages, st.booleans())
def test_every_message_round_trips(msg, single_frame) -> None:
    frames = encode(msg, single_frame=single_frame)
    if single_frame:
        assert len(frames) == 1
    back = decode([bytes(f) for f in frames])
    assert messages_equal(msg, back)
    if isinstance(back, Weights):
        back.verify()


def test_all_message_types_are_covered_by_the_strategy() -> None:
    seen = set()

    @settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @given(messages)
    def collect(msg) -> None:
        seen.add(msg.TYPE)

    collect()
    assert seen == set(MESSAGE_TYPES)


@FAST
@given(messages)
def test_single_frame_is_plain_msgpack(msg) -> None:
    [frame] = encode(msg, single_frame=True)
    obj = msgpack.unpackb(bytes(frame), raw=False)  # stock library, no hooks
    assert obj["type"] == msg.TYPE and obj["version"] == 1


def test_out_of_band_frames_are_raw_array_bytes() -> None:
    batch = small_batch(b=4, pixels=84)
    frames = encode(batch)
    header = msgpack.unpackb(bytes(frames[0]))
    wrist = header["observations"]["wrist"]
    assert wrist == {"dtype": "uint8", "shape": [4, 3, 84, 84], "frame": 1}
    assert bytes(frames[1]) == batch.observations["wrist"].tobytes()


def test_decoded_arrays_are_read_only_views() -> None:
    back = decode(encode(small_batch(pixels=84)))
    assert not back.observations["wrist"].flags.writeable


def test_big_endian_input_is_sent_little_endian() -> None:
    w = Weights.create(agent="forward", version=1, tensors={"w": np.arange(6, dtype=">f4")})
    back = decode(encode(w, single_frame=True))
    back.verify()
    assert back.tensors["w"].dtype.str == "<f4" and back.tensors["w"].tolist() == list(range(6))


def test_checksum_detects_tampering() -> None:
    w = Weights.create(agent="backward", version=2, tensors={"a": np.ones(4, np.float32), "b": np.zeros(2, np.int64)})
    assert Weights.create(agent="backward", version=2, tensors={"b": w.tensors["b"], "a": w.tensors["a"]}).sha256 == w.sha256
    frames = [bytearray(f) for f in encode(w, single_frame=True)]
    frames[0][-70] ^= 1  # flip a bit inside the tensor data (the sha256 string is last)
    with pytest.raises((ChecksumError, ProtocolError)):
        decode(frames).verify()


def test_spaces_are_enforced() -> None:
    batch = small_batch()
    good = Spaces(observation={"wrist": ArraySpec(dtype="uint8", shape=(3, 8, 8)),
                               "proprio": ArraySpec(dtype="float32", shape=(10,))},
                  action=ArraySpec(dtype="float32", shape=(7,)))
    decode(encode(batch), spaces=good)
    for bad in (Spaces(observation={"wrist": good.observation["wrist"]}, action=good.action),
                Spaces(observation={**good.observation, "wrist": ArraySpec(dtype="uint8", shape=(3, 9, 8))},
                       action=good.action),
                Spaces(observation=good.observation, action=ArraySpec(dtype="float32", shape=(6,)))):
        with pytest.raises(ProtocolError, match="transitions"):
            decode(encode(batch), spaces=bad)


def _header(msg) -> dict:
    return msgpack.unpackb(bytes(encode(msg, single_frame=True)[0]), raw=False)


def _pack(obj) -> list[bytes]:
    return [msgpack.packb(obj, use_bin_type=True)]


ACK = Ack(session_id="s", seq=3, trained_through=1)


@pytest.mark.parametrize("mutate, match", [
    (lambda h: h.update(type="nope"), "type"),
    (lambda h: h.update(version=2), "version"),
    (lambda h: h.update(version=True), "version"),
    (lambda h: h.pop("seq"), "missing fields \\['seq'\\]"),
    (lambda h: h.update(extra=1), "unexpected fields \\['extra'\\]"),
    (lambda h: h.update(seq="3"), "ack.seq: expected int"),
    (lambda h: h.update(seq=1.0), "ack.seq: expected int"),
    (lambda h: h.update(seq=-1), "ack.seq"),
    (lambda h: h.update(session_id=b"s"), "ack.session_id: expected str"),
])
def test_ill_formed_fields_name_the_field(mutate, match) -> None:
    h = _header(ACK)
    mutate(h)
    with pytest.raises(ProtocolError, match=match):
        decode(_pack(h))


def test_array_violations() -> None:
    h = _header(small_batch())
    cases = {
        "dtype": {**h["actions"], "dtype": "object"},
        "needs": {**h["actions"], "shape": [4, 7000]},
        "max_array_elements": {**h["actions"], "shape": [2**20, 2**20]},
        "max_ndim": {**h["actions"], "shape": [1] * 20},
        "frame": {"dtype": "uint8", "shape": [4], "frame": 5},
        "keys": {"dtype": "uint8", "shape": [4]},
    }
    for match, arr in cases.items():
        with pytest.raises(ProtocolError, match=match):
            decode(_pack({**h, "actions": arr}))
    bools = {**h["is_first"], "data": b"\x02" * 4}
    with pytest.raises(ProtocolError, match="bool"):
        decode(_pack({**h, "is_first": bools}))


def test_a_single_frame_batch_meets_the_same_limits_and_its_frame_limit_bounds_it_whole() -> None:
    """A runtime sends each batch as one frame (its spill record): every limit applies as to the
    multipart form, except that ``max_frame_bytes`` bounds the whole message (docs/protocol.md)."""
    batch = small_batch(pixels=84)  # 4 images of 21 KiB: each its own frame when multipart
    multipart, single = encode(batch), encode(batch, single_frame=True)
    assert len(multipart) == 2 and len(single) == 1
    assert messages_equal(decode(single), batch) and messages_equal(decode(multipart), batch)
    for limits, match in ((Limits(max_total_elements=1000), "max_total_elements"),
                          (Limits(max_array_elements=1000), "max_array_elements"),
                          (Limits(max_message_bytes=50_000), "max_message_bytes")):
        for frames in (multipart, single):
            with pytest.raises(ProtocolError, match=match):
                decode(frames, limits=limits)
    biggest_frame = max(len(f) for f in multipart)
    decode(multipart, limits=Limits(max_frame_bytes=biggest_frame))
    with pytest.raises(ProtocolError, match="max_frame_bytes"):
        decode(single, limits=Limits(max_frame_bytes=biggest_frame))


def test_limits_are_enforced() -> None:
    frames = encode(small_batch(pixels=84))
    with pytest.raises(ProtocolError, match="max_frame_bytes"):
        decode(frames, limits=Limits(max_frame_bytes=1000))
    with pytest.raises(ProtocolError, match="max_total_elements"):
        decode(frames, limits=Limits(max_total_elements=1000))
    with pytest.raises(ProtocolError, match="max_frames"):
        decode(frames, limits=Limits(max_frames=1))
    with pytest.raises(ProtocolError, match="not referenced"):
        decode([*frames, b"extra"])
    with pytest.raises(ProtocolError, match="frames"):
        decode([])
    h = _header(ACK)
    with pytest.raises(ProtocolError, match="limits"):
        decode(_pack({**h, "session_id": "x" * 5000}))
    with pytest.raises(ProtocolError, match="limits"):
        decode(_pack({**h, "pad": list(range(5000))}))
    with pytest.raises(ValueError, match="max_depth"):
        Limits(max_depth=0)


def test_deep_nesting() -> None:
    deep: object = 1
    for _ in range(100):
        deep = [deep]
    with pytest.raises(ProtocolError, match="max_depth"):
        decode(_pack({"type": "ack", "x": deep}))
    very = b"\x91" * 100_000 + b"\x01"  # 100k nested one-element arrays
    with pytest.raises(ProtocolError):
        decode([very])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=3))
def test_random_bytes_only_protocol_error(frames) -> None:
    with pytest.raises(ProtocolError):
        decode(frames)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.data())
def test_truncated_and_corrupted_frames_only_protocol_error(msg, data) -> None:
    frames = [bytes(f) for f in encode(msg, single_frame=data.draw(st.booleans()))]
    i = data.draw(st.integers(0, len(frames) - 1))
    frame = bytearray(frames[i])
    if data.draw(st.booleans()) and frame:
        frame = frame[: data.draw(st.integers(0, len(frame) - 1))]
    else:
        for _ in range(data.draw(st.integers(1, 8))):
            if frame:
                frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    frames[i] = bytes(frame)
    try:
        out = decode(frames)
    except ProtocolError:
        return
    assert type(out) in MESSAGE_TYPES.values()  # a corruption may still be a valid message


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=5) | st.binary(max_size=5),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
                    max_leaves=20),
       st.sampled_from(sorted(MESSAGE_TYPES)))
def test_wrong_types_only_protocol_error(value, mtype) -> None:
    obj = value if not isinstance(value, dict) else {**value, "type": mtype, "version": 1}
    with pytest.raises(ProtocolError):
        decode(_pack(obj))


def test_declared_size_far_beyond_data() -> None:
    # a bin header claiming 4 GiB followed by 3 bytes; and a map claiming 2**31 entries
    with pytest.raises(ProtocolError):
        decode([b"\xc6\xff\xff\xff\xff abc"])
    with pytest.raises(ProtocolError):
        decode([b"\xdf\x7f\xff\xff\xff"])
    h = _header(small_batch())
    with pytest.raises(ProtocolError, match="needs"):
        decode(_pack({**h, "actions": {"dtype": "float64", "shape": [4096, 4096], "data": b"x"}}))


def test_weights_verification_is_remembered_and_never_encoded() -> None:
    from protocol.errors import ChecksumError
    from protocol.messages import Weights

    good = Weights.create(agent="forward", version=3, tensors={"w": np.ones((4, 4), np.float32)})
    assert not good.verified
    good.verify()
    assert good.verified
    [frame] = encode(good, single_frame=True)
    assert b"verified" not in bytes(frame)
    decoded = decode([frame])
    assert not decoded.verified and messages_equal(decoded, good)
    bad = Weights(agent="forward", version=3, tensors={"w": np.zeros((4, 4), np.float32)}, sha256=good.sha256)
    with pytest.raises(ChecksumError):
        bad.verify()
    assert not bad.verified


@given(st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1, max_size=64))
def test_float16_weights_never_turn_a_finite_value_infinite(values) -> None:
    from protocol.tensors import weights_in_dtype

    array = np.asarray(values, np.float32)
    wire = weights_in_dtype({"w": array, "steps": np.arange(3, dtype=np.int64)}, "float16")
    assert wire["steps"].dtype == np.int64
    if np.all(np.isfinite(array)) and np.abs(array).max() <= 65504:
        assert wire["w"].dtype == np.float16
        back = wire["w"].astype(np.float32)
        # float16 rounding: relative 2^-11 for normal values, absolute 2^-25 below 2^-14
        np.testing.assert_array_less(np.abs(back - array), np.maximum(np.abs(array) * 2.0**-11, 2.0**-24) * 1.0001)
    else:
        assert wire["w"] is array  # kept exactly: float16 cannot hold it


def test_weights_dtype_float32_is_exact_and_unknown_dtypes_are_refused() -> None:
    from protocol.tensors import weights_in_dtype

    w = {"a": np.linspace(-1, 1, 5, dtype=np.float32)}
    assert weights_in_dtype(w, "float32")["a"] is w["a"]
    with pytest.raises(ValueError, match="weights dtype"):
        weights_in_dtype(w, "bfloat16")
