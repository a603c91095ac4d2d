"""What ``resetfree-bench faults`` (:mod:`simulation.drills.bench_faults`) reports: its counts and
targets (:class:`DrillResult`, the JSON line), read from the runtime's and the learner's status
and from the learner's ingest journal after the run."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import Any

from simulation.app.processes import status_int
from simulation.drills.journal_audit import JournalAudit

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class DrillResult:
    """The drill's counts (the JSON line)."""

    transitions_generated: int = 0
    transitions_ingested: int = 0
    duplicates: int = 0
    loop_overruns: int = 0
    crashes: int = 0
    malformed_rejected: int = 0
    malformed_sent: int = 0
    malformed_sent_by_socket: dict[str, int] = dataclasses.field(default_factory=dict)
    malformed_rejected_by_process: dict[str, int | None] = dataclasses.field(default_factory=dict)
    duplicates_dropped: int = 0
    learner_kills: int = 0
    learner_restarts: int = 0
    partition_s: float = 0.0
    proxy_connections: int = 0
    runtime_acked_seq: int = 0
    lost_steps: int = 0
    jitter_p99_ms: float = 0.0
    journal_steps: int = 0
    journal_duplicates: int = 0
    journal_gaps: int = 0
    crash_notes: list[str] = dataclasses.field(default_factory=list)
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Returns whether every target holds."""
        return (self.transitions_generated == self.transitions_ingested and self.transitions_generated > 0
                and self.duplicates == 0 and self.loop_overruns == 0 and self.crashes == 0
                and self.journal_gaps == 0 and self.malformed_rejected >= self.malformed_reportable)

    @property
    def malformed_reportable(self) -> int:
        """Returns the malformed frames sent to sockets whose process reports a rejection count."""
        return sum(n for name, n in self.malformed_sent_by_socket.items()
                   if self.malformed_rejected_by_process.get(name.split("_")[0]) is not None)

    def to_json(self) -> dict[str, Any]:
        """Returns the result as JSON builtins, with ``ok``."""
        return {**dataclasses.asdict(self), "malformed_reportable": self.malformed_reportable, "ok": self.ok}


    def read_statuses(self, rt: Mapping[str, object], ln: Mapping[str, object], learner_malformed: int) -> None:
        """Fills the counts from the runtime's (``rt``) and the learner's (``ln``) last status;
        ``learner_malformed`` is the learner's rejection count over all its incarnations."""
        self.transitions_generated = generated_steps(rt)
        self.runtime_acked_seq = status_int(rt, "acked_seq")
        self.loop_overruns = max(self.loop_overruns, status_int(rt, "overruns"))
        jitter = rt.get("jitter_p99_ms")
        self.jitter_p99_ms = float(jitter) if isinstance(jitter, (int, float)) else math.nan
        self.transitions_ingested = status_int(ln, "transitions_ingested")
        self.duplicates_dropped = status_int(ln, "duplicates_dropped")
        self.lost_steps = status_int(ln, "lost_steps") + status_int(rt, "lost_steps")
        # A step the learner counted into its replay twice shows as env_steps above the unique count.
        self.duplicates = max(0, status_int(ln, "env_steps") - self.transitions_ingested)
        runtime_rejected = status_int(rt, "malformed_rejected") if "malformed_rejected" in rt else None
        # Each process reports one count for all its sockets (None: the runtime reports none).
        self.malformed_rejected_by_process = {"learner": learner_malformed, "runtime": runtime_rejected}
        self.malformed_rejected = learner_malformed + (runtime_rejected or 0)

    def read_audit(self, found: JournalAudit) -> None:
        """Adds the learner's journal, read back step by step: a duplicate there counts too."""
        self.journal_steps = found.steps
        self.journal_duplicates = found.duplicates
        self.journal_gaps = sum(found.gaps.values()) + found.position_errors
        self.duplicates = max(self.duplicates, found.duplicates)


def generated_steps(runtime: Mapping[str, object] | None) -> int:
    """Returns the steps the runtime's session has numbered (``next_seq``; ``steps`` if absent)."""
    return status_int(runtime, "next_seq") if "next_seq" in (runtime or {}) else status_int(runtime, "steps")
