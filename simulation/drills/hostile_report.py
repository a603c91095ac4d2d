"""What ``resetfree-bench hostile`` (:mod:`simulation.drills.bench_hostile`) reports: per channel,
the messages sent to it and what its process says it did with them (:class:`Channel`, read from
the two processes' status counters), and the whole run's figures and targets
(:class:`HostileResult`, the JSON line)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from simulation.app.processes import status_int

logger = logging.getLogger(__name__)

SHARES = {"learner_uplink": 0.5, "learner_control": 0.15, "runtime_control": 0.15, "runtime_weights": 0.2}
"""How the hostile messages are split between the channels."""


@dataclasses.dataclass
class Channel:
    """One channel's count: what was sent to it and what its process says it did with it."""

    sent: int = 0
    hostile: int = 0
    received: int = 0
    accepted: int = 0
    rejected: int = 0
    by_reason: dict[str, int] = dataclasses.field(default_factory=dict)
    by_kind: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def closes(self) -> bool:
        """Whether every message sent was received and classified."""
        return self.sent == self.received == self.accepted + self.rejected


@dataclasses.dataclass
class HostileResult:
    """The fuzz's figures (the JSON line)."""

    sent: int = 0
    channels: dict[str, Channel] = dataclasses.field(default_factory=dict)
    legit_steps: int = 0
    legit_acked: int = 0
    runtime_acked_seq: int = 0
    runtime_steps: int = 0
    runtime_state: str = ""
    exits: dict[str, int | None] = dataclasses.field(default_factory=dict)
    alive_at_end: dict[str, bool] = dataclasses.field(default_factory=dict)
    tracebacks: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)
    send_s: float = 0.0
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Returns whether every target holds."""
        return (all(c.closes for c in self.channels.values()) and len(self.channels) == len(SHARES)
                and all(self.alive_at_end.values()) and self.exits and all(v == 0 for v in self.exits.values())
                and self.tracebacks == 0 and self.legit_steps > 0 and self.legit_acked == self.legit_steps
                and self.runtime_acked_seq > 0 and self.runtime_state == "running")

    def to_json(self) -> dict[str, Any]:
        """Returns the result as JSON builtins, with ``ok`` and each channel's ``closes``."""
        out = dataclasses.asdict(self)
        for name, channel in self.channels.items():
            out["channels"][name]["closes"] = channel.closes
        return {**out, "ok": self.ok}

    def read_counts(self, ln: dict, rt: dict, base_l: dict, base_r: dict) -> None:
        """Fills every channel's received/accepted/rejected counts and reasons from the
        learner's (``ln``) and the runtime's (``rt``) status, less the baselines read before
        the attack (``base_l``, ``base_r``)."""
        c = self.channels

        def delta(now: dict, base: dict, key: str) -> int:
            return status_int(now, key) - status_int(base, key)

        up = c["learner_uplink"]
        up.received = delta(ln, base_l, "uplink_received")
        up.accepted = delta(ln, base_l, "uplink_accepted")
        up.rejected = delta(ln, base_l, "uplink_rejected")
        up.by_reason = {k: delta(ln, base_l, k) for k in ("uplink_malformed", "uplink_stale", "refused_sessions",
                                                          "refused_batches", "gaps", "journal_errors",
                                                          "handler_errors", "duplicates_dropped")}
        for name, now, base in (("learner_control", ln, base_l), ("runtime_control", rt, base_r)):
            ch = c[name]
            ch.accepted = delta(now, base, "control_accepted")
            ch.rejected = delta(now, base, "control_malformed")
            ch.received = ch.accepted + ch.rejected
            ch.by_reason = {"malformed": ch.rejected, "failed_replies": delta(now, base, "failed_replies")}
        w = c["runtime_weights"]
        w.received = delta(rt, base_r, "weights_received")
        w.accepted = delta(rt, base_r, "weights_accepted")
        reasons = {"malformed": delta(rt, base_r, "weights_malformed"),
                   "checksum_failures": delta(rt, base_r, "weights_checksum_failures"),
                   "policy_rejected": delta(rt, base_r, "weights_policy_rejected"),
                   "superseded": delta(rt, base_r, "weights_superseded"),
                   "stale": delta(rt, base_r, "weights_stale")}
        w.by_reason = reasons
        w.rejected = sum(reasons.values())
