"""REDQ agent: gradient routing, REDQ target, Polyak, BC term, state round trips, a bandit."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from learner.agent import AgentConfig, RedqAgent
from learner.batch import Batch
from learner.networks import NetworkConfig, build_actor

torch.set_num_threads(1)

SPEC = {
    "wrist": ((3, 32, 32), "uint8"),
    "third_person": ((3, 32, 32), "uint8"),
    "proprio": ((4,), "float32"),
}
NET = NetworkConfig(feature_dim=8, hidden_dim=32, conv_channels=4, num_critics=5, num_min_target=2)
A = 3


def make_obs(b, spec=SPEC, g=None):
    g = g or torch.Generator().manual_seed(0)
    return {
        k: torch.randint(0, 256, (b, *s), dtype=torch.uint8, generator=g) if d == "uint8"
        else torch.randn(b, *s, generator=g)
        for k, (s, d) in spec.items()
    }


def make_batch(b=8, spec=SPEC, n_demo=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    is_demo = torch.zeros(b, dtype=torch.bool)
    is_demo[:n_demo] = True
    return Batch(
        obs=make_obs(b, spec, g), action=torch.rand(b, A, generator=g) * 2 - 1,
        next_obs=make_obs(b, spec, g), discount=torch.full((b,), 0.99), is_demo=is_demo,
    )


def make_agent(**kw):
    torch.manual_seed(0)
    return RedqAgent(SPEC, A, AgentConfig(**kw), NET, "cpu")


def params(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module):
    return any(not torch.equal(b, p) for b, p in zip(before, module.parameters()))


def test_act_shapes_and_bounds():
    agent = make_agent()
    obs = {k: v.numpy() for k, v in make_obs(5).items()}
    batch_act = agent.act(obs, explore=True)
    assert batch_act.shape == (5, A) and np.abs(batch_act).max() <= 1
    single = agent.act({k: v[0] for k, v in obs.items()}, explore=False)
    assert single.shape == (A,)
    np.testing.assert_allclose(single, agent.act(obs, explore=False)[0], atol=1e-6)


@pytest.mark.parametrize("bf16", [True, False])
def test_update_trains_encoder_by_critic_only(bf16):
    agent = make_agent(encoder_bf16=bf16)
    enc0, act0, crit0, targ0 = (params(m) for m in (agent.encoder, agent.actor, agent.critic, agent.critic_target))
    hits = {"n": 0}
    for p in agent.encoder.parameters():
        p.register_hook(lambda g: hits.__setitem__("n", hits["n"] + 1))
    metrics = agent.update(make_batch(), torch.randn(8), bc_weight=1.0, step=1)
    # one backward pass reached each encoder parameter: the critic's, not the actor's
    assert hits["n"] == len(list(agent.encoder.parameters()))
    assert changed(enc0, agent.encoder) and changed(act0, agent.actor) and changed(crit0, agent.critic)
    assert changed(targ0, agent.critic_target)
    for key in ("losses/critic", "losses/actor", "losses/bc", "values/q_mean"):
        assert np.isfinite(metrics[key])


def test_actor_step_does_not_touch_encoder_or_critics():
    agent = make_agent()
    batch = make_batch()
    h = agent.encoder(batch.obs)
    enc0, crit0 = params(agent.encoder), params(agent.critic)
    agent.update_actor(h.detach(), bc_weight=1.0, demo=(h.detach()[:3], batch.action[:3]))
    assert all(p.grad is None for p in agent.encoder.parameters())
    assert all(p.grad is None for p in agent.critic.parameters())
    assert not changed(enc0, agent.encoder) and not changed(crit0, agent.critic)
    assert all(p.requires_grad for p in agent.critic.parameters())  # restored


def test_redq_target_uses_exactly_num_min_target_critics():
    agent = make_agent()
    b = 16
    h_next, reward, discount = torch.randn(b, agent.encoder.repr_dim), torch.randn(b), torch.full((b,), 0.9)
    seen = set()
    for seed in range(30):
        torch.manual_seed(seed)
        target, members = agent.target_q(h_next, reward, discount)
        assert members.numel() == NET.num_min_target and members.unique().numel() == NET.num_min_target
        seen.add(tuple(sorted(members.tolist())))
        torch.manual_seed(seed)
        action, _, _ = agent.actor.sample(h_next, noise_clip=agent.noise_clip)
        q_all = agent.critic_target(h_next, action)
        expected = reward + discount * q_all[members].min(0).values
        torch.testing.assert_close(target, expected)
    assert len(seen) > 3  # random subsets, not a fixed pair


def test_polyak_update():
    agent = make_agent(tau=0.1)
    with torch.no_grad():
        for p in agent.critic.parameters():
            p.add_(1.0)
    before_t, online = params(agent.critic_target), params(agent.critic)
    agent.soft_update_targets()
    for t0, o, t1 in zip(before_t, online, agent.critic_target.parameters()):
        torch.testing.assert_close(t1, 0.9 * t0 + 0.1 * o)


def test_mse_bc_mixes_rl_and_the_mean_actions_squared_error():
    # Same mixing and batch as the log-likelihood form; L_BC = ‖tanh μ(s_d) − a_d‖².
    agent = make_agent(bc_form="mse")
    h = torch.randn(8, agent.encoder.repr_dim)
    demo_h, demo_a = torch.randn(5, agent.encoder.repr_dim), torch.rand(5, A) * 2 - 1
    torch.manual_seed(1)
    rl, _ = agent.actor_loss(h, 0.0, (demo_h, demo_a))
    torch.manual_seed(1)
    mixed, m = agent.actor_loss(h, 0.4, (demo_h, demo_a))
    bc = (torch.tanh(agent.actor(demo_h)[0]) - demo_a).pow(2).sum(-1).mean()
    torch.testing.assert_close(mixed, 0.6 * rl + 0.4 * bc)
    assert m["losses/bc"] == pytest.approx(float(bc.detach()))
    _, m_none = agent.actor_loss(h, 0.4, None)
    assert m_none["losses/bc"] == 0.0


def test_log_likelihood_bc_mixes_rl_and_demo_log_prob():
    # The authors' form: (1 − λ)·L_RL − λ·mean log π(a_d | s_d), on a separate demo batch.
    agent = make_agent()
    h = torch.randn(8, agent.encoder.repr_dim)
    demo_h, demo_a = torch.randn(5, agent.encoder.repr_dim), torch.rand(5, A) * 2 - 1
    torch.manual_seed(1)
    rl, _ = agent.actor_loss(h, 0.0, (demo_h, demo_a))
    torch.manual_seed(1)
    mixed, m = agent.actor_loss(h, 0.3, (demo_h, demo_a))
    nll = -agent.actor.log_prob(demo_h, demo_a).mean()
    torch.testing.assert_close(mixed, 0.7 * rl + 0.3 * nll)
    assert m["losses/bc"] == pytest.approx(float(nll.detach()))
    torch.manual_seed(1)
    no_demo, m_none = agent.actor_loss(h, 0.3, None)
    torch.testing.assert_close(no_demo, rl)  # without demo data the RL term keeps its full weight
    assert m_none["losses/bc"] == 0.0


def test_actor_log_prob_is_the_tanh_gaussian_density():
    from torch.distributions import Normal, TransformedDistribution
    from torch.distributions.transforms import TanhTransform

    agent = make_agent()
    h = torch.randn(6, agent.encoder.repr_dim)
    a = torch.rand(6, A) * 1.8 - 0.9
    mu, log_std = agent.actor(h)
    reference = TransformedDistribution(Normal(mu, log_std.exp()), [TanhTransform()]).log_prob(a).sum(-1)
    torch.testing.assert_close(agent.actor.log_prob(h, a), reference, rtol=1e-4, atol=1e-4)
    saturated = agent.actor.log_prob(h, torch.ones(6, A))  # a demo's ±1 stays finite
    assert torch.isfinite(saturated).all()


def test_beta_nll_weights_each_dimension_by_its_detached_std():
    # β-NLL: Σ_d sg(σ_d^2β)·((pre_d − μ_d)²/2σ_d² + log σ_d); β = 0 differs from −log π only by
    # terms without parameters, and the mean's gradient is (μ − pre)/σ^(2−2β).
    agent = make_agent()
    h = torch.randn(6, agent.encoder.repr_dim)
    a = torch.rand(6, A) * 1.8 - 0.9
    pre = torch.atanh(a)
    mu, log_std = agent.actor(h)
    for beta in (0.0, 0.5, 1.0):
        expected = ((0.5 * ((pre - mu) / log_std.exp()).pow(2) + log_std) * torch.exp(2 * beta * log_std)).sum(-1)
        torch.testing.assert_close(agent.actor.beta_nll(h, a, beta=beta), expected)
    const = -agent.actor.log_prob(h, a) - agent.actor.beta_nll(h, a, beta=0.0)
    constant_part = (0.5 * math.log(2 * math.pi) + 2.0 * (math.log(2.0) - pre - F.softplus(-2.0 * pre))).sum(-1)
    torch.testing.assert_close(const, constant_part, rtol=1e-4, atol=1e-4)
    # the weight carries no gradient: at β = 0.5 the loss's gradient on the actor's output equals
    # that of (pre − μ)²/2σ + σ·log σ with σ held, i.e. (μ − pre)/σ on the mean
    out = agent.actor.policy(agent.actor.trunk(h))
    out.retain_grad()
    agent.actor.forward = lambda _h: (out.chunk(2, -1)[0], _rescaled(agent, out.chunk(2, -1)[1]))
    agent.actor.beta_nll(h, a, beta=0.5).sum().backward()
    del agent.actor.forward
    std = log_std.detach().exp()
    torch.testing.assert_close(out.grad.chunk(2, -1)[0], (mu.detach() - pre) / std, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(agent.actor.beta_nll(h, torch.ones(6, A), beta=0.5)).all()  # saturated ±1


def _rescaled(agent, raw):
    lo, hi = agent.actor.log_std_min, agent.actor.log_std_max
    return lo + 0.5 * (hi - lo) * (torch.tanh(raw) + 1.0)


def test_beta_nll_bc_mixes_rl_and_the_weighted_nll():
    agent = make_agent(bc_form="beta_nll", bc_beta=0.5)
    h = torch.randn(8, agent.encoder.repr_dim)
    demo_h, demo_a = torch.randn(5, agent.encoder.repr_dim), torch.rand(5, A) * 2 - 1
    torch.manual_seed(1)
    rl, _ = agent.actor_loss(h, 0.0, (demo_h, demo_a))
    torch.manual_seed(1)
    mixed, m = agent.actor_loss(h, 0.3, (demo_h, demo_a))
    bc = agent.actor.beta_nll(demo_h, demo_a, beta=0.5).mean()
    torch.testing.assert_close(mixed, 0.7 * rl + 0.3 * bc)
    assert m["losses/bc"] == pytest.approx(float(bc.detach()))


@pytest.mark.parametrize("form", ["log_likelihood", "mse", "beta_nll"])
def test_bc_pulls_policy_to_demo_actions(form):
    agent = make_agent(lr=1e-3, bc_form=form)
    batch = make_batch(n_demo=8)
    batch.action[:] = torch.tensor([0.5, -0.5, 0.25])
    h = agent.encoder(batch.obs).detach()
    for _ in range(300):
        agent.update_actor(h, bc_weight=1.0, demo=(h, batch.action))
    mean_action = torch.tanh(agent.actor(h)[0])
    assert (mean_action - batch.action).abs().max() < 0.1


def test_policy_state_dict_loads_into_build_actor():
    agent = make_agent()
    agent.update(make_batch(), torch.randn(8), bc_weight=0.5, step=1)
    policy = build_actor(SPEC, A, NET.to_dict())
    policy.load_state_dict(agent.policy_state_dict())
    obs = make_obs(4)
    expected = agent.act({k: v.numpy() for k, v in obs.items()}, explore=False)
    np.testing.assert_allclose(policy(obs).detach().numpy(), expected, atol=1e-6)


def test_state_dict_round_trip_continues_identically():
    agent = make_agent(forward_temperature=0.1, forward_learn_temperature=True)
    agent.update(make_batch(), torch.randn(8), bc_weight=0.5, step=1)
    other = RedqAgent(SPEC, A, agent.cfg, NET, "cpu")
    other.load_state_dict(agent.state_dict())
    assert float(other.alpha) == pytest.approx(float(agent.alpha))
    for ag in (agent, other):
        torch.manual_seed(7)
        ag.update(make_batch(seed=3), torch.randn(8), bc_weight=0.5, step=2)
    for m in ("encoder", "actor", "critic", "critic_target"):
        for p, q in zip(getattr(agent, m).parameters(), getattr(other, m).parameters()):
            torch.testing.assert_close(p, q)


def test_config_validation():
    with pytest.raises(ValueError, match="forward_learn_temperature"):
        AgentConfig(forward_learn_temperature=True)
    with pytest.raises(ValueError, match="backward_temperature"):
        AgentConfig(backward_temperature=2.0, max_temperature=1.0)
    with pytest.raises(ValueError, match="bc_form"):
        AgentConfig(bc_form="kl")
    with pytest.raises(ValueError, match="bc_beta"):
        AgentConfig(bc_beta=1.5)
    with pytest.raises(ValueError, match="tau"):
        AgentConfig(tau=0)
    with pytest.raises(ValueError, match="batch_size"):
        AgentConfig(batch_size=0)


def test_learns_a_one_step_bandit_from_state():
    """Discount 0, reward −‖a − a*‖²: the critic must learn Q and the actor its argmax."""
    spec = {"state": ((2,), "float32")}
    torch.manual_seed(0)
    agent = RedqAgent(spec, 2, AgentConfig(lr=1e-3), NetworkConfig(hidden_dim=64), "cpu")
    best = torch.tensor([0.6, -0.3])
    rng = torch.Generator().manual_seed(0)
    for step in range(1200):  # the actor may saturate early, before the critic has learnt Q
        s = torch.randn(64, 2, generator=rng)
        a = torch.rand(64, 2, generator=rng) * 2 - 1
        reward = -(a - best).pow(2).sum(-1)
        batch = Batch(obs={"state": s}, action=a, next_obs={"state": s},
                      discount=torch.zeros(64), is_demo=torch.zeros(64, dtype=torch.bool))
        agent.update(batch, reward, bc_weight=0.0, step=step)
    act = agent.act({"state": np.zeros((8, 2), np.float32)}, explore=False)
    assert np.abs(act - best.numpy()).max() < 0.15


def test_bf16_encoder_stays_close_to_fp32():
    agent = make_agent()
    obs = make_obs(16)
    with torch.no_grad():
        full = agent.encoder(obs)
        with agent._autocast():
            half = agent.encoder(obs).float()
    assert (full - half).abs().max() < 0.05


def test_tune_cpu_allocator_keeps_fresh_memory_lazy():
    import subprocess
    import sys

    # The resident set before and after, not ru_maxrss: a child's maxrss starts at the RSS of
    # the parent it was forked from (a test process that has loaded torch and video libraries
    # can be past 900 MB before the child does anything).
    code = (
        "import os, numpy as np\n"
        "from learner.agent import tune_cpu_allocator\n"
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')\n"
        "assert tune_cpu_allocator()\n"
        "before = rss()\n"
        "a = np.zeros(2**30, np.uint8)\n"
        "assert rss() - before < 100 * 2**20, f'calloc committed {(rss() - before) >> 20} MiB'\n"
        "a[::4096] = 1\n"
        "assert int(a.sum()) == 2**30 // 4096\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_entropy_bonus_does_not_drive_std_to_its_ceiling():
    # With α > 0 the actor's sample must be unclipped: a clipped noise hides the std from the
    # Q term, the entropy term alone then pushes log_std to log_std_max (entropy ~9.7 nats
    # here after 300 steps, uniform random practice — the door failure of docs/learning.md §6).
    agent = make_agent(forward_temperature=0.1, forward_learn_temperature=True)
    assert agent.noise_clip is None and make_agent().noise_clip == AgentConfig().stddev_clip
    torch.manual_seed(0)
    h = torch.randn(64, agent.encoder.repr_dim)
    for _ in range(300):
        metrics = agent.update_actor(h, bc_weight=0.0)
    assert metrics["charts/entropy"] < 4.0


def test_q_scale_makes_the_actor_step_independent_of_the_q_magnitude():
    # TD3+BC: with q_scale, multiplying every Q by 10 leaves the actor's loss (hence the
    # weight the BC term has against it) unchanged; without it the Q term grows tenfold.
    h = torch.randn(8, make_agent().encoder.repr_dim)
    for q_scale, expected_ratio in ((2.5, 1.0), (None, 10.0)):
        agent = make_agent(q_scale=q_scale)
        losses = []
        for factor in (1.0, 10.0):
            with torch.no_grad():  # the last layer scaled: every Q times `factor`
                for p in agent.critic.l3.parameters():
                    p.mul_(factor)
            torch.manual_seed(3)
            loss, _ = agent.actor_loss(h, 0.0)
            losses.append(float(loss.detach()))
        assert losses[1] / losses[0] == pytest.approx(expected_ratio, rel=1e-4)


def test_bf16_autocast_only_where_the_device_has_native_bf16(monkeypatch):
    import learner.agent as agent_module

    # Emulated bf16 is ~6x slower than float32 (24 s vs 4 s per pixel update on an AVX2 EPYC).
    monkeypatch.setattr(agent_module, "native_bf16", lambda device: False)
    assert make_agent(encoder_bf16=True)._bf16 is False
    monkeypatch.setattr(agent_module, "native_bf16", lambda device: True)
    assert make_agent(encoder_bf16=True)._bf16 is True
    assert make_agent(encoder_bf16=False)._bf16 is False


def test_roles_take_their_own_temperature_and_a_learnt_alpha_is_capped():
    # The authors' backward agent: α from 1, learnt towards +|A|/2; the forward agent: α = 0.
    torch.manual_seed(0)
    backward = RedqAgent(SPEC, A, AgentConfig(max_temperature=1.0), NET, "cpu", role="backward")
    assert float(backward.alpha) == pytest.approx(1.0) and backward.target_entropy == pytest.approx(A / 2)
    assert float(make_agent().alpha) == 0.0
    h = torch.randn(16, backward.encoder.repr_dim)
    for _ in range(50):  # entropy below a +|A|/2 target pushes α up; the cap holds it
        metrics = backward.update_actor(h, bc_weight=0.0)
    assert metrics["charts/alpha"] <= 1.0 + 1e-6


def test_update_reports_q_against_its_bound_and_overestimation():
    agent = make_agent()
    metrics = agent.update(make_batch(), torch.full((8,), 0.5), bc_weight=0.0, step=1)
    assert metrics["q/bound"] == pytest.approx(0.5 / (1 - agent.cfg.gamma))
    assert np.isfinite(metrics["q/overestimation"]) and metrics["q/abs_max"] >= 0


def test_state_mode_actor_and_critics_have_their_own_layernorm_trunk():
    spec = {"state": ((6,), "float32")}
    torch.manual_seed(0)
    agent = RedqAgent(spec, 2, AgentConfig(), NetworkConfig(hidden_dim=32, feature_dim=8), "cpu")
    assert isinstance(agent.actor.trunk[1], torch.nn.LayerNorm) and agent.critic.trunk is not None
    h = torch.randn(5, 6) * 1000.0  # far outside any data: the trunk keeps features in [-1, 1]
    a = torch.rand(5, 2) * 2 - 1
    for i in range(agent.critic.num_critics):
        torch.testing.assert_close(agent.critic(h, a)[i], agent.critic.member(i, h, a), rtol=1e-4, atol=1e-4)
    policy = build_actor(spec, 2, agent.net_cfg)
    policy.load_state_dict(agent.policy_state_dict())  # the runtime builds the same actor
    off = RedqAgent(spec, 2, AgentConfig(), NetworkConfig(hidden_dim=32, feature_dim=8, state_trunk=False), "cpu")
    assert off.critic.trunk is None


def test_conservative_term_lowers_the_critics_preference_for_the_policys_actions():
    # The same critic steps on the same batch with and without the term: with it, the
    # critics rate the policy's action below the batch's; without it nothing separates them.
    batch = make_batch(n_demo=3)
    gaps = {}
    for weight in (0.0, 1.0):
        agent = make_agent(conservative_weight=weight)
        h = torch.randn(8, agent.encoder.repr_dim, generator=torch.Generator().manual_seed(1))
        for _ in range(200):
            metrics = agent.update_critic(h, batch.action, torch.zeros(8), batch.discount, h)
        assert ("losses/conservative" in metrics) == (weight > 0)
        with torch.no_grad():
            _, _, mean_action = agent.actor.sample(h)
            gaps[weight] = float((agent.critic(h, mean_action) - agent.critic(h, batch.action)).mean())
    assert gaps[1.0] < -0.2 and abs(gaps[0.0]) < 0.05, gaps


def test_conservative_weight_must_not_be_negative():
    with pytest.raises(ValueError, match="conservative_weight"):
        AgentConfig(conservative_weight=-0.1)


STATE = {"state": ((3,), "float32")}


def make_state_agent(**kw):
    torch.manual_seed(0)
    agent = RedqAgent(STATE, A, AgentConfig(**kw), NET, "cpu")
    torch.manual_seed(1)
    proposal = build_actor(STATE, A, NET)  # an untrained policy: its action differs from the actor's
    agent.set_proposal(proposal.state_dict())
    return agent, proposal


def test_proposal_acts_with_the_action_the_critics_rate_higher():
    agent, proposal = make_state_agent(bc_proposal=True)
    obs = torch.randn(64, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        h = agent.encoder({"state": obs})
        mine = torch.tanh(agent.actor(h)[0])
        theirs = proposal({"state": obs})
        q = [torch.stack([agent.critic.member(i, h, a) for i in range(NET.num_critics)]).min(0).values
             for a in (mine, theirs)]
    expected = torch.where((q[1] > q[0]).unsqueeze(-1), theirs, mine)
    assert 0 < int((q[1] > q[0]).sum()) < 64  # both are chosen somewhere: the test can tell them apart
    acted = agent.act({"state": obs.numpy()}, explore=False)
    np.testing.assert_allclose(acted, expected.numpy(), atol=1e-5)
    assert agent.act({"state": obs[0].numpy()}, explore=True).shape == (A,)
    assert "proposal/acted_fraction" not in agent.update(make_batch(spec=STATE), torch.randn(8), bc_weight=0.0, step=0)
    agent.act({"state": np.random.default_rng(0).normal(size=(1000, 3)).astype(np.float32)}, explore=True)
    metrics = agent.update(make_batch(spec=STATE), torch.randn(8), bc_weight=0.0, step=1)
    assert 0.0 < metrics["proposal/acted_fraction"] < 1.0  # practice's actions over the last 1000 or more


def test_proposal_bootstraps_the_target_from_the_better_action():
    agent, _ = make_state_agent(bc_proposal=True)
    batch = make_batch(spec=STATE)
    h_next = agent.encoder(batch.next_obs).detach()
    reward = torch.randn(8)
    torch.manual_seed(5)
    plain, members = agent.target_q(h_next, reward, batch.discount)
    torch.manual_seed(5)
    boot, same = agent.target_q(h_next, reward, batch.discount, batch.next_obs)
    assert torch.equal(members, same)
    with torch.no_grad():
        proposed = agent.proposal(batch.next_obs)
        q_proposal = agent.critic_target(h_next, proposed, members).min(0).values
    torch.testing.assert_close(boot, torch.maximum(plain, reward + batch.discount * q_proposal))
    assert bool((boot > plain).any())


def test_proposal_travels_in_the_agents_state():
    agent, proposal = make_state_agent(bc_proposal=True)
    state = agent.state_dict()
    other = RedqAgent(STATE, A, agent.cfg, NET, "cpu")
    assert other.proposal is None
    other.load_state_dict(state)
    obs = torch.randn(5, 3)
    torch.testing.assert_close(other.proposal({"state": obs}), proposal({"state": obs}))
    np.testing.assert_allclose(other.act({"state": obs.numpy()}, explore=False),
                               agent.act({"state": obs.numpy()}, explore=False))


def test_proposal_needs_the_forward_entropy_bonus_off():
    with pytest.raises(ValueError, match="bc_proposal"):
        AgentConfig(bc_proposal=True, forward_temperature=0.1)
    with pytest.raises(ValueError, match="bc_proposal_steps"):
        AgentConfig(bc_proposal_steps=0)
