"""What both directions share: the feature names and other constants, the error classes, and
the lazy loader of the library (:func:`_library`, :func:`_quiet`, :func:`_version`)."""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from protocol.demos import DemoFormatError

logger = logging.getLogger(__name__)

SUPPORTED_VERSION = "v3.0"
"""The LeRobotDataset codebase version read and written."""
INSTALL_HINT = "pip install 'resetfree[lerobot]' (or ./bootstrap --lerobot)"

STATE = "observation.state"
IMAGE_PREFIX = "observation.images."
ACTION = "action"
REWARD = "next.reward"
DONE = "next.done"
SUCCESS = "next.success"
IS_LAST = "resetfree.is_last"
SIDECAR = "meta/resetfree.json"
"""resetfree's own metadata beside ``meta/info.json`` (LeRobot ignores unknown files)."""
SIDECAR_VERSION = 1
DEFAULT_VCODEC = "libsvtav1"
"""LeRobot's own default (AV1, smallest files); ``h264`` plays in more video players."""


class LeRobotError(DemoFormatError):
    """A LeRobotDataset could not be read or written as demos; the text names the file or feature."""


class LeRobotUnavailableError(LeRobotError, ImportError):
    """The ``lerobot`` extra is not installed, or installed but cannot be imported."""


class LeRobotVersionError(LeRobotError):
    """The dataset's ``codebase_version`` is not :data:`SUPPORTED_VERSION`.

    Attributes:
        found: the version in the dataset's ``meta/info.json``.
    """

    def __init__(self, path: Path, found: str) -> None:
        hint = (" — convert it with LeRobot's convert_dataset_v21_to_v30 script"
                if found.startswith("v2") else "")
        super().__init__(f"{path}: LeRobotDataset {found}; resetfree reads {SUPPORTED_VERSION} only{hint}")
        self.found = found


class LeRobotFeatureError(LeRobotError):
    """The dataset's features are missing, malformed, or do not fit the demos or the task."""


# ---------------------------------------------------------------------- the library
def _library() -> ModuleType:
    """Returns ``ledataset.datasets.lerobot_dataset``; raises LeRobotUnavailableError."""
    try:
        return importlib.import_module("ledataset.datasets.lerobot_dataset")
    except ImportError as e:
        raise LeRobotUnavailableError(f"LeRobotDataset support needs the lerobot extra: {INSTALL_HINT} ({e})") from e
    except RuntimeError as e:  # torchvision built for another torch raises this while registering its ops
        raise LeRobotUnavailableError(
            f"the lerobot extra is installed but does not import ({e}); its torchvision must be the build "
            f"of the installed torch {_version('torch')} (./bootstrap --lerobot installs it)") from e


def _quiet() -> Any:
    """Returns the library's context manager that hides its per-episode progress bars."""
    return importlib.import_module("ledataset.utils.utils").SuppressProgressBars()


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


@contextlib.contextmanager
def keep_scheduling() -> Iterator[None]:
    """Restores the calling thread's scheduling policy and priority on exit.

    The library's default video encoder (SVT-AV1, through PyAV) switches the thread that
    encodes to ``SCHED_FIFO`` 99 when it may (as root) and never switches it back; a thread left
    there starves every same-priority thread it shares a core with. Off Linux a no-op.
    """
    if not hasattr(os, "sched_getscheduler"):
        yield
        return
    policy, priority = os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
    try:
        yield
    finally:
        if (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority) != (policy, priority):
            logger.info("the video encoder changed this thread's scheduling; restoring it")
            os.sched_setscheduler(0, policy, os.sched_param(priority))

