"""The runtime's exception family: everything ``runtime`` raises derives from :class:`RuntimeFault`."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class RuntimeFault(Exception):
    """Base class of every error raised by the ``runtime`` package."""


class WeightsRejected(RuntimeFault, ValueError):
    """A weights blob failed verification (unknown agent, shape/dtype, checksum, version)."""


class SpillError(RuntimeFault):
    """The on-disk spill log could not be read or written."""


class SpillFullError(SpillError):
    """The spill log reached its disk cap and its policy is to stop recording (hold)."""


class OutboxError(RuntimeFault):
    """The outbox cannot take a batch (writer queue full, closed, or spill full)."""


class PolicyError(RuntimeFault):
    """The policy could not produce an action (no weights loaded, or the module failed)."""
