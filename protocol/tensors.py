"""Weight tensors on the wire: the order-independent checksum a ``weights`` message carries
(docs/protocol.md, "Weights checksum") and the dtypes a publisher may send them in.

Pure functions over ``name → ndarray`` maps; numpy and the standard library only.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np

logger = logging.getLogger(__name__)


def weights_sha256(tensors: dict[str, np.ndarray]) -> str:
    """Returns the hex SHA-256 of ``tensors``, independent of dict order.

    For each name in sorted (code point) order the hash absorbs: the UTF-8 name, a 0 byte,
    the dtype name, a 0 byte, the shape as decimal dims joined by ``,``, a 0 byte, the data
    length as 8-byte little-endian, then the raw little-endian C-order bytes.
    Does not block beyond hashing (≈ 2 ms per 5 MB).
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        arr = np.asarray(tensors[name])
        arr = arr if arr.flags.c_contiguous else arr.copy(order="C")  # ascontiguousarray would make 0-d 1-d
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        data = memoryview(arr).cast("B") if arr.ndim and arr.size else arr.tobytes()
        h.update(name.encode() + b"\0" + arr.dtype.name.encode() + b"\0"
                 + ",".join(str(d) for d in arr.shape).encode() + b"\0"
                 + len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


WIRE_DTYPES: tuple[str, ...] = ("float16", "float32")
"""Dtypes a publisher may send float weight tensors in (a receiver accepts either)."""

_FLOAT16_MAX = float(np.finfo(np.float16).max)


def weights_in_dtype(tensors: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """Returns ``tensors`` with every float32 array cast to ``dtype`` (one of :data:`WIRE_DTYPES`).

    An array with a value float16 cannot hold (|x| > 65504, or non-finite) stays float32, so
    the cast never turns a finite weight into inf. Other dtypes pass through unchanged.
    Raises ValueError for an unknown ``dtype``.
    """
    if dtype not in WIRE_DTYPES:
        raise ValueError(f"weights dtype must be one of {WIRE_DTYPES}, got {dtype!r}")
    if dtype == "float32":
        return dict(tensors)
    out: dict[str, np.ndarray] = {}
    for name, array in tensors.items():
        fits = array.dtype == np.float32 and (array.size == 0 or float(np.abs(array).max()) <= _FLOAT16_MAX)
        out[name] = array.astype(np.float16) if fits else array
    return out
