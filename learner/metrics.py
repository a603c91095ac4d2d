"""Learner observability: TensorBoard scalars, a console progress line, structured logs.

Trainer metrics arrive named by their source (``forward/losses/critic``, ``vice/accuracy``,
``charts/env_steps``); :func:`group_scalars` renames them into the groups the dashboards
use — ``losses/…``, ``q/…``, ``disc/…`` (accuracy, logits on positives/negatives),
``reward/…``, ``charts/…`` and ``timing/…`` — CleanRL's convention.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

_AGENT_PREFIXES = ("forward", "backward")
_DISC_PREFIXES = ("vice", "medal")


def _agent_name(agent: str, rest: str) -> str:
    group, _, name = rest.partition("/")
    if not name:  # e.g. forward/skipped_nonfinite
        return f"charts/{agent}_{group}"
    if group == "values":
        if name == "reward_mean":
            return f"reward/{agent}_mean"
        return f"q/{agent}_{name.removeprefix('q_')}"
    return f"{group}/{agent}_{name}"


def group_scalars(metrics: Mapping[str, float]) -> dict[str, float]:
    """Returns ``metrics`` renamed into the dashboard groups; non-finite values are kept
    (they are what one needs to see). Unknown names pass through unchanged."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        head, _, rest = key.partition("/")
        if head in _AGENT_PREFIXES and rest:
            out[_agent_name(head, rest)] = float(value)
        elif head in _DISC_PREFIXES and rest:
            out[f"disc/{head}_{rest}"] = float(value)
        else:
            out[key] = float(value)
    return out


class Metrics:
    """Writes grouped scalars to TensorBoard and logs a progress line every few seconds.

    ``log_dir`` None disables TensorBoard (tests). Not thread-safe: one owner (the training
    thread). Writes are buffered by SummaryWriter; ``close`` flushes (blocks on the disk).
    """

    def __init__(self, log_dir: Path | None, *, progress_every_s: float = 5.0) -> None:
        self._writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # heavy import, only when used

            self._writer = SummaryWriter(log_dir=str(log_dir))
        self.progress_every_s = progress_every_s
        self._next_progress = time.monotonic() + progress_every_s

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        """Adds every metric (grouped) at ``step`` (env steps). Does not block on the disk."""
        if self._writer is None:
            return
        for name, value in group_scalars(metrics).items():
            self._writer.add_scalar(name, value, global_step=step)

    def progress(self, figures: Mapping[str, float | int | bool]) -> bool:
        """Logs one INFO progress line (and a structured ``extra``) when it is due.

        Returns whether a line was logged.
        """
        now = time.monotonic()
        if now < self._next_progress:
            return False
        self._next_progress = now + self.progress_every_s

        def fmt(v: float | int | bool) -> str:
            return f"{v:.3g}" if isinstance(v, float) and math.isfinite(v) and not v.is_integer() else str(v)

        logger.info("progress: %s", " ".join(f"{k}={fmt(v)}" for k, v in figures.items()),
                    extra={"progress": dict(figures)})
        return True

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer. Idempotent; blocks on the disk."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
