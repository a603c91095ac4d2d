"""The settings a runtime and its learner must agree on, and their fingerprint.

Spaces are checked field by field from ``hello``; everything else that both sides act on
is summarised here and compared by hash, so neither side imports the other's config. The
runtime executes the forward/backward switch schedule and the environment-reset schedule;
the learner relies on them (which buffer a step belongs to, how often segments end).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from protocol.messages import PROTOCOL_VERSION


DEFAULT_SWITCH_INTERVAL = 200
"""Environment steps one agent acts before control passes to the other, unless configured
(the authors' code: 200). The one default the learner's ``switch.interval`` and the runtime's
``--switch-every`` both start from."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SessionSettings:
    """What runtime and learner must share, beyond the observation and action spaces."""

    switch_interval: int = DEFAULT_SWITCH_INTERVAL
    """Environment steps one agent acts before control passes to the other."""

    def __post_init__(self) -> None:
        if not isinstance(self.switch_interval, int) or self.switch_interval < 1:
            raise ValueError(f"switch_interval: must be a positive int, got {self.switch_interval!r}")

    def to_dict(self) -> dict[str, int]:
        """Returns the settings as a JSON-compatible dict."""
        return dataclasses.asdict(self)

    def config_hash(self) -> str:
        """Returns the sha256 hex of the canonical JSON of these settings and the protocol version."""
        payload = {"protocol": PROTOCOL_VERSION, **self.to_dict()}
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()
