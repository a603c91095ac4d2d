"""Checkpoint I/O: exact round trip, atomic versioned directories, corrupt-newest fallback.

The trainer-level "restored trainer makes the identical next update" test is in test_trainer.py.
"""

import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from learner.checkpoint import (
    META_FILE,
    TENSORS_FILE,
    checkpoint_dirs,
    flatten_state,
    load_checkpoint,
    load_latest,
    save_checkpoint,
    unflatten_state,
)
from learner.errors import CheckpointError

torch.set_num_threads(1)


def sample_state() -> dict:
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {
        "net": net.state_dict(),
        "optim": opt.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": np.random.default_rng(3).bit_generator.state,
            "numpy_global": np.random.get_state(),
            "python": random.getstate(),
        },
        "big": np.arange(10_000, dtype=np.int64),
        "blob": b"\x00\xffabc",
        "counters": [1, 2.5, None, True, "x"],
    }


def assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b) and a.dtype == b.dtype
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b) and a.dtype == b.dtype
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b and type(a) is type(b)


def test_flatten_round_trip_is_exact() -> None:
    state = sample_state()
    tensors, structure = flatten_state(state)
    restored = unflatten_state(json.loads(json.dumps(structure)), tensors)
    assert_same(state, restored)
    # Restored optimiser and RNG states are usable as such.
    opt = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    opt.load_state_dict(restored["optim"])
    random.setstate(restored["rng"]["python"])
    np.random.set_state(restored["rng"]["numpy_global"])
    gen = np.random.default_rng()
    gen.bit_generator.state = restored["rng"]["numpy"]
    assert gen.integers(0, 1 << 30) == np.random.default_rng(3).integers(0, 1 << 30)


def test_unsupported_type_raises() -> None:
    with pytest.raises(CheckpointError, match="object"):
        flatten_state({"x": object()})


def test_save_load_versioned_and_pruned(tmp_path: Path) -> None:
    state = sample_state()
    replay = {"agent0/obs/cam": np.zeros((5, 3, 2, 2), np.uint8), "agent0/is_last": np.ones(5, bool)}
    for updates in (10, 20, 30, 40):
        save_checkpoint(tmp_path, updates=updates, state=state, config={"a": 1}, counters={"updates": updates},
                        replay=replay, keep=3)
    assert [u for u, _ in checkpoint_dirs(tmp_path)] == [20, 30, 40]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    ckpt = load_latest(tmp_path)
    assert ckpt is not None and ckpt.updates == 40 and ckpt.path.name == "ckpt-40"
    assert ckpt.config == {"a": 1} and ckpt.counters == {"updates": 40}
    assert_same(state, ckpt.state)
    assert_same(replay, ckpt.replay)
    assert load_latest(tmp_path, with_replay=False).replay is None


def test_empty_run_dir_has_no_checkpoint(tmp_path: Path) -> None:
    assert load_latest(tmp_path / "missing") is None


@pytest.mark.parametrize("damage", ["truncate", "bad_json", "missing_tensors"])
def test_corrupt_newest_falls_back_with_a_clear_error(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    state = sample_state()
    save_checkpoint(tmp_path, updates=1, state=state)
    newest = save_checkpoint(tmp_path, updates=2, state=state)
    if damage == "truncate":
        data = (newest / TENSORS_FILE).read_bytes()
        (newest / TENSORS_FILE).write_bytes(data[: len(data) // 2])
        bad_file = TENSORS_FILE
    elif damage == "bad_json":
        (newest / META_FILE).write_text("{not json")
        bad_file = META_FILE
    else:
        (newest / TENSORS_FILE).unlink()
        bad_file = TENSORS_FILE
    with pytest.raises(CheckpointError, match=bad_file):
        load_checkpoint(newest)
    with caplog.at_level(logging.ERROR, logger="learner.checkpoint"):
        ckpt = load_latest(tmp_path)
    assert ckpt.updates == 1
    assert any(bad_file in r.getMessage() and "ckpt-2" in r.getMessage() for r in caplog.records)


def test_all_corrupt_raises(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, updates=5, state={"x": torch.ones(2)})
    (path / META_FILE).write_text("[]")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        load_latest(tmp_path)


def test_truncated_file_with_matching_checksum_still_fails(tmp_path: Path) -> None:
    """Even when the checksum is rewritten to match, safetensors' own framing catches truncation."""
    path = save_checkpoint(tmp_path, updates=3, state={"x": torch.ones(100)})
    data = (path / TENSORS_FILE).read_bytes()[:-7]
    (path / TENSORS_FILE).write_bytes(data)
    meta = json.loads((path / META_FILE).read_text())
    import hashlib
    meta["sha256"][TENSORS_FILE] = hashlib.sha256(data).hexdigest()
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="corrupt safetensors"):
        load_checkpoint(path)
