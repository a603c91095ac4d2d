"""DrQ-v2's random-shift augmentation, done as one integer gather on uint8 frames.

DrQ-v2 pads by ``pad`` pixels (replicate) and shifts each image by an integer offset in
``[0, 2·pad]`` through ``grid_sample``. Its grid is aligned to whole pixels, so the result is
exactly an integer crop of the replicate-padded image — which is the same as reading the
original image at clamped indices. We do that directly: one ``gather`` per image key, on the
uint8 tensor (4× less memory traffic than float), no padding buffer, no interpolation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)


def random_shift(images: Tensor, pad: int, generator: torch.Generator | None = None) -> Tensor:
    """Shifts each image of ``(B, C, H, W)`` by its own random integer offset in ``[-pad, pad]``.

    Borders replicate the edge pixels (DrQ-v2's replicate padding). Returns a new tensor of
    the same dtype and shape; does not block beyond the gather itself.
    """
    if images.dim() != 4:
        raise ValueError(f"random_shift expects (B, C, H, W), got {tuple(images.shape)}")
    b, c, h, w = images.shape
    if pad == 0:
        return images.clone()
    dev = images.device
    shifts = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator, device="cpu").to(dev) - pad
    rows = (torch.arange(h, device=dev).unsqueeze(0) + shifts[:, :1]).clamp_(0, h - 1)  # (B, H)
    cols = (torch.arange(w, device=dev).unsqueeze(0) + shifts[:, 1:]).clamp_(0, w - 1)  # (B, W)
    index = (rows.unsqueeze(2) * w + cols.unsqueeze(1)).view(b, 1, h * w).expand(b, c, h * w)
    return images.reshape(b, c, h * w).gather(2, index).view(b, c, h, w)


class RandomShift(nn.Module):
    """Applies :func:`random_shift` to every image key of an observation dict.

    Image keys are the 4-D tensors (``(B, C, H, W)``); vectors pass through untouched. Each
    key and each call draws independent shifts (DrQ-v2 augments obs and next_obs apart).
    """

    def __init__(self, pad: int = 4) -> None:
        super().__init__()
        if pad < 0:
            raise ValueError(f"RandomShift.pad must be >= 0, got {pad}")
        self.pad = pad

    def forward(
        self, obs: Mapping[str, Tensor], generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Returns a new dict with every image key shifted."""
        return {
            k: random_shift(v, self.pad, generator) if v.dim() == 4 else v for k, v in obs.items()
        }
