"""The protocol package's exception family.

Every failure the wire can produce is a :class:`ProtocolError` (a ``ValueError``), so a
receiver needs exactly one ``except`` clause to count and log whatever a peer sends it.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class ProtocolError(ValueError):
    """A message, frame, sequence or peer violated the protocol; the text names the field/limit."""


class ChecksumError(ProtocolError):
    """A weights blob's SHA-256 does not match its tensors."""


class SequenceGap(ProtocolError):
    """A transition batch starts beyond the next expected seq; the sender must resend.

    Attributes:
        session_id: the session the batch belongs to.
        expected: the next seq the receiver expects (what the sender should resend from).
        got: the batch's ``first_seq``.
    """

    def __init__(self, session_id: str, expected: int, got: int) -> None:
        super().__init__(
            f"transitions.first_seq: session {session_id!r} expected seq {expected}, got {got} (gap)"
        )
        self.session_id = session_id
        self.expected = expected
        self.got = got


class HandshakeError(ProtocolError):
    """The hello/welcome handshake failed: refused by the learner, or no welcome in time."""


class PeerTimeout(ProtocolError):
    """No reply or heartbeat from the peer within the deadline."""


class TransportClosed(ProtocolError):
    """The transport was closed (or never opened) when an operation needed it."""


class SeqLogError(ProtocolError):
    """The on-disk seq log (:mod:`protocol.seqlog`) could not be read or written."""


class SeqLogFullError(SeqLogError):
    """The seq log reached its disk cap and its policy is to refuse records (hold)."""
