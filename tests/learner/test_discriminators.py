"""Discriminators: spectral norm everywhere, mixup labels mixed like inputs, learning, sharing."""

import pytest
import torch
from torch import nn

from learner.discriminators import Discriminator, DiscriminatorConfig, mixup
from learner.errors import DiscriminatorError
from learner.networks import Encoder, NetworkConfig

torch.set_num_threads(1)

PIX = {"wrist": ((3, 16, 16), "uint8"), "top": ((3, 16, 16), "uint8"), "proprio": ((3,), "float32")}


def pix_obs(n: int, bright: bool) -> dict[str, torch.Tensor]:
    lo, hi = (150, 255) if bright else (0, 100)
    return {
        "wrist": torch.randint(lo, hi, (n, 3, 16, 16), dtype=torch.uint8),
        "top": torch.randint(0, 255, (n, 3, 16, 16), dtype=torch.uint8),
        "proprio": torch.randn(n, 3),
    }


def test_spectral_norm_on_every_layer_of_its_own() -> None:
    disc = Discriminator(PIX, DiscriminatorConfig(cameras=("wrist",), hidden_dim=32, feature_dim=16))
    layers = [m for m in disc.net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert len(layers) == 4 + 1 + 2  # four convs, the projection, the two head layers
    for m in layers:
        assert torch.nn.utils.parametrize.is_parametrized(m, "weight")
    assert disc.net.encoder.image_keys == ("wrist",)


def test_spectral_norm_can_be_switched_off() -> None:
    disc = Discriminator(PIX, DiscriminatorConfig(spectral_norm=False, hidden_dim=8, feature_dim=8))
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in disc.net.modules())


def test_mixup_mixes_labels_like_inputs() -> None:
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    labels = torch.tensor([1.0, 0.0, 0.0])
    lam = torch.tensor([0.25, 0.5, 1.0])
    perm = torch.tensor([1, 0, 2])
    hm, ym = mixup(h, labels, lam, perm)
    assert torch.allclose(hm, torch.tensor([[0.25, 0.75], [0.5, 0.5], [2.0, 2.0]]))
    assert torch.allclose(ym, torch.tensor([0.25, 0.5, 0.0]))
    # The label of each mixed row is the same convex combination as its input: for a
    # one-hot "label coordinate" carried in the input, both agree exactly.
    h2 = torch.cat([h, labels.unsqueeze(1)], dim=1)
    hm2, ym2 = mixup(h2, labels, lam, perm)
    assert torch.allclose(hm2[:, -1], ym2)


def test_learns_to_separate_and_reports_metrics() -> None:
    torch.manual_seed(0)
    disc = Discriminator(PIX, DiscriminatorConfig(cameras=("wrist",), use_proprio=False, batch_size=64,
                                                  hidden_dim=32, feature_dim=16, lr=1e-3))
    for _ in range(60):
        m = disc.update(pix_obs(32, True), pix_obs(32, False))
    assert set(m) == {"loss", "accuracy", "logits_pos", "logits_neg", "skipped_nonfinite"}
    assert m["accuracy"] > 0.9 and m["logits_pos"] > m["logits_neg"]
    logits = disc.logits(pix_obs(16, True))
    assert logits.shape == (16,)
    assert logits.mean() > disc.logits(pix_obs(16, False)).mean()


def test_shared_encoder_is_used_detached() -> None:
    torch.manual_seed(1)
    spec = {"state": ((4,), "float32")}
    enc = Encoder(PIX, NetworkConfig(feature_dim=8, conv_channels=4))
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    disc = Discriminator(PIX, DiscriminatorConfig(hidden_dim=8), shared_encoder=enc)
    assert disc.net.encoder is None
    assert not any(k.startswith("encoder") for k in disc.state_dict()["net"])
    disc.update(pix_obs(8, True), pix_obs(8, False))
    for k, v in enc.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in enc.parameters())
    # State mode: the discriminator's own "encoder" is the identity on the state vector.
    d2 = Discriminator(spec, DiscriminatorConfig(hidden_dim=8))
    assert d2.net.encoder.repr_dim == 4


