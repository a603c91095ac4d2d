"""Where the learner runs: its torch device (``--device``) and its CPUs (``--cpus``)."""

from __future__ import annotations

import logging
import os

import torch

from learner.errors import ServiceError

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """Returns the torch device for ``auto`` / ``cpu`` / ``cuda[:N]``; ServiceError if CUDA is absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ServiceError(f"--device {name}: CUDA is not available here")
    return torch.device(name)


def parse_cpus(text: str) -> tuple[int, ...]:
    """Returns the CPUs of a list such as ``"0"`` or ``"0,2"`` (empty text: none = all).
    Raises ValueError naming the list when an entry is not a CPU number."""
    try:
        cpus = tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError as e:
        raise ValueError(f"CPU list {text!r}: entries must be CPU numbers, e.g. '0' or '0,2'") from e
    if any(c < 0 for c in cpus):
        raise ValueError(f"CPU list {text!r}: CPU numbers are >= 0")
    return cpus


def pin_process(cpus: tuple[int, ...]) -> bool:
    """Restricts every thread of this process, and those it starts later, to ``cpus``.

    Returns whether the affinity was set (False for an empty ``cpus``, off Linux, or when the
    OS refuses, which is logged). Raises ServiceError when none of ``cpus`` exists here.
    """
    if not cpus:
        return False
    available = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    if available and not set(cpus) & available:
        raise ServiceError(f"service.cpus {sorted(cpus)}: none of them is available here ({sorted(available)})")
    try:
        # Threads started before this (the asyncio loop's, ZeroMQ's) are moved one by one.
        for tid in map(int, os.listdir("/proc/self/task")):
            os.sched_setaffinity(tid, cpus)
    except (OSError, AttributeError) as e:
        logger.warning("learner: cannot pin to CPUs %s: %s", sorted(cpus), e)
        return False
    logger.info("learner: pinned to CPUs %s", sorted(cpus))
    return True
