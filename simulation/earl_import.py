"""Reading EARL's demonstration files safely and converting them to ``protocol.demos``.

EARL ships demos as pickles (``demo_data.pkl``): a dict (or a list of per-episode dicts) of
numpy arrays ``observations, actions, rewards, terminals, next_observations``, one row per
transition. A pickle can run arbitrary code, so :class:`RestrictedUnpickler` admits only
the globals numpy needs to rebuild arrays and refuses any other with
:class:`UnsafePickleError` naming it. The same arrays in an ``.npz`` (as in
``shared/earl-demos``) are read with ``allow_pickle=False``.

Conversion: episodes end at ``terminals`` (and where ``next_observations[i]`` is not
``observations[i + 1]``); each episode becomes ``T + 1`` rows (its observations plus the
last ``next_observation``), ``rewards[i]`` stays with its action, the final row is
terminal when EARL's last transition was, and an episode counts as successful when its
last transition was terminal (EARL's demos stop on success).
"""

from __future__ import annotations

import io
import logging
import pickle
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from protocol.demos import DemoMeta, DemoRecorder, Demos
from simulation.tasks.base import SimulationError

BUNDLED_DEMOS = Path(__file__).resolve().parent / "assets" / "demos"
"""EARL's own demonstrations as shipped with the package (``<task>_<direction>.npz``, their
``NOTICE.md``), and the named presets' demo sets in subfolders (``door_one_demo/``)."""

logger = logging.getLogger(__name__)

EARL_KEYS = ("observations", "actions", "rewards", "terminals", "next_observations")
"""Arrays every EARL demo file holds, one row per transition."""

#: (module, name) pairs a pickle of numpy arrays needs, for numpy 1.x (``numpy.core``) and
#: 2.x (``numpy._core``): ``_reconstruct``/``ndarray``/``dtype`` rebuild arrays (protocols
#: 2-4), ``scalar`` rebuilds numpy scalars, ``_frombuffer`` rebuilds arrays under protocol 5,
#: and ``_codecs.encode`` turns the latin-1 strings of protocol 2 back into bytes.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
})


class EarlImportError(SimulationError, ValueError):
    """An EARL demo file cannot be read or converted; the message says why."""


class UnsafePickleError(EarlImportError, pickle.UnpicklingError):
    """A pickle asked for a global outside :data:`ALLOWED_GLOBALS`."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and plain containers, and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        """Returns the allowed global ``module.name``.

        Raises:
            UnsafePickleError: for any global not in :data:`ALLOWED_GLOBALS`.
        """
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(f"refusing to load global {module}.{name}: only numpy arrays are allowed "
                                    "in demo pickles")
        return super().find_class(module, name)


def restricted_loads(data: bytes) -> Any:
    """Unpickles ``data`` with :class:`RestrictedUnpickler`.

    Raises:
        UnsafePickleError: when the pickle needs a forbidden global.
        EarlImportError: when the data is not a valid pickle.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError) as e:
        raise EarlImportError(f"not a valid demo pickle ({type(e).__name__}: {e})") from e


