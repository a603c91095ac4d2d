"""Replay: frames stored once, successor links, ring eviction, exact demo oversampling."""

import numpy as np
import pytest
import torch

from learner.errors import ReplayError
from learner.replay import ReplayBuffer, ReplayConfig, sample_mixed

torch.set_num_threads(1)

SPEC = {"cam": ((3, 4, 4), "uint8"), "proprio": ((2,), "float32")}


def steps(start: int, n: int, *, first: bool = False, last: bool = False) -> tuple:
    """n steps whose observations and actions encode their global index `start + i`."""
    idx = np.arange(start, start + n)
    obs = {
        "cam": np.broadcast_to((idx % 256).astype(np.uint8)[:, None, None, None], (n, 3, 4, 4)).copy(),
        "proprio": np.stack([idx, idx], axis=1).astype(np.float32),
    }
    actions = np.stack([idx, -idx], axis=1).astype(np.float32)
    is_first = np.zeros(n, bool)
    is_last = np.zeros(n, bool)
    is_first[0] = first
    is_last[-1] = last
    return obs, actions, is_first, is_last


def test_next_obs_is_the_successor_and_never_crosses_segments() -> None:
    buf = ReplayBuffer(SPEC, 2, capacity=100)
    buf.add_steps(*steps(0, 5, first=True, last=True))
    buf.add_steps(*steps(10, 3, first=True))
    buf.add_steps(*steps(13, 2))  # continues the open segment across calls
    valid = set(buf.valid_rows().tolist())
    # rows 0..3 (step 4 is last), rows 5..8 (row 9 = step 14 has no successor yet)
    assert valid == {0, 1, 2, 3, 5, 6, 7, 8}
    batch = buf.sample(200, np.random.default_rng(0))
    t = batch.obs["proprio"][:, 0]
    assert torch.equal(batch.next_obs["proprio"][:, 0], t + 1)
    assert torch.equal(batch.action[:, 0], t)
    assert batch.obs["cam"].dtype == torch.uint8
    assert not batch.is_demo.any()
    assert torch.allclose(batch.discount, torch.full((200,), 0.99))
    assert not torch.isin(t, torch.tensor([4.0, 14.0])).any()


def test_ring_eviction_drops_transitions_whose_successor_is_gone() -> None:
    buf = ReplayBuffer(SPEC, 2, capacity=8)
    buf.add_steps(*steps(0, 5, first=True))
    buf.add_steps(*steps(5, 6))  # 11 written, 8 kept: steps 3..10
    assert len(buf) == 8 and buf.total_written == 11
    batch = buf.sample(500, np.random.default_rng(1))
    t = batch.obs["proprio"][:, 0]
    assert set(t.tolist()) == set(range(3, 10))  # step 10 has no successor yet
    assert torch.equal(batch.next_obs["proprio"][:, 0], t + 1)
    # A closing step overwrites the oldest row (step 3): nothing may point at it.
    buf.add_steps(*steps(11, 1, last=True))
    t = buf.sample(500, np.random.default_rng(2)).obs["proprio"][:, 0]
    assert set(t.tolist()) == set(range(4, 11))


def test_evicted_tail_is_not_relinked() -> None:
    buf = ReplayBuffer(SPEC, 2, capacity=4)
    buf.add_steps(*steps(0, 1, first=True), stream=7)  # tail of stream 7
    buf.add_steps(*steps(100, 4, first=True), stream=8)  # evicts it
    buf.add_steps(*steps(1, 2), stream=7)
    t = buf.sample(300, np.random.default_rng(3)).obs["proprio"][:, 0]
    assert set(t.tolist()) <= {102.0, 1.0}  # 103->? evicted neighbour chain broken correctly
    assert 0.0 not in t.tolist()


def test_interleaved_streams_link_to_their_own_successors() -> None:
    buf = ReplayBuffer(SPEC, 2, capacity=64)
    for k in range(4):
        buf.add_steps(*steps(10 * k, 2, first=(k == 0)), stream=0)
        buf.add_steps(*steps(1000 + 10 * k, 2, first=(k == 0)), stream=1)
    batch = buf.sample(400, np.random.default_rng(4))
    t = batch.obs["proprio"][:, 0]
    nxt = batch.next_obs["proprio"][:, 0]
    # within a call +1; across calls the stream's own next chunk (+9)
    assert torch.all((nxt - t == 1) | (nxt - t == 9))


def test_sampling_fails_cleanly_without_transitions() -> None:
    buf = ReplayBuffer(SPEC, 2, capacity=10)
    with pytest.raises(ReplayError):
        buf.sample(4, np.random.default_rng(0))
    buf.add_steps(*steps(0, 1, first=True, last=True))
    with pytest.raises(ReplayError):
        buf.sample(4, np.random.default_rng(0))
    with pytest.raises(ReplayError):
        buf.add_steps({"cam": np.zeros((1, 3, 4, 4), np.float32)}, np.zeros((1, 2), np.float32),
                      np.zeros(1, bool), np.zeros(1, bool))


def test_mixed_batches_have_exact_demo_counts() -> None:
    agent = ReplayBuffer(SPEC, 2, capacity=50)
    demo = ReplayBuffer(SPEC, 2, capacity=50)
    agent.add_steps(*steps(0, 40, first=True))
    demo.add_steps(*steps(500, 20, first=True, last=True))
    rng = np.random.default_rng(5)
    for n_demo in (0, 1, 16, 32):
        batch = sample_mixed(agent, demo, 32, n_demo, rng)
        assert len(batch) == 32
        assert int(batch.is_demo.sum()) == n_demo
        from_demo = batch.obs["proprio"][:, 0] >= 500
        assert torch.equal(from_demo, batch.is_demo)
        assert batch.demo_fraction == pytest.approx(n_demo / 32)
    empty_demo = ReplayBuffer(SPEC, 2, capacity=5)
    assert not sample_mixed(agent, empty_demo, 32, 16, rng).is_demo.any()


def test_memory_report_is_within_target_for_pixels() -> None:
    spec = {"wrist": ((3, 84, 84), "uint8"), "third": ((3, 84, 84), "uint8"), "proprio": ((4,), "float32")}
    buf = ReplayBuffer(spec, 7, capacity=1000)
    report = buf.memory_report()
    assert report["frame_bytes"] == 1000 * (2 * 3 * 84 * 84 + 16)
    assert report["ratio"] <= 1.05
    assert report["total_bytes"] == buf.nbytes
    assert report["overhead_bytes_per_step"] == 7 * 4 + 2 + 8


def test_state_dict_round_trip() -> None:
    buf = ReplayBuffer(SPEC, 2, capacity=8)
    buf.add_steps(*steps(0, 11, first=True))
    other = ReplayBuffer(SPEC, 2, capacity=8)
    other.load_state_dict(buf.state_dict())
    a = buf.sample(64, np.random.default_rng(9))
    b = other.sample(64, np.random.default_rng(9))
    assert torch.equal(a.obs["cam"], b.obs["cam"]) and torch.equal(a.next_obs["proprio"], b.next_obs["proprio"])
    other.add_steps(*steps(11, 1))  # continues the stream exactly as the original would
    buf.add_steps(*steps(11, 1))
    assert np.array_equal(other.valid_rows(), buf.valid_rows())


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="demo_per_batch"):
        ReplayConfig(batch_size=8, demo_per_batch=9)
    with pytest.raises(ValueError, match="capacity"):
        ReplayConfig(capacity=1)
