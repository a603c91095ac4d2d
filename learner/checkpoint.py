"""Atomic, versioned checkpoints: `ckpt-<updates>/` with safetensors + JSON, no pickle.

Layout of one checkpoint directory:

* `tensors.safetensors` — every tensor of the training state (networks, optimiser moments,
  torch RNG state), named by its path in the nested state (`agents.0.optim.state.3.exp_avg`);
* `replay.safetensors` — optional replay arrays (numpy);
* `meta.json` — format version, config, counters, and the *structure* of the state: nested
  dicts/lists with scalars inline and `{"__tensor__": name}` references into the tensors file,
  so optimiser states (int keys, param groups) and RNG states (tuples, big ints, uint32
  arrays) round-trip exactly; plus the SHA-256 of each data file.

Writing goes to a hidden temporary directory (each file fsynced), then one `rename` makes it
visible and the parent directory is fsynced: a crash leaves either the old set or the new
one. Loading validates the version and checksums; a corrupt newest checkpoint is reported
(naming the file) and the previous good one is used. Only the newest `keep` are kept.
"""

import base64
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
import safetensors.torch
from safetensors.torch import load as load_safetensors  # safetensors' parser: no pickle
import torch
from safetensors import SafetensorError

from learner.errors import CheckpointError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
TENSORS_FILE = "tensors.safetensors"
REPLAY_FILE = "replay.safetensors"
META_FILE = "meta.json"
_DIR_RE = re.compile(r"^ckpt-(\d+)$")
# Small numpy arrays (RNG states) live in the JSON; larger ones become tensors.
_INLINE_ARRAY_MAX = 4096


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """A loaded checkpoint."""

    path: Path
    """The checkpoint directory."""
    updates: int
    """The update counter it was saved at."""
    state: dict[str, Any]
    """The nested training state, tensors restored."""
    config: dict[str, Any]
    """The config saved with it (JSON)."""
    counters: dict[str, int]
    """Step counters saved with it."""
    replay: dict[str, np.ndarray] | None
    """Replay arrays, when saved."""


# -- nested state <-> (tensors, JSON structure) --------------------------------------------
def flatten_state(obj: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state into named tensors and a JSON-ready structure referencing them.

    Supports dicts (any str/int keys), lists, tuples, tensors, numpy arrays, bytes and JSON
    scalars. Returns `(tensors, structure)`. Raises CheckpointError on other types.
    """
    tensors: dict[str, torch.Tensor] = {}
    structure = _flatten(obj, prefix.rstrip("."), tensors)
    return tensors, structure


def _flatten(obj: Any, path: str, out: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        out[path] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):
        if obj.size <= _INLINE_ARRAY_MAX:
            return {"__ndarray__": obj.tolist(), "dtype": obj.dtype.str, "shape": list(obj.shape)}
        out[path] = torch.from_numpy(np.ascontiguousarray(obj)).clone()
        return {"__tensor__": path, "numpy": True}
    if isinstance(obj, (bytes, bytearray)):
        return {"__bytes__": base64.b64encode(bytes(obj)).decode("ascii")}
    if isinstance(obj, Mapping):
        items = [[k, _flatten(v, f"{path}.{k}" if path else str(k), out)] for k, v in obj.items()]
        for k, _ in items:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise CheckpointError(f"state key {k!r} at {path!r} is not str or int")
        return {"__map__": items}
    if isinstance(obj, (list, tuple)):
        seq = [_flatten(v, f"{path}.{i}", out) for i, v in enumerate(obj)]
        return {"__tuple__": seq} if isinstance(obj, tuple) else seq
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(f"cannot checkpoint {type(obj).__name__} at {path!r}")


def unflatten_state(structure: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of `flatten_state`. Raises CheckpointError on a missing tensor reference."""
    if isinstance(structure, list):
        return [unflatten_state(v, tensors) for v in structure]
    if not isinstance(structure, dict):
        return structure
    if "__tensor__" in structure:
        name = structure["__tensor__"]
        if name not in tensors:
            raise CheckpointError(f"tensor {name!r} referenced by {META_FILE} is missing")
        t = tensors[name]
        return t.numpy() if structure.get("numpy") else t
    if "__ndarray__" in structure:
        arr = np.array(structure["__ndarray__"], dtype=np.dtype(structure["dtype"]))
        return arr.reshape(structure["shape"])
    if "__bytes__" in structure:
        return base64.b64decode(structure["__bytes__"])
    if "__tuple__" in structure:
        return tuple(unflatten_state(v, tensors) for v in structure["__tuple__"])
    if "__map__" in structure:
        return {k: unflatten_state(v, tensors) for k, v in structure["__map__"]}
    raise CheckpointError(f"unknown entry in {META_FILE}: keys {sorted(structure)}")


# -- files ---------------------------------------------------------------------------------
def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_dirs(run_dir: Path | str) -> list[tuple[int, Path]]:
    """Returns `(updates, path)` of every checkpoint directory in `run_dir`, oldest first."""
    run = Path(run_dir)
    if not run.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run.iterdir() if p.is_dir() and (m := _DIR_RE.match(p.name))]
    return sorted(found)


