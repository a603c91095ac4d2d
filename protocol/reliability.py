"""Exactly-once bookkeeping for the transitions channel; pure, socket-free classes.

The sender side is the runtime's outbox (``runtime.outbox.Outbox``: a spill log, replayed
from any seq after a reconnect). :class:`ReceiveTracker`, the receiver side, keeps per
session the next seq it will admit (``admitted``) and the next seq durably ingested
(``committed``); duplicates are dropped, overlaps trimmed, gaps rejected. Its state is a
small JSON-able dict the learner stores with its data so dedupe survives restarts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from protocol.errors import ProtocolError, SequenceGap
from protocol.messages import TransitionBatch

logger = logging.getLogger(__name__)

_STATE_VERSION = 1


@dataclass
class _Cursor:
    admitted: int
    committed: int


class ReceiveTracker:
    """Per-session sequence state of a receiver (the learner). Not thread-safe."""

    def __init__(self) -> None:
        self._sessions: dict[str, _Cursor] = {}

    def _cursor(self, session_id: str) -> _Cursor:
        return self._sessions.setdefault(session_id, _Cursor(0, 0))

    def committed(self, session_id: str) -> int:
        """Returns the next seq not yet durably ingested (what to ack / resume from)."""
        return self._sessions[session_id].committed if session_id in self._sessions else 0

    def admitted(self, session_id: str) -> int:
        """Returns the next seq :meth:`admit` will accept."""
        return self._sessions[session_id].admitted if session_id in self._sessions else 0

    def sessions(self) -> list[str]:
        """Returns the known session ids."""
        return list(self._sessions)

    def admit(self, batch: TransitionBatch) -> TransitionBatch | None:
        """Returns the part of ``batch`` not admitted before (None for a pure duplicate).

        Advances ``admitted`` past the returned steps; call :meth:`commit` once they are
        durable. Raises SequenceGap (a ProtocolError; ``.expected`` says where to resend
        from) when the batch starts beyond the next expected seq.
        """
        cur = self._cursor(batch.session_id)
        if batch.first_seq > cur.admitted:
            raise SequenceGap(batch.session_id, cur.admitted, batch.first_seq)
        if batch.end_seq <= cur.admitted:
            logger.debug("session %s: duplicate seqs %d..%d dropped", batch.session_id,
                         batch.first_seq, batch.end_seq - 1)
            return None
        fresh = batch if batch.first_seq == cur.admitted else batch.tail(cur.admitted)
        cur.admitted = fresh.end_seq
        return fresh

    def commit(self, session_id: str, next_seq: int) -> None:
        """Records that every seq < ``next_seq`` of the session is durable. Returns None.

        Raises ProtocolError if ``next_seq`` goes backwards or beyond what was admitted.
        """
        cur = self._cursor(session_id)
        if not cur.committed <= next_seq <= cur.admitted:
            raise ProtocolError(f"commit.next_seq: {next_seq} outside [{cur.committed}, {cur.admitted}] "
                                f"for session {session_id!r}")
        cur.committed = next_seq

    def skip_to(self, session_id: str, seq: int) -> int:
        """Declares the seqs from the committed point up to ``seq`` lost (the runtime could
        not resend them; see the gap rule in docs/protocol.md) and returns how many.

        Only valid with nothing admitted-but-uncommitted; raises ProtocolError otherwise or
        when ``seq`` is not ahead of the committed point.
        """
        cur = self._cursor(session_id)
        if cur.admitted != cur.committed or seq <= cur.committed:
            raise ProtocolError(f"skip_to: seq {seq} must be beyond the committed {cur.committed} with nothing "
                                f"in flight (admitted {cur.admitted}) for session {session_id!r}")
        lost = seq - cur.committed
        cur.admitted = cur.committed = seq
        return lost

    def rewind(self, session_id: str) -> None:
        """Forgets admitted-but-uncommitted steps (their ingest failed); they will be re-admitted."""
        cur = self._cursor(session_id)
        cur.admitted = cur.committed

    def resume_point(self, session_id: str, runtime_next_seq: int) -> int:
        """Returns the seq a (re)connecting runtime should resend from (its Welcome.resume_seq).

        Raises ProtocolError when the runtime's ``next_seq`` is below what was already
        ingested: it lost its state and would reuse seqs.
        """
        committed = self.committed(session_id)
        if runtime_next_seq < committed:
            raise ProtocolError(f"hello.next_seq: runtime {session_id!r} would assign seq {runtime_next_seq} "
                                f"but {committed} are already ingested (runtime lost its state)")
        self.rewind(session_id)
        return committed

    def export_state(self) -> dict[str, Any]:
        """Returns the committed state as a JSON-able dict (persist it with the ingested data)."""
        return self.state_of(self.committed_seqs())

    def committed_seqs(self) -> dict[str, int]:
        """Returns session → committed seq (the first seq not yet committed), for every session."""
        return {sid: cur.committed for sid, cur in self._sessions.items()}

    @staticmethod
    def state_of(committed: dict[str, int]) -> dict[str, Any]:
        """Returns the :meth:`export_state` form of a session → committed seq map (what a
        consumer that only records committed steps persists, for :meth:`from_state`)."""
        return {"version": _STATE_VERSION, "sessions": dict(committed)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ReceiveTracker:
        """Returns a tracker restored from :meth:`export_state` output; raises ProtocolError if malformed."""
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION \
                or not isinstance(state.get("sessions"), dict):
            raise ProtocolError(f"tracker state: expected {{'version': {_STATE_VERSION}, 'sessions': {{...}}}}")
        tracker = cls()
        for sid, seq in state["sessions"].items():
            if not isinstance(sid, str) or isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
                raise ProtocolError(f"tracker state: bad entry {sid!r}: {seq!r}")
            tracker._sessions[sid] = _Cursor(seq, seq)
        return tracker
