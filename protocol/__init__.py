"""The wire protocol: typed messages, a defensive msgpack codec, exactly-once bookkeeping
and the ZeroMQ transport (uplink, weights, control) with optional CURVE security.

Imports no other project package. See ``docs/protocol.md`` for the wire format.
"""

from __future__ import annotations

import logging

from protocol.codec import Limits, Spaces, decode, encode
from protocol.errors import (
    ChecksumError, HandshakeError, PeerTimeout, ProtocolError, SequenceGap, TransportClosed,
)
from protocol.keys import CurveClientKeys, CurveServerKeys, client_keys, server_keys
from protocol.messages import (
    PROTOCOL_VERSION, Ack, Command, Heartbeat, Hello, LoopStats, Message, Status, TransitionBatch, Weights,
    Welcome, messages_equal,
)
from protocol.reliability import ReceiveTracker
from protocol.spaces import ArraySpec
from protocol.tensors import weights_sha256

logger = logging.getLogger(__name__)

__all__ = [
    "PROTOCOL_VERSION", "Ack", "ArraySpec", "ChecksumError", "Command", "CurveClientKeys",
    "CurveServerKeys", "HandshakeError", "Heartbeat", "Hello", "Limits", "LoopStats", "Message",
    "PeerTimeout", "ProtocolError", "ReceiveTracker", "SequenceGap", "Spaces",
    "Status", "TransitionBatch", "TransportClosed", "Weights", "Welcome",
    "client_keys", "decode", "encode", "messages_equal", "server_keys", "weights_sha256",
]
