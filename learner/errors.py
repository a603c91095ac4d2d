"""The learner's exception family: every error the learner raises on purpose is a `LearnerError`."""

import logging

logger = logging.getLogger(__name__)


class LearnerError(Exception):
    """Base class of every error raised on purpose by the `learner` package."""


class ReplayError(LearnerError):
    """A replay buffer was asked for something it cannot give (bad shapes, too few transitions)."""


class DiscriminatorError(LearnerError):
    """A discriminator was built or fed inconsistently (no image/vector inputs, wrong batch)."""


class CheckpointError(LearnerError):
    """A checkpoint could not be written, or none readable was found; the message names the file."""


class TrainerError(LearnerError):
    """The trainer was configured or fed inconsistently (unknown agent, mismatched demo arrays)."""


class ServiceError(LearnerError):
    """The learner service cannot start or stopped on a fault (the text says which part)."""
