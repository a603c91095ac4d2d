"""ZeroMQ transport on ``zmq.asyncio``: uplink, weights and control channels.

* Uplink: the learner binds a ROUTER (:class:`UplinkServer`), each runtime connects a
  DEALER (:class:`UplinkClient`). Frames are exactly :func:`protocol.codec.encode`'s
  (the ROUTER adds/strips the peer identity).
* Weights: :class:`WeightsPublisher` (PUB) → :class:`WeightsSubscriber` (SUB), latest wins.
* Control: :class:`ControlServer` (ROUTER) ← :class:`ControlClient` (DEALER), request/reply.

Every object owns its own ``zmq.asyncio.Context`` (so a CURVE server's ZAP authenticator
covers only its sockets), does no I/O in ``__init__``, never blocks the event loop, and
closes its sockets with linger 0. Sends are non-blocking and zero-copy: arrays handed to
``send``/``publish`` must not be mutated afterwards.

Modules by channel: :mod:`.common` (sockets, sends, loopback check), :mod:`.uplink` (learner) and
:mod:`.uplink_client` (runtime), :mod:`.weights`, :mod:`.control`; every public name is re-exported here.
"""

import logging

from protocol.transport.common import DEFAULT_ENDPOINT, set_io_thread_scheduling, start_zero_copy_collector
from protocol.transport.control import (ControlClient, ControlClientConfig, ControlServer, ControlServerConfig,
                                        Handler)
from protocol.transport.uplink import (BATCH_REFUSED, HELLO_REQUIRED, PeerInfo, UplinkServer, UplinkServerConfig,
                                       batch_refusal, refused_range)
from protocol.transport.uplink_client import ConnectionState, HandshakeRefused, UplinkClient, UplinkClientConfig
from protocol.transport.weights import (WeightsPublisher, WeightsPublisherConfig, WeightsSubscriber,
                                        WeightsSubscriberConfig, weights_limits)

logger = logging.getLogger(__name__)

__all__ = [
    "set_io_thread_scheduling", "start_zero_copy_collector",
    "BATCH_REFUSED", "batch_refusal", "refused_range",
    "DEFAULT_ENDPOINT", "HELLO_REQUIRED", "ConnectionState", "ControlClient", "ControlClientConfig", "ControlServer",
    "ControlServerConfig", "HandshakeRefused", "Handler", "PeerInfo", "UplinkClient", "UplinkClientConfig",
    "UplinkServer", "UplinkServerConfig", "WeightsPublisher", "WeightsPublisherConfig", "WeightsSubscriber",
    "WeightsSubscriberConfig", "weights_limits",
]
