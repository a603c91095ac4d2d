"""Pure encoding/decoding of protocol messages to ZeroMQ multipart frames.

Framing (see ``docs/protocol.md``): frame 0 is one msgpack map (the message). An array is a
map ``{"dtype": str, "shape": [int...], "data": bin}`` holding raw little-endian C-order
bytes, or — for arrays of at least ``OUT_OF_BAND_BYTES`` when encoding multipart —
``{"dtype", "shape", "frame": k}`` whose bytes are the whole of frame ``k`` (k ≥ 1).
``encode(msg, single_frame=True)`` never uses out-of-band frames, so a stock msgpack
library in any language can decode it. Decoding never copies array data: arrays are
read-only ``np.frombuffer`` views of the frames (copy them to write).

Which fields each message has, in which order and of which kind, and how each kind is read
back, is :mod:`protocol.wire_fields`; this module writes the kinds, frames the message and
enforces the limits on frames, sizes and nesting.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Sequence

import msgpack
import numpy as np

from protocol.errors import ProtocolError
from protocol.messages import MESSAGE_TYPES, PROTOCOL_VERSION, Hello, Message, TransitionBatch, is_int
from protocol.spaces import ALLOWED_DTYPES, ArraySpec
from protocol.wire_fields import FIELDS, Buffer, DecodeContext, as_map, exact_keys, wire_name

logger = logging.getLogger(__name__)

#: Arrays of at least this many bytes travel as their own frame in multipart encoding.
OUT_OF_BAND_BYTES = 16 * 1024


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
    fields = FIELDS.get(type(msg))
    if fields is None:
        raise ProtocolError(f"type: cannot encode {type(msg).__name__}")
    oob: list[Buffer] | None = None if single_frame else []
    header: dict[str, Any] = {"type": msg.TYPE, "version": PROTOCOL_VERSION}
    for name, (kind, _) in fields.items():
        header[wire_name(type(msg), name)] = _field_to_wire(kind, getattr(msg, name), oob, f"{msg.TYPE}.{name}")
    try:
        packed = msgpack.packb(header, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise ProtocolError(f"{msg.TYPE}: not encodable: {e}") from e
    return [packed, *(oob or [])]


# ----------------------------------------------------------------------------- decoding

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
    return as_map(obj, "message")


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
        fields = FIELDS[cls]
        wire = {name: wire_name(cls, name) for name in fields}
        exact_keys(header, {"type", "version", *wire.values()}, mtype)
        ctx = DecodeContext(limits, frames)
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