def save_checkpoint(
    run_dir: Path | str,
    *,
    updates: int,
    state: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    counters: Mapping[str, int] | None = None,
    replay: Mapping[str, np.ndarray] | None = None,
    keep: int = 3,
) -> Path:
    """Atomically write `run_dir/ckpt-<updates>/` and delete all but the newest `keep`.

    Blocks on disk I/O (fsync). Returns the checkpoint directory. Raises CheckpointError
    when the state holds an unsupported type or the disk write fails.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    run = Path(run_dir)
    final = run / f"ckpt-{updates}"
    tmp = run / f".tmp-ckpt-{updates}-{os.getpid()}"
    tensors, structure = flatten_state(dict(state))
    try:
        run.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        blob = safetensors.torch.save(tensors)
        _write_synced(tmp / TENSORS_FILE, blob)
        digests = {TENSORS_FILE: hashlib.sha256(blob).hexdigest()}
        if replay is not None:
            rblob = safetensors.numpy.save({k: np.ascontiguousarray(v) for k, v in replay.items()})
            _write_synced(tmp / REPLAY_FILE, rblob)
            digests[REPLAY_FILE] = hashlib.sha256(rblob).hexdigest()
        meta = {
            "format_version": FORMAT_VERSION,
            "updates": updates,
            "config": dict(config or {}),
            "counters": {k: int(v) for k, v in (counters or {}).items()},
            "state": structure,
            "sha256": digests,
        }
        _write_synced(tmp / META_FILE, json.dumps(meta).encode())
        _fsync_dir(tmp)
        if final.exists():  # same counter saved again: replace the old one
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(run)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {final}: {e}") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for _, old in checkpoint_dirs(run)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("checkpoint saved: %s (%d tensors)", final, len(tensors))
    return final


def load_checkpoint(path: Path | str, *, with_replay: bool = True) -> Checkpoint:
    """Load and validate one checkpoint directory.

    Blocks on disk reads. Returns a `Checkpoint`. Raises CheckpointError naming the file
    that is missing, truncated, fails its checksum, or holds bad JSON.
    """
    ckpt = Path(path)
    meta_path = ckpt / META_FILE
    try:
        meta = json.loads(meta_path.read_bytes())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{meta_path}: unreadable or invalid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise CheckpointError(f"{meta_path}: format_version {version!r}, expected {FORMAT_VERSION}")
    tensors_blob = _read_checked(ckpt / TENSORS_FILE, meta)
    try:
        tensors = load_safetensors(tensors_blob)
    except SafetensorError as e:
        raise CheckpointError(f"{ckpt / TENSORS_FILE}: corrupt safetensors: {e}") from e
    replay = None
    if with_replay and REPLAY_FILE in meta.get("sha256", {}):
        try:
            replay = safetensors.numpy.load(_read_checked(ckpt / REPLAY_FILE, meta))
        except SafetensorError as e:
            raise CheckpointError(f"{ckpt / REPLAY_FILE}: corrupt safetensors: {e}") from e
    try:
        state = unflatten_state(meta["state"], tensors)
        return Checkpoint(
            path=ckpt,
            updates=int(meta["updates"]),
            state=state,
            config=dict(meta["config"]),
            counters={k: int(v) for k, v in meta["counters"].items()},
            replay=replay,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{meta_path}: malformed metadata: {e}") from e


def _read_checked(path: Path, meta: Mapping[str, Any]) -> bytes:
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: unreadable: {e}") from e
    expected = meta.get("sha256", {}).get(path.name)
    if expected is None:
        raise CheckpointError(f"{path}: no checksum recorded in {META_FILE}")
    if hashlib.sha256(blob).hexdigest() != expected:
        raise CheckpointError(f"{path}: checksum mismatch (truncated or corrupt, {len(blob)} bytes)")
    return blob


def load_latest(run_dir: Path | str, *, with_replay: bool = True) -> Checkpoint | None:
    """Load the newest valid checkpoint in `run_dir`, falling back past corrupt ones.

    Each corrupt checkpoint is logged as an error naming the bad file. Returns None when
    `run_dir` holds no checkpoint; raises CheckpointError when every one is corrupt.
    Blocks on disk reads.
    """
    found = checkpoint_dirs(run_dir)
    errors: list[str] = []
    for _, path in reversed(found):
        try:
            return load_checkpoint(path, with_replay=with_replay)
        except CheckpointError as e:
            logger.error("checkpoint %s is unusable, trying an older one: %s", path, e)
            errors.append(str(e))
    if found:
        raise CheckpointError(f"no usable checkpoint in {run_dir}: " + "; ".join(errors))
    return None
