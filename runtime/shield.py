"""The safety shield: every action passes :meth:`Shield.filter` before it reaches a robot.

Pure (no I/O apart from rate-limited logging) and total: whatever ``filter`` is given —
NaN, inf, huge numbers, wrong shapes, wrong types, stale sensors — the command it returns
is finite and inside every configured limit. Order of the checks (design §6):

1. watchdog (missed deadline, stale/missing robot state, stale camera frames) → hold;
2. type/shape/finiteness of the action → hold;
3. clip to the action space;
4. end-effector target (position + scaled delta) clipped to the workspace box;
5. per-tick step per axis, then the speed limit;
6. gripper limits.

A *hold* is a zero-motion command that keeps the gripper command where it last was.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hardware.interfaces import RobotState, Workspace

logger = logging.getLogger(__name__)

HOLD_REASONS = (
    "deadline_missed", "state_missing", "state_stale", "state_invalid", "frame_stale",
    "malformed", "non_finite", "observation_invalid",
)
SENSOR_HOLD_REASONS = frozenset({"state_missing", "state_stale", "state_invalid", "frame_stale", "observation_invalid"})
"""Holds for a missing, stale or invalid sensor reading: the loop records no step for them (a
watchdog event is not a training sample; ``observation_invalid`` is the loop's own check of a
non-finite observation)."""
CLIP_REASONS = ("action_clip", "workspace_clip", "step_clip", "speed_clip", "gripper_clip")


@dataclass(frozen=True, kw_only=True)
class ShieldConfig:
    """Limits the shield enforces; units are action units unless stated."""

    action_low: tuple[float, ...]
    """Lower bound of every action element (the action space)."""
    action_high: tuple[float, ...]
    """Upper bound of every action element."""
    workspace: Workspace
    """Box the end-effector target must stay in (metres, robot frame)."""
    position_axes: tuple[int, int, int] = (0, 1, 2)
    """Action elements that are end-effector deltas along x, y, z."""
    position_scale: float = 0.05
    """Metres of end-effector motion per unit of action (the robot adapter's scale)."""
    max_step: tuple[float, float, float] = (0.05, 0.05, 0.05)
    """Largest end-effector move per tick along each axis (metres)."""
    max_speed: float = 0.5
    """Largest end-effector speed (m/s), applied to the norm of the per-tick move."""
    control_period_s: float = 0.1
    """Tick period (s); turns ``max_speed`` into a per-tick distance."""
    gripper_index: int | None = -1
    """Action element that commands the gripper, or ``None`` when there is none."""
    gripper_min: float = -1.0
    """Smallest gripper command allowed."""
    gripper_max: float = 1.0
    """Largest gripper command allowed."""
    initial_gripper: float = 0.0
    """Gripper command a hold uses before any command was sent (clipped to the limits)."""
    max_frame_age_s: float = 0.2
    """Camera frames older than this make the shield hold."""
    max_state_age_s: float = 0.1
    """A robot state older than this makes the shield hold."""
    hold_on_deadline_miss: bool = True
    """Deadline-miss policy: hold for the late tick (True) or only count it (False)."""
    log_interval_s: float = 5.0
    """At most one log line per reason in this interval (the rest are counted)."""

    def __post_init__(self) -> None:
        low, high = np.asarray(self.action_low, float), np.asarray(self.action_high, float)
        if low.ndim != 1 or low.size == 0 or low.shape != high.shape:
            raise ValueError("action_low/action_high: need two 1-D sequences of the same length")
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(low <= high)):
            raise ValueError("action_low/action_high: must be finite with low <= high")
        dim = low.size
        if len(self.position_axes) != 3 or len(set(self.position_axes)) != 3:
            raise ValueError("position_axes: need three distinct indices")
        if any(not -dim <= i < dim for i in self.position_axes):
            raise ValueError(f"position_axes: indices must lie in the {dim}-element action")
        if self.gripper_index is not None:
            if not -dim <= self.gripper_index < dim:
                raise ValueError(f"gripper_index: must lie in the {dim}-element action")
            if self.gripper_index % dim in {i % dim for i in self.position_axes}:
                raise ValueError("gripper_index: must differ from position_axes")
        motion = [i for i in range(dim) if self.gripper_index is None or i != self.gripper_index % dim]
        if np.any(low[motion] > 0) or np.any(high[motion] < 0):
            raise ValueError("action_low/action_high: zero (the hold) must be inside the bounds")
        for name in ("position_scale", "max_speed", "control_period_s", "max_frame_age_s",
                     "max_state_age_s", "log_interval_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: must be finite and positive, got {value}")
        if len(self.max_step) != 3 or any(not (math.isfinite(s) and s >= 0) for s in self.max_step):
            raise ValueError("max_step: need three finite non-negative values")
        if not (math.isfinite(self.gripper_min) and math.isfinite(self.gripper_max)
                and self.gripper_min <= self.gripper_max):
            raise ValueError("gripper_min/gripper_max: must be finite with min <= max")
        if not math.isfinite(self.initial_gripper):
            raise ValueError("initial_gripper: must be finite")

    @property
    def action_dim(self) -> int:
        """Number of action elements."""
        return len(self.action_low)


