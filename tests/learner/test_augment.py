"""Random shift: exact integer crops of the replicate-padded image (DrQ-v2)."""

import pytest
import torch
from torch.nn import functional as F

from learner.augment import RandomShift, random_shift

torch.set_num_threads(1)


def test_shift_is_a_crop_of_the_replicate_padded_image():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 12, 10), dtype=torch.uint8, generator=g)
    out = random_shift(x, 2, torch.Generator().manual_seed(1))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    padded = F.pad(x.float(), (2, 2, 2, 2), mode="replicate")
    crops = {
        (dy, dx): padded[:, :, dy:dy + 12, dx:dx + 10] for dy in range(5) for dx in range(5)
    }
    for i in range(16):
        assert any(torch.equal(out[i].float(), c[i]) for c in crops.values()), i


def test_shifts_vary_across_the_batch_and_cover_the_range():
    x = torch.arange(20 * 20, dtype=torch.float32).view(1, 1, 20, 20).repeat(400, 1, 1, 1)
    out = random_shift(x, 4, torch.Generator().manual_seed(0))
    # the centre pixel (10, 10) moves to (10+dy, 10+dx): recover the shifts
    centre = out[:, 0, 10, 10]
    dy = torch.div(centre, 20, rounding_mode="floor") - 10
    dx = centre % 20 - 10
    assert set(dy.long().tolist()) == set(range(-4, 5))
    assert set(dx.long().tolist()) == set(range(-4, 5))


def test_module_touches_only_images():
    obs = {"cam": torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8), "proprio": torch.randn(4, 5)}
    out = RandomShift(pad=2)(obs)
    assert out["proprio"] is obs["proprio"]
    assert out["cam"].shape == obs["cam"].shape
    assert torch.equal(RandomShift(pad=0)(obs)["cam"], obs["cam"])
    with pytest.raises(ValueError, match="pad"):
        RandomShift(pad=-1)
