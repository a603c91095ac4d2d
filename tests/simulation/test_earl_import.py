"""EARL demo import: restricted unpickling, episode splitting, conversion."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from protocol.demos import DemoMeta
from simulation.earl_import import (EarlImportError, UnsafePickleError, earl_to_demos, episode_slices,
                                    episode_goals, load_earl_arrays, relabel_goals, restricted_loads)

EARL_DIR = Path("/work/shared/earl-demos")


def earl_arrays(lengths: list[int], dim: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """EARL-layout arrays of consecutive episodes (terminal at each episode's end)."""
    rng = np.random.default_rng(seed)
    obs, nxt, terminals = [], [], []
    for length in lengths:
        states = rng.normal(size=(length + 1, dim)).astype(np.float32)
        obs.append(states[:-1])
        nxt.append(states[1:])
        terminals.append(np.arange(length) == length - 1)
    n = sum(lengths)
    return {"observations": np.concatenate(obs), "next_observations": np.concatenate(nxt),
            "actions": rng.uniform(-1, 1, (n, 2)).astype(np.float32),
            "rewards": np.concatenate(terminals).astype(np.float32), "terminals": np.concatenate(terminals)}


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_pickles_load(protocol: int) -> None:
    arrays = earl_arrays([3, 2])
    arrays["scalar"] = np.float32(2.5)
    loaded = restricted_loads(pickle.dumps(arrays, protocol=protocol))
    assert np.array_equal(loaded["observations"], arrays["observations"]) and loaded["scalar"] == 2.5


def test_malicious_pickle_is_refused_naming_the_global() -> None:
    with pytest.raises(UnsafePickleError, match=r"global (posix|os)\.system"):
        restricted_loads(pickle.dumps({"observations": _Evil()}))
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        restricted_loads(b"cbuiltins\neval\n(S'1'\ntR.")
    with pytest.raises(EarlImportError, match="not a valid demo pickle"):
        restricted_loads(b"garbage")


def test_load_pickle_list_and_npz(tmp_path: Path) -> None:
    a, b = earl_arrays([3], seed=1), earl_arrays([2], seed=2)
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([a, b]))
    merged = load_earl_arrays(tmp_path / "list.pkl")
    assert merged["observations"].shape == (5, 4)
    np.savez(tmp_path / "d.npz", **a)
    assert np.array_equal(load_earl_arrays(tmp_path / "d.npz")["actions"], a["actions"])
    (tmp_path / "short.pkl").write_bytes(pickle.dumps({k: v for k, v in a.items() if k != "rewards"}))
    with pytest.raises(EarlImportError, match="missing keys \\['rewards'\\]"):
        load_earl_arrays(tmp_path / "short.pkl")
    with pytest.raises(EarlImportError, match="no such file"):
        load_earl_arrays(tmp_path / "absent.pkl")


def test_split_and_convert() -> None:
    arrays = earl_arrays([3, 4, 2])
    assert episode_slices(arrays) == [(0, 3), (3, 7), (7, 9)]
    demos = earl_to_demos(arrays, DemoMeta(task="toy", direction="forward", obs_mode="state"))
    assert demos.num_episodes == 3 and demos.num_transitions == 9 and demos.num_steps == 12
    first = demos.episode(0)
    assert np.array_equal(first.observations["state"][:3], arrays["observations"][:3])
    assert np.array_equal(first.observations["state"][3], arrays["next_observations"][2])
    assert np.array_equal(first.actions[:3], arrays["actions"][:3]) and np.all(first.actions[3] == 0)
    assert first.rewards.tolist() == [0, 0, 1, 0] and first.terminals.tolist() == [False] * 3 + [True]
    # without terminals, a discontinuity still splits; an unfinished trailing episode is a failure
    arrays["terminals"][:] = False
    demos = earl_to_demos(arrays, DemoMeta(task="toy", direction="forward", obs_mode="state"))
    assert demos.num_episodes == 3 and demos.episode_success.tolist() == [False] * 3


@pytest.mark.skipif(not EARL_DIR.is_dir(), reason="EARL demos not available")
def test_shared_earl_demos_convert() -> None:
    arrays = load_earl_arrays(EARL_DIR / "door_forward.npz")
    demos = earl_to_demos(arrays, DemoMeta(task="door", direction="forward", obs_mode="state"))
    assert demos.num_episodes == 5 and demos.episode_success.all()
    assert demos.num_transitions == arrays["observations"].shape[0]


def test_relabel_goals_copies_each_episode_per_goal_with_only_the_goal_replaced() -> None:
    arrays = earl_arrays([3, 5], dim=6)
    goals = [(7.0, 8.0), (-1.0, -2.0)]
    out = relabel_goals(arrays, goals)
    assert [stop - start for start, stop in episode_slices(out)] == [3, 5, 3, 5]  # still continuous episodes
    for copy, goal in enumerate(goals):
        rows = slice(8 * copy, 8 * (copy + 1))
        for key in ("observations", "next_observations"):
            assert np.array_equal(out[key][rows, :4], arrays[key][:, :4])
            assert (out[key][rows, 4:] == np.asarray(goal, dtype=np.float32)).all()
        for key in ("actions", "rewards", "terminals"):
            assert np.array_equal(out[key][rows], arrays[key])
    assert arrays["observations"][0, 4] != 7.0  # the input is left alone
    assert episode_goals(arrays, 2) == [arrays["observations"][0, 4:].tolist(), arrays["observations"][3, 4:].tolist()]
    assert episode_goals(out, 2) == [list(goals[0])] * 2 + [list(goals[1])] * 2
    demos = earl_to_demos(out, DemoMeta(task="toy", direction="backward", obs_mode="state"))
    assert demos.num_episodes == 4 and demos.episode_success.all()
    for bad in ([], [(1.0,) * 6], [(1.0, 2.0), (1.0,)]):
        with pytest.raises(EarlImportError, match="relabel_goals"):
            relabel_goals(arrays, bad)
