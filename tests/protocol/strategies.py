"""Hypothesis strategies producing valid protocol messages (shared by the protocol tests)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protocol.messages import (
    AGENTS, Ack, Command, Heartbeat, Hello, LoopStats, Status, TransitionBatch, Weights, Welcome,
)
from protocol.spaces import ALLOWED_DTYPES, ArraySpec

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_./0123456789", min_size=1, max_size=12)
texts = st.text(max_size=40)
seqs = st.integers(min_value=0, max_value=2**40)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
shapes = st.lists(st.integers(0, 5), max_size=3).map(tuple)
specs = st.builds(ArraySpec, dtype=st.sampled_from(sorted(ALLOWED_DTYPES)), shape=shapes)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), finite, texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(names, inner, max_size=4)),
                           max_leaves=12)


def arrays(dtype: str, shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    """Arrays of ``dtype``/``shape``, finite for floats."""
    elements = finite.filter(lambda x: abs(x) < 6e4) if dtype.startswith("float") else None
    return hnp.arrays(np.dtype(dtype), shape, elements=elements)


@st.composite
def any_array(draw: st.DrawFn) -> np.ndarray:
    """An array of any allowed dtype and small shape (sometimes big enough to go out of band)."""
    dtype = draw(st.sampled_from(sorted(ALLOWED_DTYPES)))
    if draw(st.booleans()):
        return np.full(draw(st.sampled_from([(20000,), (3, 84, 84)])), 1, dtype=dtype)
    return draw(arrays(dtype, draw(shapes)))


@st.composite
def transition_batches(draw: st.DrawFn, *, b: int | None = None, first_seq: int | None = None) -> TransitionBatch:
    """A valid TransitionBatch with a pixel and a proprio observation."""
    n = b if b is not None else draw(st.integers(1, 6))
    pixels = (n, 3, 84, 84) if draw(st.booleans()) else (n, 3, 4, 4)
    return TransitionBatch(
        session_id=draw(names), first_seq=draw(seqs) if first_seq is None else first_seq,
        observations={"wrist": draw(arrays("uint8", pixels)) if pixels[2] == 4 else np.ones(pixels, np.uint8),
                      "proprio": draw(arrays("float32", (n, 10)))},
        actions=draw(arrays("float32", (n, 7))),
        agents=draw(arrays("uint8", (n,)).map(lambda a: a % 2)),
        timestamps=draw(arrays("float64", (n,))),
        is_first=draw(arrays("bool", (n,))), is_last=draw(arrays("bool", (n,))))


loop_stats = st.builds(LoopStats, steps=seqs, loop_hz=finite, jitter_p50_ms=finite, jitter_p99_ms=finite,
                       jitter_max_ms=finite, overruns=seqs, inference_p50_ms=finite, queue_depth=seqs,
                       spilled_bytes=seqs, agent=st.sampled_from(AGENTS), paused=st.booleans())

messages = st.one_of(
    st.tuples(seqs, seqs).map(sorted).flatmap(lambda seq_range: st.builds(
        Hello, session_id=names, robot=texts, task=texts,
        observation_space=st.dictionaries(names, specs, min_size=1, max_size=3),
        action_space=specs, config_hash=texts, oldest_seq=st.just(seq_range[0]), next_seq=st.just(seq_range[1]))),
    st.builds(Welcome, session_id=names, accepted=st.booleans(), reason=texts, resume_seq=seqs,
              net_config=st.dictionaries(names, json_values, max_size=4), weights_endpoint=texts),
    transition_batches(),
    st.builds(Ack, session_id=names, seq=seqs, trained_through=seqs),
    st.builds(lambda agent, version, tensors: Weights.create(agent=agent, version=version, tensors=tensors),
              st.sampled_from(AGENTS), seqs, st.dictionaries(names, any_array(), max_size=4)),
    st.builds(Heartbeat, session_id=texts, role=texts, sent_at=finite, stats=st.none() | loop_stats),
    st.builds(Command, kind=st.sampled_from(["pause", "resume", "estop", "go_home", "status"]),
              agent=st.none() | st.sampled_from(AGENTS), request_id=seqs)
    | st.builds(Command, kind=st.just("switch_agent"), agent=st.sampled_from(AGENTS), request_id=seqs),
    st.builds(Status, request_id=seqs, role=texts, state=texts, detail=st.dictionaries(names, scalars, max_size=4),
              ok=st.booleans(), message=texts),
)


def small_batch(session_id: str = "s", first_seq: int = 0, b: int = 4, pixels: int = 8) -> TransitionBatch:
    """A deterministic batch whose proprio[:, 0] encodes each step's seq (for order checks)."""
    seq = np.arange(first_seq, first_seq + b, dtype=np.float32)
    return TransitionBatch(
        session_id=session_id, first_seq=first_seq,
        observations={"wrist": np.zeros((b, 3, pixels, pixels), np.uint8),
                      "proprio": np.repeat(seq[:, None], 10, axis=1)},
        actions=np.zeros((b, 7), np.float32), agents=np.zeros(b, np.uint8),
        timestamps=seq.astype(np.float64), is_first=np.zeros(b, bool), is_last=np.zeros(b, bool))
