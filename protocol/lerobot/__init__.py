"""Demo sets to and from LeRobotDataset v3 (``pip install 'resetfree[lerobot]'``).

LeRobotDataset v3.0 — chunked parquet frames, MP4 videos and ``meta/info.json`` — is the
format of the Hugging Face hub and of LeRobot's recorder and viewers. The reading and
writing go through the real library (the ``lerobot-dataset`` distribution, imported as
``ledataset``, lazily: the core install does not need it); this module only maps fields.

Mapping (docs/demos.md, "LeRobotDataset"), one LeRobot frame per resetfree row:

==============================================  ===============================================
resetfree (:class:`~protocol.demos.Demos`)      LeRobot feature (per frame)
==============================================  ===============================================
``observations["state"]`` (state mode)          ``observation.state`` float32 (D,)
``observations["proprio"]`` (pixel mode)        ``observation.state`` float32 (P,)
``observations[cam]`` uint8 (3, H, W)           ``observation.images.<cam>`` video (H, W, 3)
other vector observations ``<name>``            ``observation.<name>`` float32
``actions``                                     ``action`` float32 (A,)
``rewards``                                     ``next.reward`` float32 (1,)
``terminals`` of the next row (own, last row)   ``next.done`` bool (1,)
``episode_success`` (on the episode's last row) ``next.success`` bool (1,)
``is_last`` (final observation, padding action) ``resetfree.is_last`` bool (1,)
episode boundaries, ``meta.task/direction``     ``episode_index``; the episode's task string
:class:`~protocol.demos.DemoMeta`, directions   ``meta/resetfree.json`` (beside ``info.json``)
==============================================  ===============================================

A resetfree episode of ``T`` transitions has ``T + 1`` rows, so it travels as ``T + 1``
frames: the last one holds the final observation, a zero action and ``resetfree.is_last``.
A dataset recorded by LeRobot has no such frame (every frame has a real action): on import
the last frame of each episode becomes the final observation and its action is dropped.
Images are lossy (the library's video codec), everything else round-trips exactly.

Frames of videos are decoded with PyAV (``av``, which the library itself encodes with):
the library's own decoders need ``torchcodec`` or a torchvision that still has
``io.VideoReader``, neither of which the extra can rely on.
"""

from protocol.lerobot.common import (ACTION, DEFAULT_VCODEC, DONE, IMAGE_PREFIX, INSTALL_HINT, IS_LAST, REWARD,
                                     SIDECAR, SIDECAR_VERSION, STATE, SUCCESS, SUPPORTED_VERSION, LeRobotError,
                                     LeRobotFeatureError, LeRobotUnavailableError, LeRobotVersionError)
from protocol.lerobot.reader import import_lerobot
from protocol.lerobot.writer import TaskText, default_task_text, export_lerobot

__all__ = [
    "export_lerobot", "import_lerobot", "default_task_text", "TaskText",
    "LeRobotError", "LeRobotUnavailableError", "LeRobotVersionError", "LeRobotFeatureError",
    "SUPPORTED_VERSION", "INSTALL_HINT", "DEFAULT_VCODEC", "SIDECAR", "SIDECAR_VERSION",
    "STATE", "IMAGE_PREFIX", "ACTION", "REWARD", "DONE", "SUCCESS", "IS_LAST",
]