def test_nonfinite_loss_skips_the_step() -> None:
    spec = {"state": ((2,), "float32")}
    disc = Discriminator(spec, DiscriminatorConfig(hidden_dim=8, mixup_alpha=0.0))
    before = {k: v.clone() for k, v in disc.net.state_dict().items()}
    m = disc.update({"state": torch.full((4, 2), float("nan"))}, {"state": torch.zeros(4, 2)})
    assert m["skipped_nonfinite"] == 1.0 and disc.num_updates == 0
    for k, v in disc.net.state_dict().items():
        if "_u" not in k and "_v" not in k:  # power-iteration vectors move on every forward
            assert torch.equal(v, before[k]), k


def test_bad_inputs_raise() -> None:
    with pytest.raises(DiscriminatorError):
        Discriminator(PIX, DiscriminatorConfig(cameras=("nope",)))
    disc = Discriminator({"state": ((2,), "float32")}, DiscriminatorConfig(hidden_dim=8))
    with pytest.raises(DiscriminatorError):
        disc.update({"state": torch.zeros(0, 2)}, {"state": torch.zeros(3, 2)})
    with pytest.raises(ValueError, match="batch_size"):
        DiscriminatorConfig(batch_size=3)


def _state_gap(normalize: bool) -> float:
    """Trains a spectral-norm state discriminator on states 5 cm apart (door-like scale)
    and returns the logit gap between the two classes."""
    torch.manual_seed(2)
    spec = {"state": ((3,), "float32")}
    disc = Discriminator(spec, DiscriminatorConfig(hidden_dim=32, lr=1e-3, mixup_alpha=0.0,
                                                   normalize_vectors=normalize))

    def states(n: int, x: float) -> dict[str, torch.Tensor]:
        return {"state": torch.tensor([x, 0.5, 0.1]) + 0.005 * torch.randn(n, 3)}

    disc.set_input_stats({"state": torch.cat([states(64, 0.0)["state"], states(64, 0.05)["state"]])})
    for _ in range(300):
        disc.update(states(64, 0.0), states(64, 0.05))
    return float(disc.logits(states(256, 0.0)).mean() - disc.logits(states(256, 0.05)).mean())


def test_standardised_states_give_spectral_norm_a_usable_logit_range() -> None:
    # 1-Lipschitz layers on raw metres: the gap can be at most |Δs| = 0.05. In demo-std
    # units (std 0.025 along x) the same states are ~2 units apart and the gap opens up.
    raw, standardised = _state_gap(False), _state_gap(True)
    assert raw < 0.06
    assert standardised > 1.0


def test_input_stats_are_saved_floored_and_restored() -> None:
    spec = {"state": ((2,), "float32"), "img": ((3, 16, 16), "uint8")}
    cfg = DiscriminatorConfig(hidden_dim=8, feature_dim=4, vector_std_floor=0.01, vector_clip=5.0)
    disc = Discriminator(spec, cfg)
    disc.set_input_stats({"state": torch.tensor([[1.0, 3.0], [3.0, 3.0]])})  # std (1, 0)
    norm = disc.net.normalizer
    assert torch.allclose(norm.state_mean, torch.tensor([2.0, 3.0]))
    assert torch.allclose(norm.state_std, torch.tensor([1.0, 0.01]))  # constant dim: floored
    out = norm({"state": torch.tensor([[4.0, 4.0]]), "img": torch.zeros(1, 3, 16, 16, dtype=torch.uint8)})
    assert torch.allclose(out["state"], torch.tensor([[2.0, 5.0]]))  # 100 std clipped to 5
    assert out["img"].dtype == torch.uint8
    other = Discriminator(spec, cfg)
    other.load_state_dict(disc.state_dict())
    assert torch.equal(other.net.normalizer.state_mean, norm.state_mean)
    # A checkpoint from before the normaliser keeps the statistics set from the demos.
    old = disc.state_dict()
    old["net"] = {k: v for k, v in old["net"].items() if not k.startswith("normalizer.")}
    fresh = Discriminator(spec, cfg)
    fresh.set_input_stats({"state": torch.tensor([[0.0, 0.0], [2.0, 2.0]])})
    fresh.load_state_dict(old)
    assert torch.allclose(fresh.net.normalizer.state_mean, torch.tensor([1.0, 1.0]))
    with pytest.raises(DiscriminatorError, match="finite"):
        disc.set_input_stats({"state": torch.tensor([[float("nan"), 0.0]])})
