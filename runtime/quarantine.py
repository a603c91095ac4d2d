"""Batches the learner refused: kept aside on the runtime's disk, counted, never resent.

The learner checks every batch's values before it acks (docs/protocol.md, "Refused
batches"): a non-finite observation, timestamp or action, or an action outside ``[-1, 1]``,
makes it refuse the batch with a ``status{state="batch_refused"}`` naming the seqs and the
reason, skip those seqs and ack past them. The runtime's answer is :class:`Quarantine`:

* it logs the refusal at ERROR (rate-limited) with the learner's reason;
* it copies the refused steps out of the outbox (memory, or the spill log read in the
  outbox's reader thread) into ``SPILL_DIR/quarantine/<first_seq:020d>.batch`` — one
  self-contained msgpack frame, readable with :func:`runtime.spill_io.decode_batch` — and
  appends a line to ``SPILL_DIR/quarantine/refused.jsonl`` (time, session, seqs, reason,
  file); past ``max_bytes`` of batch files only the line is written (``dropped_files``);
* it counts ``refused_batches`` / ``refused_steps`` (runtime status).

The learner's ack that follows then releases the steps from the outbox and the spill log as
for any acked batch, so a refused batch is never sent again. The runtime's own checks
(``runtime.loop``: a non-finite observation is a hold, never a recorded step) mean a
refusal points at a bug or a version skew, which the quarantined file lets someone inspect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

from protocol.atomic import write_bytes_atomic
from protocol.messages import Status
from protocol.transport import refused_range
from protocol.transport.common import worth_logging
from runtime.outbox import Outbox
from runtime.spill_io import encode_batch

logger = logging.getLogger(__name__)

MAX_QUARANTINE_BYTES = 256 * 2**20
"""Default cap on the batch files kept in the quarantine directory."""


class Quarantine:
    """Where a runtime puts the batches its learner refused. Methods run on the event loop;
    disk writes go to a worker thread."""

    def __init__(self, directory: Path, *, max_bytes: int = MAX_QUARANTINE_BYTES) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.refused_batches = 0
        """Refusals received for this session."""
        self.refused_steps = 0
        """Steps they covered."""
        self.bytes_written = 0
        """Bytes of batch files written since start."""
        self.dropped_files = 0
        """Refusals whose steps were not kept (cap reached, or no longer in the outbox)."""
        self.malformed = 0
        """``batch_refused`` statuses that named no valid seq range or another session."""

    def figures(self) -> dict[str, int]:
        """Returns the counters for the runtime's status."""
        return {"refused_batches": self.refused_batches, "refused_steps": self.refused_steps,
                "quarantined_bytes": self.bytes_written, "quarantine_dropped": self.dropped_files}

    async def take(self, outbox: Outbox, msg: Status) -> None:
        """Quarantines the steps ``msg`` refuses. Never raises for a bad message or a disk
        error (both are logged and counted); awaits the outbox's reader and a disk write."""
        span = refused_range(msg)
        if span is None or span[0] != outbox.session_id:
            self.malformed += 1
            logger.warning("quarantine: ignored a malformed batch refusal: %s %s", msg.detail, msg.message[:200])
            return
        session_id, first, end = span
        self.refused_batches += 1
        self.refused_steps += end - first
        if worth_logging(self.refused_batches):
            logger.error("runtime: the learner refused steps %d..%d (%d refusals so far): %s; quarantining them, "
                         "they will not be resent", first, end - 1, self.refused_batches, msg.message)
        try:
            batches = await outbox.steps_in(first, end)
            await asyncio.to_thread(self._write, session_id, first, end, msg.message, batches)
        except Exception as e:  # noqa: BLE001 — a quarantine failure must not stop the runtime
            self.dropped_files += 1
            logger.error("quarantine: steps %d..%d not kept: %s", first, end - 1, e)

    def _write(self, session_id: str, first: int, end: int, reason: str, batches: list[Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        record: dict[str, Any] = {"time": time.time(), "session_id": session_id, "first_seq": first,
                                  "end_seq": end, "reason": reason, "files": []}
        if not batches:
            self.dropped_files += 1
            record["note"] = "steps no longer in the outbox"
        for batch in batches:
            payload = encode_batch(batch)
            if self.bytes_written + len(payload) > self.max_bytes:
                self.dropped_files += 1
                record["note"] = f"quarantine cap of {self.max_bytes} bytes reached; steps not kept"
                break
            path = self.directory / f"{batch.first_seq:020d}.batch"
            write_bytes_atomic(path, payload)
            self.bytes_written += len(payload)
            record["files"].append(path.name)
        with open(self.directory / "refused.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
