"""The metadata of a demo file (``docs/demos.md``): :class:`DemoMeta`, stored as a JSON string
under the ``meta`` key, and :class:`DemoFormatError`, the one error of the demo format.

What a demo set is about — task, direction, observation mode, cameras, image size, source,
creation time, format version, free notes — apart from its arrays (:mod:`protocol.demos`).
Standard library only.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version written into every file; :func:`~protocol.demos.load_demos` refuses any other."""

_DIRECTIONS = ("forward", "backward")
_OBS_MODES = ("state", "pixels")

MetaValue = str | int | float | bool
"""A value allowed in :attr:`DemoMeta.notes` (JSON scalars)."""


class DemoFormatError(ValueError):
    """A demo file or a :class:`~protocol.demos.Demos` value breaks the format; the message names the key."""


@dataclass(frozen=True, kw_only=True)
class DemoMeta:
    """What a demo set is about: stored as JSON under the ``meta`` key."""

    task: str
    """Task name (``tabletop``, ``door``, ``peg``, ``cube``, or a real-robot task name)."""
    direction: str
    """``forward`` (do the task) or ``backward`` (undo it)."""
    obs_mode: str
    """``state`` (one ``state`` vector) or ``pixels`` (camera images + ``proprio``)."""
    cameras: tuple[str, ...] = ()
    """Image keys of ``observations`` in pixel mode, in observation order; empty in state mode."""
    image_size: int | None = None
    """Side of the square images in pixel mode; ``None`` in state mode."""
    source: str = "unknown"
    """Where the demos come from: ``expert``, ``earl``, ``teleop``, ... (free text)."""
    created: str = ""
    """ISO-8601 UTC creation time; filled in with the current time when empty."""
    version: int = FORMAT_VERSION
    """Format version of the file."""
    notes: dict[str, MetaValue] = field(default_factory=dict)
    """Free JSON scalars (seed, noise, the original file, ...)."""

    def __post_init__(self) -> None:
        if not self.task:
            raise DemoFormatError("meta.task: must be a non-empty string")
        if self.direction not in _DIRECTIONS:
            raise DemoFormatError(f"meta.direction: must be one of {_DIRECTIONS}, got {self.direction!r}")
        if self.obs_mode not in _OBS_MODES:
            raise DemoFormatError(f"meta.obs_mode: must be one of {_OBS_MODES}, got {self.obs_mode!r}")
        if self.version != FORMAT_VERSION:
            raise DemoFormatError(f"meta.version: this code reads version {FORMAT_VERSION}, got {self.version}")
        object.__setattr__(self, "cameras", tuple(str(c) for c in self.cameras))
        if self.obs_mode == "pixels":
            if not self.cameras:
                raise DemoFormatError("meta.cameras: pixel demos need at least one camera")
            if self.image_size is None or self.image_size <= 0:
                raise DemoFormatError(f"meta.image_size: pixel demos need a positive size, got {self.image_size}")
        if not self.created:
            now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            object.__setattr__(self, "created", now)
        for key, value in self.notes.items():
            if not isinstance(value, (str, int, float, bool)):
                raise DemoFormatError(f"meta.notes[{key!r}]: must be a JSON scalar, got {type(value).__name__}")

    def to_json(self) -> str:
        """Returns the metadata as a JSON object string."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DemoMeta":
        """Parses :meth:`to_json` output.

        Raises:
            DemoFormatError: for invalid JSON, unknown or missing fields, or bad values.
        """
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise DemoFormatError(f"meta: not valid JSON ({e})") from e
        if not isinstance(raw, dict):
            raise DemoFormatError("meta: must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise DemoFormatError(f"meta: unknown fields {sorted(unknown)}")
        try:
            return cls(**{**raw, "cameras": tuple(raw.get("cameras", ()))})
        except TypeError as e:
            raise DemoFormatError(f"meta: {e}") from e
