"""Pure encoding/decoding of protocol messages to ZeroMQ multipart frames.

Framing (see ``docs/protocol.md``): frame 0 is one msgpack map (the message). An array is a
map ``{"dtype": str, "shape": [int...], "data": bin}`` holding raw little-endian C-order
bytes, or — for arrays of at least ``OUT_OF_BAND_BYTES`` when encoding multipart —
``{"dtype", "shape", "frame": k}`` whose bytes are the whole of frame ``k`` (k ≥ 1).
``encode(msg, single_frame=True)`` never uses out-of-band frames, so a stock msgpack
library in any language can decode it. Decoding never copies array data: arrays are
read-only ``np.frombuffer`` views of the frames (copy them to write).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

import msgpack
import numpy as np

from protocol.errors import ProtocolError
from protocol.messages import (
    MESSAGE_TYPES, PROTOCOL_VERSION, Ack, Command, Heartbeat, Hello, LoopStats, Message, Status,
    TransitionBatch, Weights, Welcome, is_int,
)
from protocol.spaces import ALLOWED_DTYPES, ArraySpec

logger = logging.getLogger(__name__)

#: Arrays of at least this many bytes travel as their own frame in multipart encoding.
OUT_OF_BAND_BYTES = 16 * 1024

Buffer = Union[bytes, bytearray, memoryview]


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Caps the decoder enforces before and while decoding; sized for a 20 MB weight blob
    in one frame and 256-step batches of two 3×84×84 cameras."""

    max_frame_bytes: int = 32 * 2**20
    """Largest single frame (header or out-of-band array)."""
    max_message_bytes: int = 96 * 2**20
    """Largest sum of all frames of one message."""
    max_frames: int = 1024
    """Most frames in one message (header included)."""
    max_str_len: int = 4096
    """Longest string (bytes of UTF-8)."""
    max_array_elements: int = 16 * 2**20
    """Most elements in one array (product of its shape)."""
    max_total_elements: int = 48 * 2**20
    """Most array elements summed over one message."""
    max_ndim: int = 8
    """Most dimensions of one array."""
    max_depth: int = 16
    """Deepest nesting of maps/lists (the message map is depth 1)."""
    max_entries: int = 4096
    """Most entries in one map or list."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if not isinstance(getattr(self, f.name), int) or getattr(self, f.name) < 1:
                raise ValueError(f"Limits.{f.name} must be a positive int, got {getattr(self, f.name)!r}")


@dataclass(frozen=True, kw_only=True)
class Spaces:
    """A session's declared spaces; transitions are checked against them when given."""

    observation: dict[str, ArraySpec]
    """Observation name → per-step spec."""
    action: ArraySpec
    """Per-step action spec."""

    def __post_init__(self) -> None:
        if not self.observation:
            raise ValueError("Spaces.observation must be non-empty")

    @classmethod
    def from_hello(cls, hello: Hello) -> Spaces:
        """Returns the spaces a hello declared."""
        return cls(observation=dict(hello.observation_space), action=hello.action_space)


# ----------------------------------------------------------------------------- encoding

def _array_to_wire(arr: np.ndarray, oob: list[Buffer] | None, field: str) -> dict[str, Any]:
    if not isinstance(arr, np.ndarray):
        raise ProtocolError(f"{field}: expected ndarray, got {type(arr).__name__}")
    if arr.dtype.name not in ALLOWED_DTYPES:
        raise ProtocolError(f"{field}: dtype {arr.dtype} not in the allowed dtypes")
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    arr = arr if arr.flags.c_contiguous else arr.copy(order="C")  # ascontiguousarray would make 0-d 1-d
    raw: Buffer = memoryview(arr.reshape(-1).view(np.uint8))
    wire: dict[str, Any] = {"dtype": arr.dtype.name, "shape": list(arr.shape)}
    if oob is not None and arr.nbytes >= OUT_OF_BAND_BYTES:
        oob.append(raw)
        wire["frame"] = len(oob)
    else:
        wire["data"] = raw
    return wire


def _field_to_wire(kind: str, value: Any, oob: list[Buffer] | None, field: str) -> Any:
    if kind == "array":
        return _array_to_wire(value, oob, field)
    if kind == "arrays":
        return {k: _array_to_wire(v, oob, f"{field}.{k}") for k, v in value.items()}
    if kind == "spec":
        return {"dtype": value.dtype, "shape": list(value.shape)}
    if kind == "space":
        return {k: {"dtype": s.dtype, "shape": list(s.shape)} for k, s in value.items()}
    if kind == "opt_stats":
        return None if value is None else dataclasses.asdict(value)
    return value


