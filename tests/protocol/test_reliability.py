"""ReceiveTracker and SendWindow: dedupe, trimming, gaps, bounds, resend, persistence, and a
lossy/duplicating/reordering channel that still delivers every step exactly once."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import ProtocolError, SequenceGap
from protocol.reliability import ReceiveTracker
from tests.protocol.send_window import SendWindow, WindowFull
from tests.protocol.strategies import small_batch


def test_admit_dedupes_trims_and_rejects_gaps() -> None:
    t = ReceiveTracker()
    assert t.admit(small_batch(first_seq=0, b=4)).first_seq == 0
    assert t.admit(small_batch(first_seq=0, b=4)) is None
    part = t.admit(small_batch(first_seq=2, b=4))
    assert part.first_seq == 4 and part.size == 2
    assert part.observations["proprio"][:, 0].tolist() == [4, 5]
    with pytest.raises(SequenceGap) as err:
        t.admit(small_batch(first_seq=9, b=1))
    assert err.value.expected == 6 and isinstance(err.value, ProtocolError)
    assert t.admit(small_batch(session_id="other", first_seq=0, b=1)) is not None


def test_commit_rules_and_state_round_trip() -> None:
    t = ReceiveTracker()
    t.admit(small_batch(first_seq=0, b=5))
    with pytest.raises(ProtocolError, match="commit"):
        t.commit("s", 6)
    t.commit("s", 3)
    with pytest.raises(ProtocolError, match="commit"):
        t.commit("s", 2)
    state = json.loads(json.dumps(t.export_state()))
    r = ReceiveTracker.from_state(state)
    assert r.committed("s") == 3 and r.admitted("s") == 3  # uncommitted steps are re-admitted
    assert r.admit(small_batch(first_seq=0, b=5)).first_seq == 3
    with pytest.raises(ProtocolError):
        ReceiveTracker.from_state({"version": 1, "sessions": {"s": -1}})
    with pytest.raises(ProtocolError):
        ReceiveTracker.from_state({"sessions": {}})


def test_resume_point_detects_a_runtime_that_lost_its_state() -> None:
    t = ReceiveTracker()
    t.admit(small_batch(first_seq=0, b=5))
    t.commit("s", 5)
    assert t.resume_point("s", 7) == 5
    with pytest.raises(ProtocolError, match="lost its state"):
        t.resume_point("s", 2)


def test_send_window_bounds_ack_and_resend() -> None:
    w = SendWindow(max_batches=3)
    for i in range(3):
        w.push(small_batch(first_seq=4 * i))
    with pytest.raises(WindowFull):
        w.push(small_batch(first_seq=12))
    with pytest.raises(ProtocolError, match="first_seq"):
        SendWindow().push(small_batch(first_seq=3))
    assert w.on_ack(5) == 1 and len(w) == 2 and w.acked == 5
    assert w.on_ack(2) == 0  # stale
    with pytest.raises(ProtocolError):
        w.on_ack(100)
    resent = list(w.resend_from(6))
    assert [(b.first_seq, b.size) for b in resent] == [(6, 2), (8, 4)]
    with pytest.raises(ProtocolError, match="released"):
        list(w.resend_from(1))
    byte_bound = SendWindow(max_bytes=small_batch().nbytes)
    byte_bound.push(small_batch())
    assert not byte_bound.has_room(1)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 30))
def test_lossy_channel_delivers_exactly_once_in_order(seed: int, n_batches: int) -> None:
    rng = random.Random(seed)
    window, tracker, got = SendWindow(), ReceiveTracker(), []
    for i in range(n_batches):
        window.push(small_batch(first_seq=window.next_seq, b=rng.randint(1, 4)))
    in_flight = list(window.resend_from(0))
    for _ in range(500):
        if window.acked == window.next_seq:
            break
        rng.shuffle(in_flight)
        delivered = [b for b in in_flight if rng.random() < 0.6]  # loss
        delivered += [b for b in delivered if rng.random() < 0.2]  # duplication
        for batch in delivered:
            try:
                fresh = tracker.admit(batch)
            except SequenceGap:
                continue
            if fresh is not None:
                got.extend(fresh.observations["proprio"][:, 0].astype(int).tolist())
                tracker.commit("s", fresh.end_seq)
        if rng.random() < 0.7:  # the ack itself may be lost
            window.on_ack(tracker.committed("s"))
        in_flight = list(window.resend_from(window.acked))  # reconnect: resend the rest
    assert got == list(range(window.next_seq))


def test_skip_to_declares_a_hole_and_resumes_after_it() -> None:
    tracker = ReceiveTracker()
    tracker.commit("s", tracker.admit(small_batch("s", 0, 4)).end_seq)
    with pytest.raises(SequenceGap):
        tracker.admit(small_batch("s", 10, 2))
    assert tracker.skip_to("s", 10) == 6
    assert tracker.committed("s") == 10
    fresh = tracker.admit(small_batch("s", 10, 2))
    assert fresh is not None and fresh.first_seq == 10
    with pytest.raises(ProtocolError):  # steps in flight: a skip would lose them silently
        tracker.skip_to("s", 20)
    tracker.commit("s", 12)
    with pytest.raises(ProtocolError):  # not ahead of what is committed
        tracker.skip_to("s", 12)
