"""The fields of each message on the wire, and the readers that turn one decoded msgpack
value of each kind back into the field's Python value.

:data:`FIELDS` is the wire schema in code: message class → field name → (kind, reader), in
wire order (docs/protocol.md has the same table for people). A kind names how a field
travels: ``str``, ``int``, ``float``, ``bool``, ``opt_str``, ``array`` (a map of dtype, shape
and in-band ``data`` or an out-of-band ``frame`` index), ``arrays`` (name → array), ``spec``,
``space``, ``json``, ``scalars`` and ``opt_stats`` (a heartbeat's loop stats). Every reader
checks the value's type and the decoder's :class:`~protocol.codec.Limits` (array dimensions
and elements) and raises :class:`~protocol.errors.ProtocolError` naming the field; none
copies array data. :mod:`protocol.codec` frames messages with this table: it writes each
kind in :func:`~protocol.codec.encode` and calls these readers in :func:`~protocol.codec.decode`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Sequence, Union

import numpy as np

from protocol.errors import ProtocolError
from protocol.messages import Ack, Command, Heartbeat, Hello, LoopStats, Status, TransitionBatch, Weights, Welcome
from protocol.spaces import ALLOWED_DTYPES, ArraySpec

if TYPE_CHECKING:  # only annotated: protocol.codec imports this module
    from protocol.codec import Limits

logger = logging.getLogger(__name__)

Buffer = Union[bytes, bytearray, memoryview]


class DecodeContext:
    """Per-decode state: limits, frames, and the running element count."""

    def __init__(self, limits: Limits, frames: Sequence[Buffer]) -> None:
        self.limits = limits
        self.frames = frames
        self.used: set[int] = set()
        self.elements = 0


def _int(v: Any, field: str, ctx: DecodeContext) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProtocolError(f"{field}: expected int, got {type(v).__name__}")
    return v


def _float(v: Any, field: str, ctx: DecodeContext) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ProtocolError(f"{field}: expected float, got {type(v).__name__}")
    return float(v)


def _bool(v: Any, field: str, ctx: DecodeContext) -> bool:
    if not isinstance(v, bool):
        raise ProtocolError(f"{field}: expected bool, got {type(v).__name__}")
    return v


def _str(v: Any, field: str, ctx: DecodeContext) -> str:
    if not isinstance(v, str):
        raise ProtocolError(f"{field}: expected str, got {type(v).__name__}")
    return v


def _opt_str(v: Any, field: str, ctx: DecodeContext) -> str | None:
    return None if v is None else _str(v, field, ctx)


def as_map(v: Any, field: str) -> dict[str, Any]:
    """Returns ``v`` when it is a map; raises ProtocolError naming ``field`` otherwise."""
    if not isinstance(v, dict):
        raise ProtocolError(f"{field}: expected map, got {type(v).__name__}")
    return v


def exact_keys(v: dict[str, Any], keys: set[str], field: str) -> None:
    """Raises ProtocolError naming the missing and unexpected keys unless ``v`` has exactly ``keys``."""
    if v.keys() != keys:
        missing, extra = sorted(keys - v.keys()), sorted(set(v) - keys)
        raise ProtocolError(f"{field}: missing fields {missing}, unexpected fields {extra}")


def _shape(v: Any, field: str, ctx: DecodeContext) -> tuple[int, ...]:
    if not isinstance(v, list):
        raise ProtocolError(f"{field}.shape: expected list, got {type(v).__name__}")
    if len(v) > ctx.limits.max_ndim:
        raise ProtocolError(f"{field}.shape: {len(v)} dims exceeds max_ndim={ctx.limits.max_ndim}")
    dims = tuple(_int(d, f"{field}.shape", ctx) for d in v)
    if any(d < 0 or d > ctx.limits.max_array_elements for d in dims):
        raise ProtocolError(f"{field}.shape: dim outside [0, max_array_elements={ctx.limits.max_array_elements}]")
    return dims


def _dtype(v: Any, field: str, ctx: DecodeContext) -> str:
    if not isinstance(v, str) or v not in ALLOWED_DTYPES:
        raise ProtocolError(f"{field}.dtype: {v!r} not in the allowed dtypes")
    return v


def _spec(v: Any, field: str, ctx: DecodeContext) -> ArraySpec:
    v = as_map(v, field)
    exact_keys(v, {"dtype", "shape"}, field)
    return ArraySpec(dtype=_dtype(v["dtype"], field, ctx), shape=_shape(v["shape"], field, ctx))


def _space(v: Any, field: str, ctx: DecodeContext) -> dict[str, ArraySpec]:
    return {_str(k, field, ctx): _spec(s, f"{field}.{k}", ctx) for k, s in as_map(v, field).items()}


def _array(v: Any, field: str, ctx: DecodeContext) -> np.ndarray:
    v = as_map(v, field)
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


def _arrays(v: Any, field: str, ctx: DecodeContext) -> dict[str, np.ndarray]:
    return {_str(k, field, ctx): _array(a, f"{field}.{k}", ctx) for k, a in as_map(v, field).items()}


def _json(v: Any, field: str, ctx: DecodeContext) -> Any:
    if isinstance(v, dict):
        return {_str(k, field, ctx): _json(x, f"{field}.{k}", ctx) for k, x in v.items()}
    if isinstance(v, list):
        return [_json(x, field, ctx) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise ProtocolError(f"{field}: {type(v).__name__} is not JSON-compatible")


def _json_map(v: Any, field: str, ctx: DecodeContext) -> dict[str, Any]:
    return _json(as_map(v, field), field, ctx)


def _scalars(v: Any, field: str, ctx: DecodeContext) -> dict[str, Any]:
    out = {}
    for k, x in as_map(v, field).items():
        if not (x is None or isinstance(x, (bool, int, float, str))):
            raise ProtocolError(f"{field}.{k}: expected a scalar, got {type(x).__name__}")
        out[_str(k, field, ctx)] = x
    return out


_STATS_FIELDS: dict[str, Callable[[Any, str, DecodeContext], Any]] = {
    "steps": _int, "loop_hz": _float, "jitter_p50_ms": _float, "jitter_p99_ms": _float,
    "jitter_max_ms": _float, "overruns": _int, "inference_p50_ms": _float, "queue_depth": _int,
    "spilled_bytes": _int, "agent": _str, "paused": _bool,
}


def _opt_stats(v: Any, field: str, ctx: DecodeContext) -> LoopStats | None:
    if v is None:
        return None
    v = as_map(v, field)
    exact_keys(v, set(_STATS_FIELDS), field)
    return LoopStats(**{k: conv(v[k], f"{field}.{k}", ctx) for k, conv in _STATS_FIELDS.items()})


Converter = Callable[[Any, str, DecodeContext], Any]
"""A reader: ``(wire value, field name for errors, context) → field value``."""
_KINDS: dict[str, Converter] = {
    "str": _str, "int": _int, "float": _float, "bool": _bool, "opt_str": _opt_str, "array": _array,
    "arrays": _arrays, "spec": _spec, "space": _space, "json": _json_map, "scalars": _scalars,
    "opt_stats": _opt_stats,
}


def _f(**kinds: str) -> dict[str, tuple[str, Converter]]:
    return {name: (kind, _KINDS[kind]) for name, kind in kinds.items()}


#: message class → field name → (wire kind, decoder); the order is the wire order.
FIELDS: dict[type, dict[str, tuple[str, Converter]]] = {
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


def wire_name(cls: type, name: str) -> str:
    """Returns the wire key of field ``name`` of message class ``cls``."""
    return _WIRE_NAMES.get((cls, name), name)