def encode(msg: Message, *, single_frame: bool = False) -> list[Buffer]:
    """Returns the frames of ``msg``: the msgpack header, then out-of-band array frames.

    With ``single_frame=True`` the result is exactly one frame, a plain msgpack map.
    Frames may be memoryviews of the message's arrays (no copy): do not mutate those arrays
    until the frames are sent. Raises ProtocolError for an unencodable value. Never blocks.
    """
    fields = _FIELDS.get(type(msg))
    if fields is None:
        raise ProtocolError(f"type: cannot encode {type(msg).__name__}")
    oob: list[Buffer] | None = None if single_frame else []
    header: dict[str, Any] = {"type": msg.TYPE, "version": PROTOCOL_VERSION}
    for name, (kind, _) in fields.items():
        header[_wire_name(type(msg), name)] = _field_to_wire(kind, getattr(msg, name), oob, f"{msg.TYPE}.{name}")
    try:
        packed = msgpack.packb(header, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise ProtocolError(f"{msg.TYPE}: not encodable: {e}") from e
    return [packed, *(oob or [])]


# ----------------------------------------------------------------------------- decoding

class _Ctx:
    """Per-decode state: limits, frames, and the running element count."""

    def __init__(self, limits: Limits, frames: Sequence[Buffer]) -> None:
        self.limits = limits
        self.frames = frames
        self.used: set[int] = set()
        self.elements = 0


def _int(v: Any, field: str, ctx: _Ctx) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProtocolError(f"{field}: expected int, got {type(v).__name__}")
    return v


def _float(v: Any, field: str, ctx: _Ctx) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ProtocolError(f"{field}: expected float, got {type(v).__name__}")
    return float(v)


def _bool(v: Any, field: str, ctx: _Ctx) -> bool:
    if not isinstance(v, bool):
        raise ProtocolError(f"{field}: expected bool, got {type(v).__name__}")
    return v


def _str(v: Any, field: str, ctx: _Ctx) -> str:
    if not isinstance(v, str):
        raise ProtocolError(f"{field}: expected str, got {type(v).__name__}")
    return v


def _opt_str(v: Any, field: str, ctx: _Ctx) -> str | None:
    return None if v is None else _str(v, field, ctx)


def _map(v: Any, field: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ProtocolError(f"{field}: expected map, got {type(v).__name__}")
    return v


def _exact_keys(v: dict[str, Any], keys: set[str], field: str) -> None:
    if v.keys() != keys:
        missing, extra = sorted(keys - v.keys()), sorted(set(v) - keys)
        raise ProtocolError(f"{field}: missing fields {missing}, unexpected fields {extra}")


def _shape(v: Any, field: str, ctx: _Ctx) -> tuple[int, ...]:
    if not isinstance(v, list):
        raise ProtocolError(f"{field}.shape: expected list, got {type(v).__name__}")
    if len(v) > ctx.limits.max_ndim:
        raise ProtocolError(f"{field}.shape: {len(v)} dims exceeds max_ndim={ctx.limits.max_ndim}")
    dims = tuple(_int(d, f"{field}.shape", ctx) for d in v)
    if any(d < 0 or d > ctx.limits.max_array_elements for d in dims):
        raise ProtocolError(f"{field}.shape: dim outside [0, max_array_elements={ctx.limits.max_array_elements}]")
    return dims


def _dtype(v: Any, field: str, ctx: _Ctx) -> str:
    if not isinstance(v, str) or v not in ALLOWED_DTYPES:
        raise ProtocolError(f"{field}.dtype: {v!r} not in the allowed dtypes")
    return v


def _spec(v: Any, field: str, ctx: _Ctx) -> ArraySpec:
    v = _map(v, field)
    _exact_keys(v, {"dtype", "shape"}, field)
    return ArraySpec(dtype=_dtype(v["dtype"], field, ctx), shape=_shape(v["shape"], field, ctx))


def _space(v: Any, field: str, ctx: _Ctx) -> dict[str, ArraySpec]:
    return {_str(k, field, ctx): _spec(s, f"{field}.{k}", ctx) for k, s in _map(v, field).items()}


def _array(v: Any, field: str, ctx: _Ctx) -> np.ndarray:
    v = _map(v, field)
    if v.keys() not in ({"dtype", "shape", "data"}, {"dtype", "shape", "frame"}):
        raise ProtocolError(f"{field}: array needs keys dtype, shape and one of data/frame, got {sorted(v)}")
    dtype = np.dtype(_dtype(v["dtype"], field, ctx)).newbyteorder("<")
    shape = _shape(v["shape"], field, ctx)
    count = 1
    for d in shape:
        count *= d
    if count > ctx.limits.max_array_elements:
        raise ProtocolError(f"{field}: {count} elements exceeds max_array_elements={ctx.limits.max_array_elements}")
    ctx.elements += count
    if ctx.elements > ctx.limits.max_total_elements:
        raise ProtocolError(f"{field}: message exceeds max_total_elements={ctx.limits.max_total_elements}")
    if "data" in v:
        data = v["data"]
        if not isinstance(data, bytes):
            raise ProtocolError(f"{field}.data: expected bin, got {type(data).__name__}")
    else:
        k = _int(v["frame"], f"{field}.frame", ctx)
        if not 1 <= k < len(ctx.frames) or k in ctx.used:
            raise ProtocolError(f"{field}.frame: {k} is not an unused frame index in [1, {len(ctx.frames)})")
        ctx.used.add(k)
        data = ctx.frames[k]
    if len(data) != count * dtype.itemsize:
        raise ProtocolError(f"{field}: shape {shape} {dtype.name} needs {count * dtype.itemsize} bytes, got {len(data)}")
    arr = np.frombuffer(data, dtype=dtype, count=count).reshape(shape)
    arr.flags.writeable = False  # a view of the received frame: copy it to modify
    if dtype == np.bool_ and count and int(arr.view(np.uint8).max()) > 1:
        raise ProtocolError(f"{field}: bool bytes must be 0 or 1")
    return arr


def _arrays(v: Any, field: str, ctx: _Ctx) -> dict[str, np.ndarray]:
    return {_str(k, field, ctx): _array(a, f"{field}.{k}", ctx) for k, a in _map(v, field).items()}


def _json(v: Any, field: str, ctx: _Ctx) -> Any:
    if isinstance(v, dict):
        return {_str(k, field, ctx): _json(x, f"{field}.{k}", ctx) for k, x in v.items()}
    if isinstance(v, list):
        return [_json(x, field, ctx) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise ProtocolError(f"{field}: {type(v).__name__} is not JSON-compatible")


def _json_map(v: Any, field: str, ctx: _Ctx) -> dict[str, Any]:
    return _json(_map(v, field), field, ctx)


def _scalars(v: Any, field: str, ctx: _Ctx) -> dict[str, Any]:
    out = {}
    for k, x in _map(v, field).items():
        if not (x is None or isinstance(x, (bool, int, float, str))):
            raise ProtocolError(f"{field}.{k}: expected a scalar, got {type(x).__name__}")
        out[_str(k, field, ctx)] = x
    return out


_STATS_FIELDS: dict[str, Callable[[Any, str, _Ctx], Any]] = {
    "steps": _int, "loop_hz": _float, "jitter_p50_ms": _float, "jitter_p99_ms": _float,
    "jitter_max_ms": _float, "overruns": _int, "inference_p50_ms": _float, "queue_depth": _int,
    "spilled_bytes": _int, "agent": _str, "paused": _bool,
}


def _opt_stats(v: Any, field: str, ctx: _Ctx) -> LoopStats | None:
    if v is None:
        return None
    v = _map(v, field)
    _exact_keys(v, set(_STATS_FIELDS), field)
    return LoopStats(**{k: conv(v[k], f"{field}.{k}", ctx) for k, conv in _STATS_FIELDS.items()})


Converter = Callable[[Any, str, _Ctx], Any]
_KINDS: dict[str, Converter] = {
    "str": _str, "int": _int, "float": _float, "bool": _bool, "opt_str": _opt_str, "array": _array,
    "arrays": _arrays, "spec": _spec, "space": _space, "json": _json_map, "scalars": _scalars,
    "opt_stats": _opt_stats,
}


def _f(**kinds: str) -> dict[str, tuple[str, Converter]]:
    return {name: (kind, _KINDS[kind]) for name, kind in kinds.items()}


#: message class → field name → (wire kind, decoder); the order is the wire order.
_FIELDS: dict[type, dict[str, tuple[str, Converter]]] = {
    Hello: _f(session_id="str", robot="str", task="str", observation_space="space",
              action_space="spec", config_hash="str", next_seq="int", oldest_seq="int"),
    Welcome: _f(session_id="str", accepted="bool", reason="str", resume_seq="int",
                net_config="json", weights_endpoint="str"),
    TransitionBatch: _f(session_id="str", first_seq="int", observations="arrays", actions="array",
                        agents="array", timestamps="array", is_first="array", is_last="array"),
    Ack: _f(session_id="str", seq="int", trained_through="int"),
    Weights: _f(agent="str", version="int", tensors="arrays", sha256="str"),
    Heartbeat: _f(session_id="str", role="str", sent_at="float", stats="opt_stats"),
    Command: _f(kind="str", agent="opt_str", request_id="int"),
    Status: _f(request_id="int", role="str", state="str", detail="scalars", ok="bool", message="str"),
}


#: (message class, field) → wire key where the field name would clash with the envelope's ``version``.
_WIRE_NAMES: dict[tuple[type, str], str] = {(Weights, "version"): "weights_version"}


def _wire_name(cls: type, name: str) -> str:
    return _WIRE_NAMES.get((cls, name), name)


def _check_depth(obj: Any, limit: int, depth: int = 1) -> None:
    """Raises ProtocolError when maps/lists nest deeper than ``limit`` (stops early)."""
    if isinstance(obj, dict):
        if depth > limit:
            raise ProtocolError(f"message: nesting exceeds max_depth={limit}")
        for v in obj.values():
            _check_depth(v, limit, depth + 1)
    elif isinstance(obj, list):
        if depth > limit:
            raise ProtocolError(f"message: nesting exceeds max_depth={limit}")
        for v in obj:
            _check_depth(v, limit, depth + 1)


def _check_frames(frames: Sequence[Buffer], limits: Limits) -> None:
    if not frames:
        raise ProtocolError("frames: empty message")
    if len(frames) > limits.max_frames:
        raise ProtocolError(f"frames: {len(frames)} frames exceeds max_frames={limits.max_frames}")
    total = 0
    for i, fr in enumerate(frames):
        n = len(fr)
        if n > limits.max_frame_bytes:
            raise ProtocolError(f"frames[{i}]: {n} bytes exceeds max_frame_bytes={limits.max_frame_bytes}")
        total += n
    if total > limits.max_message_bytes:
        raise ProtocolError(f"frames: {total} bytes exceeds max_message_bytes={limits.max_message_bytes}")


def _unpack_header(frame: Buffer, limits: Limits) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(
            frame, raw=False, use_list=True, strict_map_key=True,
            max_str_len=limits.max_str_len, max_bin_len=limits.max_frame_bytes,
            max_array_len=limits.max_entries, max_map_len=limits.max_entries, max_ext_len=0)
    except (msgpack.UnpackException, ValueError, TypeError, OverflowError, RecursionError) as e:
        raise ProtocolError(f"frames[0]: not a valid msgpack message within limits ({type(e).__name__}: {e})") from e
    _check_depth(obj, limits.max_depth)
    return _map(obj, "message")


def _check_spaces(batch: TransitionBatch, spaces: Spaces) -> None:
    if batch.observations.keys() != spaces.observation.keys():
        raise ProtocolError(f"transitions.observations: keys {sorted(batch.observations)} "
                            f"differ from the declared space {sorted(spaces.observation)}")
    for name, arr in batch.observations.items():
        spec = spaces.observation[name]
        if arr.dtype.name != spec.dtype or arr.shape[1:] != spec.shape:
            raise ProtocolError(f"transitions.observations.{name}: {arr.dtype.name} {arr.shape[1:]} "
                                f"differs from the declared {spec.dtype} {spec.shape}")
    if batch.actions.dtype.name != spaces.action.dtype or batch.actions.shape[1:] != spaces.action.shape:
        raise ProtocolError(f"transitions.actions: {batch.actions.dtype.name} {batch.actions.shape[1:]} "
                            f"differs from the declared {spaces.action.dtype} {spaces.action.shape}")


def decode(frames: Sequence[Buffer], *, limits: Limits = Limits(), spaces: Spaces | None = None) -> Message:
    """Returns the message carried by ``frames`` (as from ``recv_multipart``).

    Arrays in the result are read-only views of ``frames``. When ``spaces`` is given,
    a TransitionBatch must match it. Raises ProtocolError — and nothing else — for any
    malformed, oversized or inconsistent input. Never blocks; allocates at most the
    decoded header (bounded by ``limits``).
    """
    try:
        _check_frames(frames, limits)
        header = _unpack_header(frames[0], limits)
        mtype = header.get("type")
        cls = MESSAGE_TYPES.get(mtype) if isinstance(mtype, str) else None
        if cls is None:
            raise ProtocolError(f"type: unknown message type {mtype!r}")
        version = header.get("version")
        if not is_int(version) or version != PROTOCOL_VERSION:  # 1.0 and True are not the int 1
            raise ProtocolError(f"version: expected the int {PROTOCOL_VERSION}, got {version!r} "
                                f"({type(version).__name__})")
        fields = _FIELDS[cls]
        wire = {name: _wire_name(cls, name) for name in fields}
        _exact_keys(header, {"type", "version", *wire.values()}, mtype)
        ctx = _Ctx(limits, frames)
        values = {name: conv(header[wire[name]], f"{mtype}.{wire[name]}", ctx)
                  for name, (_, conv) in fields.items()}
        if len(ctx.used) != len(frames) - 1:
            raise ProtocolError(f"frames: {len(frames) - 1 - len(ctx.used)} out-of-band frames not referenced")
        msg = cls(**values)
        if spaces is not None and isinstance(msg, TransitionBatch):
            _check_spaces(msg, spaces)
        return msg
    except ProtocolError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError) as e:
        # Defence in depth: whatever slipped past the checks above is still the peer's fault.
        raise ProtocolError(f"message: malformed ({type(e).__name__}: {e})") from e
