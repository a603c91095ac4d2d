"""Console progress of a ``resetfree-sim`` run: one line every couple of seconds, or one
refreshing status line on a terminal, and a warning when the run stalls.

The display only formats what the orchestrator hands it (:class:`Snapshot`); rates are
computed here from consecutive snapshots, so the orchestrator keeps no timing state.
:class:`StallWatch` tells on the display, once per stall, when the env steps stop moving.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TextIO

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Snapshot:
    """What the run looks like now (from the learner's and the runtimes' status)."""

    env_steps: int = 0
    """Unique environment steps the learner has ingested."""
    updates: int = 0
    """Agent updates the learner has done."""
    utd: float = 0.0
    """Achieved updates per env step after the seed phase (learner's figure)."""
    agent: str = "-"
    """Agent acting on the first runtime (``forward``/``backward``)."""
    seed_phase: bool = False
    """Whether the learner is still in its random-action seed phase."""
    seed_steps: int | None = None
    """Env steps of the seed phase (the learner's ``schedule.seed_frames``), when known."""
    success: float | None = None
    """Latest evaluated success rate, or None before the first evaluation."""
    success_step: int | None = None
    """Env steps of that evaluation."""
    bc_success: float | None = None
    """BC baseline success rate, or None while it is computed (see ``bc_state``)."""
    bc_state: Literal["training", "failed", "off"] = "training"
    """While ``bc_success`` is None: ``training`` (its child runs), ``failed`` or ``off``."""
    evaluating: bool = False
    """Whether an evaluation is running now."""
    target_steps: int | None = None
    """Total env steps of the run, when bounded."""


class ProgressDisplay:
    """Prints :class:`Snapshot` lines at most every ``interval`` seconds.

    On a TTY the line is rewritten in place (``\\r``); elsewhere each update is a new line,
    so logs and pipes stay readable. Not thread-safe: call from one thread.
    """

    def __init__(self, stream: TextIO | None = None, *, interval: float = 2.0, tty: bool | None = None) -> None:
        if interval <= 0:
            raise ValueError(f"interval: must be positive, got {interval}")
        self.stream = stream if stream is not None else sys.stdout
        self.interval = interval
        self.tty = self.stream.isatty() if tty is None else tty
        self._last_print = -float("inf")
        self._prev: tuple[float, int, int] | None = None
        self._rates = (0.0, 0.0)
        self._width = 0

    def rates(self, snap: Snapshot, now: float) -> tuple[float, float]:
        """Updates and returns ``(env steps/s, updates/s)`` since the previous snapshot."""
        if self._prev is not None and now > self._prev[0]:
            dt = now - self._prev[0]
            self._rates = ((snap.env_steps - self._prev[1]) / dt, (snap.updates - self._prev[2]) / dt)
        self._prev = (now, snap.env_steps, snap.updates)
        return self._rates

    def update(self, snap: Snapshot, *, now: float | None = None, force: bool = False) -> str | None:
        """Shows ``snap`` when ``interval`` has passed (or ``force``); returns the line shown or None.

        Blocks only on writing to the stream.
        """
        now = time.monotonic() if now is None else now
        if not force and now - self._last_print < self.interval:
            return None
        line = format_line(snap, *self.rates(snap, now))
        self._last_print = now
        if self.tty:
            pad = max(0, self._width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        return line

    def message(self, text: str) -> None:
        """Prints ``text`` on its own line (ending a refreshing status line first)."""
        if self.tty and self._width:
            self.stream.write("\n")
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Ends a refreshing status line with a newline."""
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0


class StallWatch:
    """Reports on a :class:`ProgressDisplay`, once per stall, when the learner's env steps have
    not moved for ``warn_after_s`` seconds, with the lock-step figures that tell why."""

    def __init__(self, display: ProgressDisplay, warn_after_s: float) -> None:
        self.display = display
        self.warn_after_s = warn_after_s
        self._stall: tuple[int, float, bool] = (-1, time.monotonic(), False)
        """(env steps last seen, since when, whether this stall was reported)."""

    def check(self, learner: Mapping[str, Any], runtimes: Sequence[Mapping[str, Any]]) -> None:
        """Looks at the learner's and the runtimes' newest status; warns when the steps stalled."""
        steps = int(learner.get("env_steps", 0) or 0)
        now = time.monotonic()
        if steps != self._stall[0]:
            self._stall = (steps, now, False)
            return
        if not self._stall[2] and now - self._stall[1] > self.warn_after_s:
            self._stall = (steps, self._stall[1], True)
            first = runtimes[0] if runtimes else {}
            self.display.message(
                f"warning: no env steps for {now - self._stall[1]:.0f} s at {steps:,}: learner trained_position "
                f"{learner.get('trained_position')}, seed_phase {learner.get('seed_phase')}; "
                f"runtime0 acked_seq {first.get('acked_seq')}, trained_through {first.get('trained_through')}, "
                f"next_seq {first.get('next_seq')} (lock-step waits for trained_through >= next_seq - window)")


LINE_WIDTH = 120
"""The line is kept within this many characters: details are dropped to fit (see :func:`format_line`)."""


def format_line(snap: Snapshot, steps_per_s: float, updates_per_s: float, *, width: int = LINE_WIDTH) -> str:
    """Returns the one-line summary of ``snap`` with the given rates, in words a newcomer reads.

    During the seed phase: ``seed phase (random actions) 3,400/10,000  512.0 steps/s  acting:
    forward  success: no eval yet  BC training…``; after it: ``steps 34,000/200,000  25.1 steps/s
    updates 24,000 (25.0/s, UTD 1.00)  acting: backward  success 80% @30,000  BC 100%``.
    When that is longer than ``width``, the details go first (updates per second, then the
    updates, then the acting agent); progress, success and BC always stay.
    """
    rate = f"{steps_per_s:.1f} steps/s"
    if snap.seed_phase:
        head = f"seed phase (random actions) {snap.env_steps:,}" + (f"/{snap.seed_steps:,}" if snap.seed_steps else "")
        updates: list[str] = []  # nothing is trained in the seed phase
    else:
        head = f"steps {snap.env_steps:,}" + (f"/{snap.target_steps:,}" if snap.target_steps else "")
        updates = [f"updates {snap.updates:,} ({updates_per_s:.1f}/s, UTD {snap.utd:.2f})",
                   f"updates {snap.updates:,} (UTD {snap.utd:.2f})", ""]
    if snap.success is None:
        success = "success: evaluating…" if snap.evaluating else "success: no eval yet"
    else:
        at = f" @{snap.success_step:,}" if snap.success_step is not None else ""
        success = f"success {snap.success:.0%}{at}" + (" (evaluating…)" if snap.evaluating else "")
    if snap.bc_success is not None:
        bc = f"BC {snap.bc_success:.0%}"
    else:
        bc = {"training": "BC training…", "failed": "BC failed"}.get(snap.bc_state, "")
    agents = [f"acting: {snap.agent}", ""] if snap.agent != "-" else [""]
    # from the fullest line down: the updates shrink, then go, then the acting agent goes
    for agent in agents:
        for upd in updates or [""]:
            line = "  ".join(part for part in (head, rate, upd, agent, success, bc) if part)
            if len(line) <= width:
                return line
    return line
