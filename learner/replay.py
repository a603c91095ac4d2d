"""Replay buffers that store every frame once (MEDAL++ design §4, "Replay").

Steps arrive in RLDS form (`observation_t`, `action_t`, `is_first`, `is_last`). A row holds
one step; the transition `(obs_t, a_t, obs_{t+1})` takes its next observation from the
successor's row, so no frame is stored twice. The successor link is kept as the
successor's global write number (`next_uid`, int64): a row's write number `u` lives at
row `u % capacity` and is still stored iff `u >= total_written - capacity`. This makes ring
eviction, interleaved streams (several runtimes feeding one buffer) and segment ends all
one vectorised check, for 8 bytes a row.

A transition is sampled only when its step is not `is_last` and its successor is still
stored. Demo buffers are ordinary `ReplayBuffer`s kept apart; `sample_mixed` draws an exact
number of rows from each and marks them in `Batch.is_demo`.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from learner.batch import Batch
from learner.errors import ReplayError
from protocol.spaces import ObsSpec

logger = logging.getLogger(__name__)


_NO_SUCCESSOR = -1
# Rejection rounds before falling back to an exact scan of the valid rows.
_REJECTION_ROUNDS = 8


@dataclass(frozen=True, kw_only=True)
class ReplayConfig:
    """Replay sizes and the demo oversampling (paper Table 1 / A.2)."""

    capacity: int = 1_000_000
    """Agent buffer capacity in steps (rows), per agent; the oldest rows are overwritten."""
    demo_capacity: int = 100_000
    """Demo buffer capacity in steps, per direction; must hold every demo step."""
    batch_size: int = 256
    """Transitions per critic batch (agent + demo rows)."""
    demo_per_batch: int = 16
    """Demo transitions in each critic batch (paper: 16 sim, 32 robot)."""
    save_in_checkpoint: bool = False
    """Write the replay arrays into checkpoints (large; needed for a bit-exact resume)."""

    def __post_init__(self) -> None:
        if self.capacity < 2:
            raise ValueError(f"capacity must be >= 2, got {self.capacity}")
        if self.demo_capacity < 2:
            raise ValueError(f"demo_capacity must be >= 2, got {self.demo_capacity}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.demo_per_batch <= self.batch_size:
            raise ValueError(
                f"demo_per_batch must be in [0, batch_size={self.batch_size}], got {self.demo_per_batch}"
            )


class ReplayBuffer:
    """Ring buffer of steps; each frame stored once, next observation by successor link.

    Not thread-safe: one owner (the trainer) adds and samples.
    """

    def __init__(self, obs_spec: ObsSpec, action_dim: int, capacity: int, *, discount: float = 0.99) -> None:
        if capacity < 2:
            raise ReplayError(f"capacity must be >= 2, got {capacity}")
        if action_dim < 1:
            raise ReplayError(f"action_dim must be >= 1, got {action_dim}")
        self.obs_spec: dict[str, tuple[tuple[int, ...], str]] = {
            k: (tuple(shape), str(dtype)) for k, (shape, dtype) in obs_spec.items()
        }
        if not self.obs_spec:
            raise ReplayError("obs_spec is empty")
        self.action_dim = action_dim
        self.capacity = capacity
        self.discount = discount
        # np.zeros maps lazily: untouched pages of a large buffer cost no RAM until written.
        self._obs = {k: np.zeros((capacity, *shape), dtype=np.dtype(dt)) for k, (shape, dt) in self.obs_spec.items()}
        self._action = np.zeros((capacity, action_dim), dtype=np.float32)
        self._is_first = np.zeros(capacity, dtype=bool)
        self._is_last = np.zeros(capacity, dtype=bool)
        self._next_uid = np.full(capacity, _NO_SUCCESSOR, dtype=np.int64)
        self._total = 0  # rows ever written; the next row's uid
        self._tails: dict[int, int] = {}  # stream id -> uid of its newest row still awaiting a successor

    # -- sizes -------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of stored steps (rows), at most `capacity`."""
        return min(self._total, self.capacity)

    @property
    def total_written(self) -> int:
        """Steps ever written, including evicted ones."""
        return self._total

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffer's arrays (allocated for the full capacity)."""
        return sum(a.nbytes for a in self._arrays().values())

    def memory_report(self) -> dict[str, float]:
        """Return bytes per part and the ratio of all bytes to one raw copy of each frame.

        `frame_bytes` is the raw size of the observations of `capacity` steps (one copy each);
        `overhead_bytes` the actions, flags and successor links; `ratio` their total over
        `frame_bytes` (design target ≤ 1.05 for pixel observations).
        """
        frame = sum(a.nbytes for a in self._obs.values())
        overhead = self._action.nbytes + self._is_first.nbytes + self._is_last.nbytes + self._next_uid.nbytes
        return {
            "frame_bytes": float(frame),
            "overhead_bytes": float(overhead),
            "total_bytes": float(frame + overhead),
            "overhead_bytes_per_step": float(overhead) / self.capacity,
            "ratio": float(frame + overhead) / float(frame),
        }

    # -- writing -----------------------------------------------------------------------
    def add_steps(
        self,
        observations: Mapping[str, np.ndarray],
        actions: np.ndarray,
        is_first: np.ndarray,
        is_last: np.ndarray,
        *,
        stream: int = 0,
    ) -> None:
        """Append B consecutive steps of one stream (one runtime session) in RLDS form.

        The first step continues the stream's previous call unless `is_first[0]`; step k links
        to step k+1 unless `is_last[k]` or `is_first[k+1]`. Writes overwrite the oldest rows.
        Raises ReplayError on missing keys, wrong shapes or dtypes. Does not block.
        """
        n = self._check_steps(observations, actions, is_first, is_last)
        if n == 0:
            return
        if n > self.capacity:  # only the newest `capacity` steps can survive anyway
            self._tails.pop(stream, None)
            skip = n - self.capacity
            observations = {k: v[skip:] for k, v in observations.items()}
            actions, is_first, is_last = actions[skip:], is_first[skip:].copy(), is_last[skip:]
            is_first[0] = True
            n = self.capacity
        uids = self._total + np.arange(n, dtype=np.int64)
        rows = uids % self.capacity
        for k, arr in self._obs.items():
            arr[rows] = observations[k]
        self._action[rows] = actions
        self._is_first[rows] = is_first
        self._is_last[rows] = is_last
        # Successor links inside the call.
        nxt = np.full(n, _NO_SUCCESSOR, dtype=np.int64)
        linked = ~is_last[:-1] & ~is_first[1:]
        nxt[:-1][linked] = uids[1:][linked]
        self._next_uid[rows] = nxt
        # Link the stream's previous tail to this call's first step.
        self._total += n
        tail = self._tails.pop(stream, None)
        if tail is not None and not is_first[0] and self._stored(tail):
            self._next_uid[tail % self.capacity] = uids[0]
        if not is_last[-1]:
            self._tails[stream] = int(uids[-1])

    def _check_steps(
        self, observations: Mapping[str, np.ndarray], actions: np.ndarray, is_first: np.ndarray, is_last: np.ndarray
    ) -> int:
        n = len(actions)
        if actions.shape != (n, self.action_dim):
            raise ReplayError(f"actions must be ({n}, {self.action_dim}), got {actions.shape}")
        if is_first.shape != (n,) or is_last.shape != (n,):
            raise ReplayError(f"is_first/is_last must be ({n},), got {is_first.shape}/{is_last.shape}")
        for k, (shape, dt) in self.obs_spec.items():
            if k not in observations:
                raise ReplayError(f"observation key {k!r} missing")
            v = observations[k]
            if v.shape != (n, *shape) or v.dtype != np.dtype(dt):
                raise ReplayError(f"observation {k!r} must be {(n, *shape)} {dt}, got {v.shape} {v.dtype}")
        return n

    def _stored(self, uid: int | np.ndarray) -> bool | np.ndarray:
        return (uid >= 0) & (uid >= self._total - self.capacity) & (uid < self._total)

    # -- reading -----------------------------------------------------------------------
    def valid_rows(self) -> np.ndarray:
        """Return the rows whose transition can be sampled (O(capacity); for tests and reports)."""
        rows = np.arange(len(self))
        return rows[self._valid(rows)]

    def num_transitions(self) -> int:
        """Number of sampleable transitions (O(capacity))."""
        return int(self._valid(np.arange(len(self))).sum())

    def has_transition(self) -> bool:
        """Return whether any transition is sampleable (probes the newest rows, then scans)."""
        size = len(self)
        if size == 0:
            return False
        probe = (self._total - 1 - np.arange(min(size, 64))) % self.capacity
        return bool(self._valid(probe).any()) or self.num_transitions() > 0

    def _valid(self, rows: np.ndarray) -> np.ndarray:
        nxt = self._next_uid[rows]
        return ~self._is_last[rows] & self._stored(nxt)

    def sample_rows(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Return `n` rows drawn uniformly (with replacement) among sampleable transitions.

        Vectorised rejection sampling, then an exact scan if rejection keeps failing.
        Raises ReplayError when no transition is sampleable. Does not block.
        """
        size = len(self)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if size == 0:
            raise ReplayError("replay buffer is empty")
        out = np.empty(n, dtype=np.int64)
        filled = 0
        for _ in range(_REJECTION_ROUNDS):
            cand = rng.integers(0, size, size=2 * (n - filled))
            good = cand[self._valid(cand)][: n - filled]
            out[filled : filled + len(good)] = good
            filled += len(good)
            if filled == n:
                return out
        valid = self.valid_rows()
        if len(valid) == 0:
            raise ReplayError(f"no sampleable transition among {size} stored steps")
        out[filled:] = valid[rng.integers(0, len(valid), size=n - filled)]
        return out

    def gather(self, rows: np.ndarray, *, is_demo: bool = False) -> Batch:
        """Return the transitions at `rows` as a CPU `Batch` (images stay uint8). Does not block."""
        nxt = self._next_uid[rows] % self.capacity
        obs = {k: torch.from_numpy(a[rows]) for k, a in self._obs.items()}
        next_obs = {k: torch.from_numpy(a[nxt]) for k, a in self._obs.items()}
        n = len(rows)
        return Batch(
            obs=obs,
            action=torch.from_numpy(self._action[rows]),
            next_obs=next_obs,
            discount=torch.full((n,), self.discount, dtype=torch.float32),
            is_demo=torch.full((n,), is_demo, dtype=torch.bool),
        )

    def sample(self, n: int, rng: np.random.Generator) -> Batch:
        """Return `n` uniformly drawn transitions as a `Batch` (`is_demo` all False).

        Raises ReplayError when the buffer holds no sampleable transition.
        """
        return self.gather(self.sample_rows(n, rng))

    def sample_observations(self, n: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Return `n` stored observations drawn uniformly (discriminator negatives).

        Raises ReplayError when the buffer is empty.
        """
        size = len(self)
        if size == 0:
            raise ReplayError("replay buffer is empty")
        rows = rng.integers(0, size, size=n)
        return {k: torch.from_numpy(a[rows]) for k, a in self._obs.items()}

    def observations_at(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Return copies of the observations at `rows` (numpy)."""
        return {k: a[rows] for k, a in self._obs.items()}

    # -- persistence -------------------------------------------------------------------
    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"obs/{k}": a for k, a in self._obs.items()}
        arrays.update(action=self._action, is_first=self._is_first, is_last=self._is_last, next_uid=self._next_uid)
        return arrays

    def state_dict(self) -> dict[str, np.ndarray]:
        """Return the stored rows and counters as numpy arrays (copies of the used rows only)."""
        size = len(self)
        state = {k: np.ascontiguousarray(a[:size]) for k, a in self._arrays().items()}
        tails = np.array(sorted(self._tails.items()), dtype=np.int64).reshape(-1, 2)
        state["meta/total"] = np.array([self._total], dtype=np.int64)
        state["meta/tails"] = tails
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore rows and counters saved by `state_dict` into this (same-spec) buffer.

        Raises ReplayError when keys, shapes or the capacity do not match.
        """
        try:
            total = int(state["meta/total"][0])
            size = min(total, self.capacity)
            for k, arr in self._arrays().items():
                src = state[k]
                if src.shape != (size, *arr.shape[1:]) or src.dtype != arr.dtype:
                    raise ReplayError(f"replay array {k!r}: expected {(size, *arr.shape[1:])} {arr.dtype}, got {src.shape} {src.dtype}")
                arr[:size] = src
            self._total = total
            self._tails = {int(s): int(u) for s, u in state["meta/tails"]}
        except KeyError as e:
            raise ReplayError(f"replay state lacks {e}") from e


def sample_mixed(
    agent_buffer: ReplayBuffer,
    demo_buffer: ReplayBuffer | None,
    batch_size: int,
    demo_per_batch: int,
    rng: np.random.Generator,
) -> Batch:
    """Return a batch of exactly `demo_per_batch` demo rows and the rest from the agent.

    Demo rows come first and carry `is_demo=True`; the achieved demo fraction is
    `batch.is_demo.float().mean()`. With no demo buffer (or one with no transition) the
    whole batch comes from the agent. Raises ReplayError when the agent buffer has none.
    """
    n_demo = demo_per_batch if demo_buffer is not None and len(demo_buffer) > 0 else 0
    agent = agent_buffer.sample(batch_size - n_demo, rng)
    if n_demo == 0:
        return agent
    demo = demo_buffer.sample(n_demo, rng)
    return Batch(
        obs={k: torch.cat([demo.obs[k], agent.obs[k]]) for k in agent.obs},
        action=torch.cat([demo.action, agent.action]),
        next_obs={k: torch.cat([demo.next_obs[k], agent.next_obs[k]]) for k in agent.next_obs},
        discount=torch.cat([demo.discount, agent.discount]),
        is_demo=torch.cat([torch.ones(n_demo, dtype=torch.bool), agent.is_demo]),
    )
