"""Load a directory of demo files: split forward/backward, derive the observation spec.

Every ``*.npz`` in the directory is read with :func:`protocol.demos.load_demos`; its
``meta.direction`` says which set it joins. All files must agree on the observation keys,
dtypes and per-step shapes and on the action dimension: that agreement *is* the spec a
runtime's hello is checked against.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from learner.errors import LearnerError
from protocol.spaces import ObsSpec
from protocol.demos import DemoFormatError, Demos, concatenate, load_demos
from protocol.spaces import ArraySpec, Space

logger = logging.getLogger(__name__)


class DemoDirError(LearnerError):
    """The demo directory is missing, empty, unreadable or inconsistent; the text names the file."""


@dataclass(frozen=True, kw_only=True)
class DemoSet:
    """The demos a learner trains with, and the spaces they imply."""

    forward: Demos
    """Forward demos (required: VICE's positives come from them)."""
    backward: Demos | None
    """Backward demos, or None when the directory has none."""
    observation_space: Space
    """Observation name → per-step wire spec."""
    action_space: ArraySpec
    """Per-step action spec, ``float32 (A,)``."""
    task: str
    """The task the demos are of."""

    @property
    def obs_spec(self) -> ObsSpec:
        """Returns the spec in :mod:`learner.networks` form: name → (shape, dtype)."""
        return {k: (tuple(v.shape), v.dtype) for k, v in self.observation_space.items()}

    @property
    def action_dim(self) -> int:
        """Returns A."""
        return int(self.action_space.shape[0])


def _space_of(demos: Demos) -> tuple[Space, ArraySpec]:
    obs = {k: ArraySpec(dtype=v.dtype.name, shape=tuple(int(d) for d in v.shape[1:]))
           for k, v in sorted(demos.observations.items())}
    return obs, ArraySpec(dtype="float32", shape=(demos.action_dim,))


def describe_space(space: Space) -> str:
    """Returns ``name: dtype (shape)`` entries joined by ``, `` (for error messages)."""
    return ", ".join(f"{k}: {v.dtype} {tuple(v.shape)}" for k, v in sorted(space.items()))


def load_demo_dir(directory: str | Path) -> DemoSet:
    """Reads every ``*.npz`` demo file in ``directory`` (not recursive); blocks on the disk.

    Returns the forward and backward sets (each concatenated over its files) and their
    spaces. Raises DemoDirError when the directory has no readable demo file, no forward
    demos, a file breaks the format, or files disagree on spaces or task.
    """
    path = Path(directory)
    files = sorted(path.glob("*.npz")) if path.is_dir() else []
    if not files:
        raise DemoDirError(f"--demos {path}: no *.npz demo files there")
    parts: dict[str, list[Demos]] = {"forward": [], "backward": []}
    spaces: tuple[Space, ArraySpec] | None = None
    task = None
    for file in files:
        try:
            demos = load_demos(file)
        except DemoFormatError as e:
            raise DemoDirError(str(e)) from e
        space = _space_of(demos)
        if spaces is None:
            spaces, task = space, demos.meta.task
        elif space != spaces:
            raise DemoDirError(f"{file}: spaces {describe_space(space[0])}, action {space[1].shape} differ "
                               f"from {files[0].name}'s {describe_space(spaces[0])}, action {spaces[1].shape}")
        elif demos.meta.task != task:
            raise DemoDirError(f"{file}: task {demos.meta.task!r} differs from {files[0].name}'s {task!r}")
        parts[demos.meta.direction].append(demos)
        logger.info("demos: %s: %s, %d episodes, %d steps", file.name, demos.meta.direction,
                    demos.num_episodes, demos.num_steps)
    if not parts["forward"]:
        raise DemoDirError(f"--demos {path}: no forward demos (meta.direction == 'forward')")
    assert spaces is not None and task is not None
    try:
        forward = concatenate(parts["forward"])
        backward = concatenate(parts["backward"]) if parts["backward"] else None
    except DemoFormatError as e:
        raise DemoDirError(f"--demos {path}: {e}") from e
    return DemoSet(forward=forward, backward=backward, observation_space=spaces[0], action_space=spaces[1],
                   task=task)