@dataclass(frozen=True)
class ShieldResult:
    """What the shield decided for one tick."""

    command: np.ndarray
    """The float32 action to send, inside every limit."""
    held: bool
    """Whether the command is a hold (zero motion, gripper unchanged)."""
    reasons: tuple[str, ...]
    """Every hold or clip reason that applied, in check order."""


@dataclass
class ShieldCounters:
    """Counts of ticks, holds and clips by reason, reported by the loop."""

    ticks: int = 0
    """Calls to ``filter``."""
    held: int = 0
    """Calls that returned a hold."""
    by_reason: dict[str, int] = field(default_factory=dict)
    """Occurrences of each reason."""

    def snapshot(self) -> dict[str, int]:
        """Returns a flat copy: ``ticks``, ``held`` and one entry per reason seen."""
        return {"ticks": self.ticks, "held": self.held, **self.by_reason}


class Shield:
    """Clips every command into the configured limits; see the module docstring."""

    def __init__(self, config: ShieldConfig) -> None:
        self.config = config
        self.counters = ShieldCounters()
        self._low = np.asarray(config.action_low, dtype=np.float64)
        self._high = np.asarray(config.action_high, dtype=np.float64)
        self._axes = np.asarray([i % config.action_dim for i in config.position_axes])
        self._ws_low = np.asarray(config.workspace.low, dtype=np.float64)
        self._ws_high = np.asarray(config.workspace.high, dtype=np.float64)
        self._max_step = np.asarray(config.max_step, dtype=np.float64)
        self._axes_list = self._axes.tolist()
        self._max_step_list = self._max_step.tolist()
        self._ws_low_list, self._ws_high_list = self._ws_low.tolist(), self._ws_high.tolist()
        self._max_dist = config.max_speed * config.control_period_s
        self._gripper = None if config.gripper_index is None else config.gripper_index % config.action_dim
        # The command goes out as float32: its bounds are the float32 values just inside the
        # float64 limits (float32(-0.3) < -0.3, so clipping in float64 and casting could exceed them).
        self._action_low32, self._action_high32 = _inward_float32(self._low, self._high)
        sent_low, sent_high = self._low.copy(), self._high.copy()
        if self._gripper is not None:
            sent_low[self._gripper] = self._clip_gripper_value(-math.inf)
            sent_high[self._gripper] = self._clip_gripper_value(math.inf)
        self._sent_low32, self._sent_high32 = _inward_float32(sent_low, sent_high)
        self._last_gripper = self._clip_gripper_value(config.initial_gripper)
        self._last_log: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    # ------------------------------------------------------------------ public
    def filter(
        self,
        action: Any,
        state: RobotState | None,
        now: float,
        frame_ages: dict[str, float] | None = None,
        deadline_missed: bool = False,
    ) -> ShieldResult:
        """Returns the safe command for ``action`` given the current state. Never raises.

        ``now`` is ``time.monotonic()`` (the clock of ``RobotState.timestamp``);
        ``frame_ages`` maps camera name → age of the frame used (``inf`` when missing).
        """
        self.counters.ticks += 1
        reasons: list[str] = self._watchdog(state, now, frame_ages or {}, deadline_missed)
        position = self._position(state) if not reasons else None
        if position is None and not reasons:
            reasons.append("state_invalid")
        vector = None if reasons else self._coerce(action, reasons)
        if vector is None:
            return self._hold(reasons)
        command = self._clip_motion(vector, position, reasons)
        self._apply_gripper(command, reasons)
        sent = self._in_sent_dtype(command, position)
        if self._gripper is not None:
            self._last_gripper = float(sent[self._gripper])
        for reason in reasons:
            self._count(reason)
        return ShieldResult(command=sent, held=False, reasons=tuple(reasons))

    def hold_command(self) -> np.ndarray:
        """Returns the zero-motion command that keeps the gripper as last commanded (float32)."""
        command = np.zeros(self.config.action_dim, dtype=np.float32)
        if self._gripper is not None:
            command[self._gripper] = self._last_gripper
        return np.clip(command, self._sent_low32, self._sent_high32)

    def clip_to_action_space(self, values: np.ndarray) -> np.ndarray:
        """Returns ``values`` as float32 clipped into the action space exactly (every element
        of the result, read as a float64, lies within the configured bounds)."""
        return np.clip(np.asarray(values, dtype=np.float32), self._action_low32, self._action_high32)

    def hold(self, reason: str) -> ShieldResult:
        """Returns (and counts) a hold for a reason decided outside the shield (pause, e-stop…)."""
        return self._hold([reason])

    # ------------------------------------------------------------------ steps
    def _watchdog(
        self, state: RobotState | None, now: float, frame_ages: dict[str, float], missed: bool
    ) -> list[str]:
        reasons: list[str] = []
        if missed and self.config.hold_on_deadline_miss:
            reasons.append("deadline_missed")
        elif missed:
            self._count("deadline_missed", held=False)
        if state is None or not isinstance(state, RobotState):
            reasons.append("state_missing")
        else:
            age = _as_float(now) - _as_float(state.timestamp)
            if not (math.isfinite(age) and age <= self.config.max_state_age_s):
                reasons.append("state_stale")
        try:
            ages = [_as_float(a) for a in frame_ages.values()]
        except (AttributeError, TypeError):
            ages = [math.inf]
        if any(not (math.isfinite(a) and a <= self.config.max_frame_age_s) for a in ages):
            reasons.append("frame_stale")
        return reasons

    def _position(self, state: RobotState | None) -> np.ndarray | None:
        try:
            position = np.asarray(state.ee_position, dtype=np.float64)  # type: ignore[union-attr]
        except (TypeError, ValueError, AttributeError):
            return None
        if position.shape != (3,) or not np.all(np.isfinite(position)):
            return None
        return position

    def _coerce(self, action: Any, reasons: list[str]) -> np.ndarray | None:
        if (not isinstance(action, np.ndarray) or action.shape != (self.config.action_dim,)
                or action.dtype.kind not in "fiu"):
            reasons.append("malformed")
            return None
        vector = action.astype(np.float64)
        if not np.all(np.isfinite(vector)):
            reasons.append("non_finite")
            return None
        return vector

    def _clip_motion(self, vector: np.ndarray, position: np.ndarray, reasons: list[str]) -> np.ndarray:
        clipped = np.clip(vector, self._low, self._high)
        if np.any(clipped != vector):
            reasons.append("action_clip")
        scale = self.config.position_scale
        wanted = clipped[self._axes] * scale
        target = np.clip(position + wanted, self._ws_low, self._ws_high)
        in_box = target == position + wanted
        if not np.all(in_box):
            reasons.append("workspace_clip")
        # Limit the move towards the (clipped) target: shrinking a move that starts inside
        # the box keeps the target inside it, and from outside it only walks back slowly.
        # An axis the box did not touch keeps its own delta: (position + delta) - position
        # loses the low bits of a small delta far from the origin.
        delta = np.where(in_box, wanted, target - position)
        limited = np.clip(delta, -self._max_step, self._max_step)
        if np.any(limited != delta):
            reasons.append("step_clip")
        distance = float(np.linalg.norm(limited))
        if distance > self._max_dist:
            limited = limited * (self._max_dist / distance)
            reasons.append("speed_clip")
        # Only axes something limited are rewritten; the others keep the action's own value.
        changed = limited != wanted
        clipped[self._axes] = np.where(changed, limited / scale, clipped[self._axes])
        # Re-clip: rounding must never push an element past the bounds.
        return np.clip(clipped, self._low, self._high)

    def _in_sent_dtype(self, command: np.ndarray, position: np.ndarray) -> np.ndarray:
        """Returns ``command`` as the float32 vector sent, inside every limit exactly.

        The float64 clips above hold for the float64 command; rounding to float32 may move an
        element past a bound by half an ulp (float32(-0.3) < -0.3). So: clip in float32 to the
        float32 bounds inside the limits, then re-check the end-effector limits (step, speed,
        workspace) with the float32 values, computed as a robot would (``position +
        float64(command) * scale``), and step any offending element one ulp towards zero
        until none offends (towards zero shrinks the move, and zero is always allowed)."""
        sent = np.clip(command.astype(np.float32), self._sent_low32, self._sent_high32)
        axes, scale, max_dist = self._axes_list, self.config.position_scale, self._max_dist
        pos = position.tolist()
        for _ in range(8):
            values = [float(sent[a]) for a in axes]  # exact: float32 -> float64
            delta = [v * scale for v in values]
            bad = [d != 0 and (abs(d) > m or (d > 0 and p + d > hi) or (d < 0 and p + d < lo))
                   for d, m, p, lo, hi in zip(delta, self._max_step_list, pos, self._ws_low_list, self._ws_high_list)]
            squared = delta[0] * delta[0] + delta[1] * delta[1] + delta[2] * delta[2]
            if squared > max_dist * max_dist * (1 - 1e-9) and float(np.linalg.norm(delta)) > max_dist:
                bad = [d != 0 for d in delta]  # near the bound: the exact test, as _clip_motion computes it
            if not any(bad):
                return sent
            for a, b in zip(axes, bad):
                if b:
                    sent[a] = np.nextafter(sent[a], np.float32(0))
        sent[self._axes] = 0.0  # cannot happen (each step shrinks the move); never send an unchecked one
        return sent

    def _apply_gripper(self, command: np.ndarray, reasons: list[str]) -> None:
        if self._gripper is None:
            return
        value = float(command[self._gripper])
        limited = self._clip_gripper_value(value)
        if limited != value:
            reasons.append("gripper_clip")
        command[self._gripper] = limited
        self._last_gripper = limited

    def _clip_gripper_value(self, value: float) -> float:
        lo = max(self.config.gripper_min, self._low[self._gripper]) if self._gripper is not None else 0.0
        hi = min(self.config.gripper_max, self._high[self._gripper]) if self._gripper is not None else 0.0
        if lo > hi:  # disjoint ranges: the action space wins (it is what the robot accepts)
            lo = hi = float(np.clip(self.config.gripper_min, self._low[self._gripper], self._high[self._gripper]))
        return float(min(max(value, lo), hi))

    def _hold(self, reasons: list[str]) -> ShieldResult:
        self.counters.held += 1
        for reason in reasons:
            self._count(reason)
        return ShieldResult(command=self.hold_command(), held=True, reasons=tuple(reasons))

    def _count(self, reason: str, *, held: bool = True) -> None:
        """Counts ``reason`` and logs it (rate-limited): a hold at WARNING, the rest at INFO
        (a clip, or a missed deadline that the settings do not hold for: lock-step)."""
        by_reason = self.counters.by_reason
        by_reason[reason] = by_reason.get(reason, 0) + 1
        now = time.monotonic()
        last = self._last_log.get(reason)
        if last is not None and now - last < self.config.log_interval_s:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        self._last_log[reason] = now
        suppressed = self._suppressed.pop(reason, 0)
        level = logging.WARNING if held and reason in HOLD_REASONS else logging.INFO
        logger.log(level, "shield: %s (total %d, %d more since last report)",
                   reason, by_reason[reason], suppressed)


def _inward_float32(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns the float32 bounds just inside ``[low, high]`` (float64): the largest float32
    range whose every value lies in it. Where the range holds no float32, both are the float32
    nearest its middle (the only case a float32 command cannot meet a bound exactly)."""
    lo = low.astype(np.float32)
    hi = high.astype(np.float32)
    lo = np.where(lo.astype(np.float64) < low, np.nextafter(lo, np.float32(np.inf)), lo)
    hi = np.where(hi.astype(np.float64) > high, np.nextafter(hi, np.float32(-np.inf)), hi)
    empty = lo > hi
    if empty.any():
        middle = ((low + high) / 2).astype(np.float32)
        lo, hi = np.where(empty, middle, lo), np.where(empty, middle, hi)
    return lo.astype(np.float32), hi.astype(np.float32)


def _as_float(value: Any) -> float:
    """Returns ``value`` as a float, NaN when it is not a real number."""
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return math.nan
