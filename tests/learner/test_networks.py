"""Encoder / actor / critic-ensemble shapes, equivalence and build_actor round trips."""

import pytest
import torch

from learner.critic import CriticEnsemble
from learner.networks import (
    Actor, Encoder, NetworkConfig, build_actor,
)

torch.set_num_threads(1)

SPEC = {
    "wrist": ((3, 32, 32), "uint8"),
    "third_person": ((3, 32, 32), "uint8"),
    "proprio": ((4,), "float32"),
}
SMALL = NetworkConfig(feature_dim=8, hidden_dim=16, conv_channels=4, num_critics=5, num_min_target=2)


def make_obs(b: int, spec=SPEC, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, (shape, dtype) in spec.items():
        if dtype == "uint8":
            out[k] = torch.randint(0, 256, (b, *shape), dtype=torch.uint8, generator=g)
        else:
            out[k] = torch.randn(b, *shape, generator=g)
    return out


def test_encoder_shapes_pixels():
    enc = Encoder(SPEC, SMALL)
    assert enc.image_keys == ("third_person", "wrist")
    assert enc.vector_keys == ("proprio",)
    # DrQ-v2 trunk on 32x32: 15 -> 13 -> 11 -> 9
    assert enc.conv_dim == 4 * 9 * 9
    assert enc.repr_dim == 8 + 4
    h = enc(make_obs(3))
    assert h.shape == (3, enc.repr_dim)
    assert h[:, :8].abs().max() <= 1.0  # tanh-bounded projection


def test_encoder_camera_selection_and_no_proprio():
    cfg = NetworkConfig(feature_dim=8, hidden_dim=16, conv_channels=4, cameras=("wrist",), use_proprio=False)
    enc = Encoder(SPEC, cfg)
    assert enc.image_keys == ("wrist",) and enc.vector_keys == ()
    obs = make_obs(2)
    h1 = enc(obs)
    obs["third_person"] = torch.zeros_like(obs["third_person"])
    obs["proprio"] = obs["proprio"] + 100
    assert torch.equal(h1, enc(obs))  # ignored keys do not matter
    with pytest.raises(ValueError, match="cameras"):
        Encoder(SPEC, NetworkConfig(cameras=("nope",)))


def test_encoder_state_mode_is_identity():
    spec = {"state": ((7,), "float32")}
    enc = Encoder(spec, SMALL)
    assert enc.repr_dim == 7
    x = torch.randn(5, 7)
    assert torch.equal(enc({"state": x}), x)


def test_encoder_rejects_mismatched_camera_shapes():
    spec = {"a": ((3, 32, 32), "uint8"), "b": ((3, 40, 40), "uint8")}
    with pytest.raises(ValueError, match="share one shape"):
        Encoder(spec, SMALL)


def test_actor_sample_bounds_and_log_prob():
    torch.manual_seed(0)
    actor = Actor(12, 3, SMALL)
    h = torch.randn(64, 12)
    a, logp, mean = actor.sample(h)
    assert a.shape == (64, 3) and logp.shape == (64,) and mean.shape == (64, 3)
    assert a.abs().max() < 1 and mean.abs().max() < 1
    mu, log_std = actor(h)
    assert log_std.min() >= SMALL.log_std_min and log_std.max() <= SMALL.log_std_max
    # log-prob agrees with torch's transformed distribution
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mu, log_std.exp()), [torch.distributions.TanhTransform()]
    )
    # compare where tanh is not saturated (inverting a saturated tanh loses precision)
    ok = a.abs().max(-1).values < 0.99
    assert ok.sum() > 32
    torch.testing.assert_close(dist.log_prob(a).sum(-1)[ok], logp[ok], atol=2e-3, rtol=1e-3)


def test_ensemble_equals_loop_over_members():
    critic = CriticEnsemble(12, 3, SMALL)
    h, a = torch.randn(10, 12), torch.rand(10, 3) * 2 - 1
    q = critic(h, a)
    assert q.shape == (5, 10)
    loop = torch.stack([critic.member(i, h, a) for i in range(5)])
    torch.testing.assert_close(q, loop, rtol=1e-5, atol=1e-5)
    members = torch.tensor([3, 1])
    torch.testing.assert_close(critic(h, a, members), loop[members], rtol=1e-5, atol=1e-5)
    # members differ (independent init)
    assert not torch.allclose(loop[0], loop[1])


def test_ensemble_members_train_independently():
    critic = CriticEnsemble(12, 3, SMALL)
    h, a = torch.randn(10, 12), torch.rand(10, 3)
    critic(h, a)[2].sum().backward()
    g = critic.l1.weight.grad
    assert g[2].abs().sum() > 0
    assert g[[0, 1, 3, 4]].abs().sum() == 0


def test_build_actor_round_trip():
    torch.manual_seed(0)
    policy = build_actor(SPEC, 3, SMALL)
    fresh = build_actor(SPEC, 3, SMALL.to_dict())
    obs = make_obs(4)
    assert not torch.allclose(policy(obs), fresh(obs))
    fresh.load_state_dict(policy.state_dict())
    out = policy(obs)
    assert out.shape == (4, 3) and out.abs().max() <= 1
    assert torch.equal(out, fresh(obs))
    assert all(k.startswith(("encoder.", "actor.")) for k in policy.state_dict())


def test_config_validation_and_dict():
    with pytest.raises(ValueError, match="num_min_target"):
        NetworkConfig(num_critics=2, num_min_target=3)
    with pytest.raises(ValueError, match="feature_dim"):
        NetworkConfig(feature_dim=0)
    with pytest.raises(ValueError, match="unknown"):
        NetworkConfig.from_dict({"bogus": 1})
    cfg = NetworkConfig(cameras=("wrist",))
    assert NetworkConfig.from_dict(cfg.to_dict()) == cfg


def test_actor_layout_is_build_actors_state_dict_without_allocating() -> None:
    from learner.networks import actor_layout

    spec = {"wrist": ((3, 84, 84), "uint8"), "proprio": ((4,), "float32")}
    cfg = NetworkConfig(feature_dim=16, hidden_dim=32)
    built = build_actor(spec, 5, cfg).state_dict()
    layout = actor_layout(spec, 5, cfg)
    assert layout == {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in built.items()}