def load_earl_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Reads an EARL demo file (``.pkl``/``.pickle`` restricted-unpickled, or ``.npz``).
    Blocks on disk I/O.

    Returns the five :data:`EARL_KEYS` arrays (per-episode lists are concatenated).

    Raises:
        EarlImportError: for a missing file, a forbidden global (:class:`UnsafePickleError`),
            missing keys or inconsistent lengths.
    """
    path = Path(path)
    if not path.is_file():
        raise EarlImportError(f"{path}: no such file")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                raw: Any = {k: archive[k] for k in archive.files}
        except (ValueError, OSError, zipfile.BadZipFile) as e:
            raise EarlImportError(f"{path}: not a readable .npz ({e})") from e
    else:
        raw = restricted_loads(path.read_bytes())
    try:
        return _normalise(raw)
    except EarlImportError as e:
        raise EarlImportError(f"{path}: {e}") from e


def _normalise(raw: Any) -> dict[str, np.ndarray]:
    if isinstance(raw, (list, tuple)):
        if not raw or not all(isinstance(part, dict) for part in raw):
            raise EarlImportError("a list of demos must hold dicts of arrays")
        parts = [_normalise(part) for part in raw]
        return {k: np.concatenate([p[k] for p in parts]) for k in EARL_KEYS}
    if not isinstance(raw, dict):
        raise EarlImportError(f"expected a dict of arrays, got {type(raw).__name__}")
    missing = [k for k in EARL_KEYS if k not in raw]
    if missing:
        raise EarlImportError(f"missing keys {missing}")
    arrays = {k: np.asarray(raw[k]) for k in EARL_KEYS}
    arrays["rewards"] = arrays["rewards"].reshape(-1)
    arrays["terminals"] = arrays["terminals"].reshape(-1).astype(bool)
    n = arrays["observations"].shape[0]
    for key, array in arrays.items():
        if array.shape[0] != n:
            raise EarlImportError(f"{key}: {array.shape[0]} rows, observations has {n}")
        if array.dtype.kind not in "biuf":
            raise EarlImportError(f"{key}: must be numeric, got dtype {array.dtype}")
    if n == 0:
        raise EarlImportError("no transitions")
    return arrays


def episode_slices(arrays: dict[str, np.ndarray], atol: float = 1e-5) -> list[tuple[int, int]]:
    """Returns ``[(start, stop), ...]`` transition ranges of the episodes in ``arrays``: an
    episode ends at a terminal or where the next row does not continue from this one."""
    obs, next_obs = arrays["observations"], arrays["next_observations"]
    broken = ~np.all(np.isclose(next_obs[:-1], obs[1:], atol=atol), axis=tuple(range(1, obs.ndim)))
    ends = np.flatnonzero(arrays["terminals"][:-1] | broken) + 1
    bounds = [0, *ends.tolist(), obs.shape[0]]
    return list(zip(bounds[:-1], bounds[1:]))


def relabel_goals(arrays: dict[str, np.ndarray], goals: Sequence[Sequence[float]]) -> dict[str, np.ndarray]:
    """Returns ``arrays`` with every episode once per goal in ``goals``, the last
    ``len(goal)`` entries of each observation and next observation replaced by that goal.

    EARL's state vectors end with the goal the demo was recorded for; its backward demos end
    with the *backward* goal (the initial configuration). The twin's state, like EARL's
    reset-free environments, always ends with the forward goal, in the backward agent's turns
    too, so a backward demo as recorded is a state the backward agent never sees (a BC policy
    trained on them resets 0 of 20 times from the goal on door and peg; relabelled, 19 and
    20). MEDAL relabels the same way (architsharma97/medal, ``medal.py``,
    ``get_relabeled_demos``, one copy per goal state). Actions, rewards and terminals are
    kept.

    Raises:
        EarlImportError: when there is no goal, the goals differ in length, or a goal is not
            shorter than the observation.
    """
    dim = arrays["observations"].shape[-1]
    lengths = {len(goal) for goal in goals}
    if len(lengths) != 1 or not 0 < min(lengths) < dim:
        raise EarlImportError(f"relabel_goals: need one or more goals of one length below {dim}, "
                              f"got lengths {sorted(len(goal) for goal in goals)}")
    goal_array = np.asarray(goals, dtype=np.float64)
    width = goal_array.shape[1]
    slices = episode_slices(arrays)
    out: dict[str, list[np.ndarray]] = {key: [] for key in arrays}
    for goal in goal_array:
        for start, stop in slices:
            for key, values in arrays.items():
                part = np.array(values[start:stop], copy=True)
                if key in ("observations", "next_observations"):
                    part[:, dim - width:] = goal.astype(part.dtype)
                out[key].append(part)
    return {key: np.concatenate(parts) for key, parts in out.items()}


def episode_goals(arrays: dict[str, np.ndarray], width: int) -> list[list[float]]:
    """Returns the goal each episode of ``arrays`` carries: the last ``width`` entries of its
    first observation (EARL keeps one goal per episode). :func:`relabel_goals` replaces them;
    ``import-earl`` keeps these in the demo file's notes, so nothing EARL recorded is lost."""
    return [arrays["observations"][start, -width:].astype(float).tolist() for start, _ in episode_slices(arrays)]


ObservationFn = Callable[[np.ndarray], dict[str, np.ndarray]]
"""Maps an EARL state vector to the observation dict stored in the demos."""


def earl_to_demos(arrays: dict[str, np.ndarray], meta: DemoMeta,
                  observe: ObservationFn | None = None) -> Demos:
    """Converts EARL arrays (from :func:`load_earl_arrays`) into :class:`Demos`.

    ``observe`` turns each state vector into the stored observation (e.g. re-rendered
    pixels); by default the observation is ``{"state": vector}``. Blocks while rendering.

    Raises:
        DemoFormatError: when the result breaks the demo format.
    """
    observe = observe or (lambda v: {"state": np.asarray(v, dtype=np.float32)})
    recorder = DemoRecorder()
    slices = episode_slices(arrays)
    for number, (start, stop) in enumerate(slices, 1):
        recorder.start(observe(arrays["observations"][start]))
        for i in range(start, stop):
            recorder.step(arrays["actions"][i], float(arrays["rewards"][i]), observe(arrays["next_observations"][i]))
        terminal = bool(arrays["terminals"][stop - 1])
        recorder.end(success=terminal, terminal=terminal)
        logger.info("converted episode %d/%d (%d transitions)", number, len(slices), stop - start)
    return recorder.build(meta)
