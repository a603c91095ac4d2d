"""The one on-disk format for demonstrations (see ``docs/demos.md``).

A demo set is a :class:`Demos`: episodes concatenated row by row in the RLDS layout. Every
episode contributes one row per observation *including its final one*, so an episode of
``T`` transitions has ``T + 1`` rows:

* ``observations[name][i]`` — observation ``i``;
* ``actions[i]`` — the action taken from observation ``i`` (padding on an episode's last row);
* ``rewards[i]`` — the reward that followed ``actions[i]`` (``0`` padding on the last row);
* ``terminals[i]`` — observation ``i`` is terminal (only ever on an episode's last row);
* ``is_first[i]`` / ``is_last[i]`` — observation ``i`` starts / ends its episode.

Files are ``.npz`` archives written atomically and read with ``allow_pickle=False``: no
object arrays, the metadata travels as a JSON string (:class:`DemoMeta`, defined with
:class:`DemoFormatError` in :mod:`protocol.demo_meta`; import both from here, as every reader
and writer of demos does). This module imports only numpy, the standard library and
``protocol`` (which imports no other project package).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protocol.atomic import atomic_file
from protocol.demo_meta import DemoFormatError, DemoMeta

logger = logging.getLogger(__name__)

_PER_STEP_KEYS = ("actions", "rewards", "terminals", "is_first", "is_last")


@dataclass(frozen=True, kw_only=True)
class Demos:
    """A validated set of demonstration episodes (layout in the module docstring).

    Construction validates every array and raises :class:`DemoFormatError` naming the key.
    """

    observations: dict[str, np.ndarray]
    """Observation arrays by name, each with ``N`` rows (images ``uint8 (N, 3, H, W)``,
    vectors ``float32 (N, D)``)."""
    actions: np.ndarray
    """``float32 (N, A)``; the row of an episode's last observation is padding."""
    rewards: np.ndarray
    """``float32 (N,)``; the reward following ``actions[i]``."""
    terminals: np.ndarray
    """``bool (N,)``; observation ``i`` is terminal (last rows only)."""
    is_first: np.ndarray
    """``bool (N,)``; observation ``i`` starts an episode."""
    is_last: np.ndarray
    """``bool (N,)``; observation ``i`` ends an episode."""
    episode_success: np.ndarray
    """``bool (E,)``; whether episode ``e`` reached the task's success condition."""
    meta: DemoMeta
    """What the demos are about."""

    def __post_init__(self) -> None:
        n = _validate_observations(self.observations, self.meta)
        _check_array("actions", self.actions, np.float32, 2, n)
        if not np.all(np.isfinite(self.actions)):
            raise DemoFormatError("actions: contains NaN or inf")
        _check_array("rewards", self.rewards, np.float32, 1, n)
        for key in ("terminals", "is_first", "is_last"):
            _check_array(key, getattr(self, key), np.bool_, 1, n)
        _validate_episodes(self.is_first, self.is_last, self.terminals)
        _check_array("episode_success", self.episode_success, np.bool_, 1, int(self.is_last.sum()))

    # ------------------------------------------------------------------ views
    @property
    def num_steps(self) -> int:
        """Number of rows ``N`` (observations, final ones included)."""
        return int(self.actions.shape[0])

    @property
    def num_episodes(self) -> int:
        """Number of episodes ``E``."""
        return int(self.episode_success.shape[0])

    @property
    def num_transitions(self) -> int:
        """Number of ``(obs, action, next_obs)`` transitions: ``N - E``."""
        return self.num_steps - self.num_episodes

    @property
    def action_dim(self) -> int:
        """Length of the action vector."""
        return int(self.actions.shape[1])

    def episode_bounds(self) -> list[tuple[int, int]]:
        """Returns ``[(start, stop), ...]`` row ranges of the episodes (``stop`` exclusive)."""
        starts = np.flatnonzero(self.is_first)
        stops = np.flatnonzero(self.is_last) + 1
        return [(int(a), int(b)) for a, b in zip(starts, stops)]

    def episode(self, index: int) -> "Demos":
        """Returns episode ``index`` as a one-episode :class:`Demos` (arrays are views).

        Raises:
            IndexError: when ``index`` is out of range.
        """
        index = range(self.num_episodes)[index]
        start, stop = self.episode_bounds()[index]
        rows = slice(start, stop)
        return Demos(
            observations={k: v[rows] for k, v in self.observations.items()},
            actions=self.actions[rows], rewards=self.rewards[rows], terminals=self.terminals[rows],
            is_first=self.is_first[rows], is_last=self.is_last[rows],
            episode_success=self.episode_success[index:index + 1],
            meta=self.meta,
        )

    def episodes(self) -> Iterator["Demos"]:
        """Yields each episode as a one-episode :class:`Demos`, in order."""
        for index in range(self.num_episodes):
            yield self.episode(index)

    def transitions(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``(obs_index, next_obs_index)``, two ``int64 (N - E,)`` arrays.

        Transition ``k`` is ``(observations[obs_index[k]], actions[obs_index[k]],
        observations[next_obs_index[k]])`` with reward ``rewards[obs_index[k]]`` and done flag
        ``terminals[next_obs_index[k]]``; ``next_obs_index == obs_index + 1``.
        """
        obs_index = np.flatnonzero(~self.is_last).astype(np.int64)
        return obs_index, obs_index + 1


# ---------------------------------------------------------------------- recording
class DemoRecorder:
    """Builds a :class:`Demos` one step at a time (used by generators, importers, teleop).

    Call :meth:`start` with an episode's first observation, :meth:`step` after each
    action, :meth:`end` to close the episode, then :meth:`build`.
    """

    def __init__(self) -> None:
        self._obs: list[dict[str, np.ndarray]] = []
        self._actions: list[np.ndarray] = []
        self._rewards: list[float] = []
        self._terminals: list[bool] = []
        self._first: list[bool] = []
        self._success: list[bool] = []
        self._open = False
        self._open_start = 0
        self._action_dim: int | None = None

    @property
    def num_episodes(self) -> int:
        """Episodes closed so far."""
        return len(self._success)

    def start(self, observation: dict[str, np.ndarray]) -> None:
        """Opens an episode at ``observation``.

        Raises:
            DemoFormatError: when an episode is already open.
        """
        if self._open:
            raise DemoFormatError("recorder: start() while an episode is open; call end() first")
        self._open_start = len(self._obs)
        self._append_obs(observation, first=True)
        self._open = True

    def step(self, action: np.ndarray, reward: float, next_observation: dict[str, np.ndarray]) -> None:
        """Records ``action`` (taken from the previous observation), its reward and the
        observation it led to.

        Raises:
            DemoFormatError: when no episode is open.
        """
        if not self._open:
            raise DemoFormatError("recorder: step() without start()")
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if self._action_dim is None:
            self._action_dim = action.shape[0]
        self._actions[-1] = action
        self._rewards[-1] = float(reward)
        self._append_obs(next_observation, first=False)

    def end(self, *, success: bool, terminal: bool = False) -> None:
        """Closes the open episode; ``terminal`` marks its final observation terminal.

        Raises:
            DemoFormatError: when no episode is open or it has no transition.
        """
        if not self._open:
            raise DemoFormatError("recorder: end() without start()")
        if self._first[-1]:
            raise DemoFormatError("recorder: an episode needs at least one step")
        self._terminals[-1] = bool(terminal)
        self._success.append(bool(success))
        self._open = False

    def build(self, meta: DemoMeta) -> Demos:
        """Returns the recorded episodes as :class:`Demos` (an open episode is dropped).

        Raises:
            DemoFormatError: when nothing was recorded or the arrays are inconsistent.
        """
        rows = self._open_start if self._open else len(self._obs)
        if rows == 0 or self._action_dim is None:
            raise DemoFormatError("recorder: no complete episode recorded")
        keys = self._obs[0].keys()
        observations = {k: np.stack([o[k] for o in self._obs[:rows]]) for k in keys}
        actions = np.stack([a if a.size else np.zeros(self._action_dim, np.float32)
                            for a in self._actions[:rows]]).astype(np.float32)
        first = np.asarray(self._first[:rows], dtype=bool)
        last = np.append(first[1:], True)
        return Demos(observations=observations, actions=actions,
                     rewards=np.asarray(self._rewards[:rows], dtype=np.float32),
                     terminals=np.asarray(self._terminals[:rows], dtype=bool),
                     is_first=first, is_last=last,
                     episode_success=np.asarray(self._success, dtype=bool), meta=meta)

    def _append_obs(self, observation: dict[str, np.ndarray], *, first: bool) -> None:
        self._obs.append({k: np.array(v, copy=True) for k, v in observation.items()})
        self._actions.append(np.zeros(0, np.float32))
        self._rewards.append(0.0)
        self._terminals.append(False)
        self._first.append(first)


# ---------------------------------------------------------------------- files
def save_demos(path: str | os.PathLike[str], demos: Demos) -> Path:
    """Writes ``demos`` to ``path`` (``.npz``) atomically: a temporary file in the same
    directory, flushed to disk, then renamed over ``path``. Blocks on disk I/O.

    Returns the path written. Raises ``OSError`` when the directory is not writable.
    """
    path = Path(path)
    arrays: dict[str, np.ndarray] = {f"obs/{k}": v for k, v in demos.observations.items()}
    arrays.update({k: getattr(demos, k) for k in _PER_STEP_KEYS})
    arrays["success"] = demos.episode_success
    arrays["episode_ends"] = np.flatnonzero(demos.is_last).astype(np.int64)
    arrays["meta"] = np.array(demos.meta.to_json())
    with atomic_file(path) as f:
        np.savez_compressed(f, **arrays)
    logger.info("wrote %d episodes (%d steps) to %s", demos.num_episodes, demos.num_steps, path)
    return path


def load_demos(path: str | os.PathLike[str]) -> Demos:
    """Reads and validates a demo file written by :func:`save_demos`. Blocks on disk I/O.

    Returns the :class:`Demos`.

    Raises:
        DemoFormatError: for a missing or unreadable file, a wrong format version, missing
            keys, inconsistent lengths, wrong dtypes (images must be ``uint8``) or a broken
            episode structure; the message names the file and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise DemoFormatError(f"{path}: no such file")
    try:
        with path.open("rb") as file:
            head = file.read(4)
    except OSError as e:
        raise DemoFormatError(f"{path}: not a readable demo archive ({e})") from e
    if head not in (b"PK\x03\x04", b"PK\x05\x06"):  # not a zip: np.load would call it "pickled data"
        raise DemoFormatError(f"{path}: not an npz archive (demo files are the .npz archives resetfree-demos writes)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise DemoFormatError(f"{path}: not a readable demo archive ({e})") from e
    try:
        return _demos_from_arrays(arrays)
    except DemoFormatError as e:
        raise DemoFormatError(f"{path}: {e}") from e


def concatenate(parts: Sequence[Demos]) -> Demos:
    """Returns one :class:`Demos` holding the episodes of ``parts`` in order.

    Raises:
        DemoFormatError: when ``parts`` is empty or the parts disagree on task, direction,
            observation mode, cameras, image size or observation keys.
    """
    if not parts:
        raise DemoFormatError("concatenate: nothing to concatenate")
    head = parts[0]
    for other in parts[1:]:
        for attr in ("task", "direction", "obs_mode", "cameras", "image_size"):
            if getattr(other.meta, attr) != getattr(head.meta, attr):
                raise DemoFormatError(f"concatenate: meta.{attr} differs: "
                                      f"{getattr(head.meta, attr)!r} vs {getattr(other.meta, attr)!r}")
        if other.observations.keys() != head.observations.keys():
            raise DemoFormatError(f"concatenate: observation keys differ: "
                                  f"{sorted(head.observations)} vs {sorted(other.observations)}")
    sources = list(dict.fromkeys(p.meta.source for p in parts))
    meta = dataclasses.replace(head.meta, source="+".join(sources), created="")
    return Demos(
        observations={k: np.concatenate([p.observations[k] for p in parts]) for k in head.observations},
        **{k: np.concatenate([getattr(p, k) for p in parts]) for k in (*_PER_STEP_KEYS, "episode_success")},
        meta=meta,
    )


# ---------------------------------------------------------------------- validation
def _demos_from_arrays(arrays: dict[str, np.ndarray]) -> Demos:
    for key in (*_PER_STEP_KEYS, "success", "meta"):
        if key not in arrays:
            raise DemoFormatError(f"missing key {key!r}")
    meta_array = arrays["meta"]
    if meta_array.shape != () or meta_array.dtype.kind != "U":
        raise DemoFormatError("meta: must be a 0-d unicode string array holding JSON")
    meta = DemoMeta.from_json(str(meta_array))
    observations = {k[len("obs/"):]: v for k, v in arrays.items() if k.startswith("obs/")}
    demos = Demos(observations=observations, actions=arrays["actions"], rewards=arrays["rewards"],
                  terminals=arrays["terminals"], is_first=arrays["is_first"], is_last=arrays["is_last"],
                  episode_success=arrays["success"], meta=meta)
    if "episode_ends" in arrays:
        expected = np.flatnonzero(demos.is_last)
        if not np.array_equal(np.asarray(arrays["episode_ends"]), expected):
            raise DemoFormatError("episode_ends: disagrees with is_last")
    return demos


def _check_array(key: str, array: object, dtype: type, ndim: int, rows: int) -> None:
    if not isinstance(array, np.ndarray):
        raise DemoFormatError(f"{key}: must be a numpy array, got {type(array).__name__}")
    if array.dtype != np.dtype(dtype):
        raise DemoFormatError(f"{key}: dtype must be {np.dtype(dtype).name}, got {array.dtype.name}")
    if array.ndim != ndim:
        raise DemoFormatError(f"{key}: must have {ndim} dimension(s), got shape {array.shape}")
    if array.shape[0] != rows:
        raise DemoFormatError(f"{key}: expected {rows} rows, got {array.shape[0]}")


def _validate_observations(observations: dict[str, np.ndarray], meta: DemoMeta) -> int:
    if not isinstance(observations, dict) or not observations:
        raise DemoFormatError("observations: need at least one observation array")
    rows = {k: v.shape[0] if isinstance(v, np.ndarray) and v.ndim else -1 for k, v in observations.items()}
    n = next(iter(rows.values()))
    if n <= 0:
        raise DemoFormatError(f"obs/{next(iter(rows))}: needs at least one row")
    for key, array in observations.items():
        if key in meta.cameras:
            _check_array(f"obs/{key}", array, np.uint8, 4, n)
            size = meta.image_size
            if array.shape[1:] != (3, size, size):
                raise DemoFormatError(f"obs/{key}: images must be (3, {size}, {size}), got {array.shape[1:]}")
        elif isinstance(array, np.ndarray) and array.ndim == 4:
            _check_array(f"obs/{key}", array, np.uint8, 4, n)
            if array.shape[1] != 3:
                raise DemoFormatError(f"obs/{key}: images must be channel-first RGB, got {array.shape[1:]}")
        else:
            _check_array(f"obs/{key}", array, np.float32, 2, n)
    required = {"state"} if meta.obs_mode == "state" else {*meta.cameras, "proprio"}
    missing = required - observations.keys()
    if missing:
        raise DemoFormatError(f"observations: missing {sorted('obs/' + m for m in missing)} "
                              f"for obs_mode {meta.obs_mode!r}")
    return n


def _validate_episodes(is_first: np.ndarray, is_last: np.ndarray, terminals: np.ndarray) -> None:
    if not is_first[0]:
        raise DemoFormatError("is_first: row 0 must start an episode")
    if not is_last[-1]:
        raise DemoFormatError("is_last: the last row must end an episode")
    if not np.array_equal(is_first[1:], is_last[:-1]):
        bad = int(np.flatnonzero(is_first[1:] != is_last[:-1])[0])
        raise DemoFormatError(f"is_first/is_last: episode boundary broken at row {bad}")
    if np.any(is_first & is_last):
        raise DemoFormatError(f"is_first/is_last: one-row episode at row {int(np.flatnonzero(is_first & is_last)[0])}"
                              " (an episode needs at least one transition)")
    if np.any(terminals & ~is_last):
        raise DemoFormatError(f"terminals: set on row {int(np.flatnonzero(terminals & ~is_last)[0])}, "
                              "which is not an episode's last row")
