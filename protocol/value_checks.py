"""Value checks: whether recorded steps may be kept and trained on.

A message that exists is structurally valid (its ``__post_init__`` and the decoder see to
dtypes, shapes and seqs); these functions check the *values* — what the learner checks at
ingest before it journals or acks a batch (docs/protocol.md, "Refused batches") and what the
runtime's loop checks before it records a step. Each returns the reason naming the field, or
"" when the values may be kept. numpy only.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # only annotated: protocol.messages re-exports observation_value_error from here
    from protocol.messages import TransitionBatch

logger = logging.getLogger(__name__)

ACTION_LOW, ACTION_HIGH = -1.0, 1.0
"""Every action element lies in ``[-1, 1]`` (the protocol's action space; the learner refuses
a batch with an action outside it, see :func:`batch_value_error`)."""


def batch_value_error(batch: TransitionBatch) -> str:
    """Returns why ``batch``'s values may not be trained on, or "" when they may.

    The structure (dtypes, shapes, seqs) is the decoder's business; this checks the values,
    as the learner does at ingest before it acks (docs/protocol.md, "Refused batches"):
    every float observation finite, every action finite and inside ``[-1, 1]``, every
    timestamp finite. The reason names the field, the first bad step's seq and the value.
    Allocation-free beyond numpy's reductions; ~µs per state batch.
    """
    def first_bad(mask: np.ndarray) -> int:
        return int(np.argwhere(mask)[0][0])

    for name in sorted(batch.observations):
        arr = batch.observations[name]
        if arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
            row = first_bad(~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1))
            bad = arr[row][~np.isfinite(arr[row])].ravel()[0]
            return (f"transitions.observations.{name}: non-finite value {bad!s} at seq {batch.first_seq + row} "
                    f"(steps {batch.first_seq}..{batch.end_seq - 1})")
    actions = batch.actions
    if actions.size:
        finite = np.isfinite(actions)
        inside = finite & (actions >= ACTION_LOW) & (actions <= ACTION_HIGH)
        if not inside.all():
            row = first_bad(~inside.all(axis=1))
            bad = actions[row][~inside[row]][0]
            what = "outside [-1, 1]" if np.isfinite(bad) else "non-finite"
            return (f"transitions.actions: {what} value {bad!s} at seq {batch.first_seq + row} "
                    f"(steps {batch.first_seq}..{batch.end_seq - 1})")
    if not np.isfinite(batch.timestamps).all():
        row = first_bad(~np.isfinite(batch.timestamps))
        return (f"transitions.timestamps: non-finite value {batch.timestamps[row]} at seq {batch.first_seq + row} "
                f"(steps {batch.first_seq}..{batch.end_seq - 1})")
    return ""


def observation_value_error(observation: dict[str, np.ndarray]) -> str:
    """Returns why one step's observation may not be recorded (a non-finite float), or ""."""
    for name, arr in observation.items():
        arr = np.asarray(arr)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            return f"observation {name}: non-finite value {arr[~np.isfinite(arr)].ravel()[0]}"
    return ""
