"""MedalTrainer: agent switches, schedules, non-finite guards, bit-exact resume, and learning."""

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch

from learner import checkpoint
from learner.agent import AgentConfig
from learner.demo_inputs import vice_positive_rows
from learner.discriminators import DiscriminatorConfig
from learner.errors import TrainerError
from learner.networks import NetworkConfig
from learner.replay import ReplayConfig
from learner.schedule import ScheduleConfig
from learner.trainer import MedalTrainer
from protocol.messages import BACKWARD, FORWARD

torch.set_num_threads(1)

SPEC = {"state": ((2,), "float32")}
GOAL = np.array([0.8, 0.8], np.float32)
START = np.zeros(2, np.float32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sections:
    """Local stand-in for learner.config.LearnerConfig: the sections the trainer reads."""

    network: NetworkConfig
    agent: AgentConfig
    replay: ReplayConfig
    vice: DiscriminatorConfig
    medal: DiscriminatorConfig
    schedule: ScheduleConfig


def make_config(**schedule: object) -> Sections:
    sched = {"seed_frames": 20, "bc_decay_steps": 100, "goal_frames": 3, "snapshot_every": 5, **schedule}
    return Sections(
        network=NetworkConfig(hidden_dim=32, num_critics=3),
        agent=AgentConfig(batch_size=16),
        replay=ReplayConfig(capacity=500, batch_size=16, demo_per_batch=4, save_in_checkpoint=True),
        vice=DiscriminatorConfig(updates_every=10, updates_per_round=2, batch_size=16, hidden_dim=16),
        medal=DiscriminatorConfig(updates_every=5, updates_per_round=1, batch_size=16, hidden_dim=16),
        schedule=ScheduleConfig(**sched),
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoArrays:
    """Plain demo arrays (rows = steps incl. final obs): what the trainer needs of demos (`DemoData`)."""

    observations: Mapping[str, np.ndarray]
    """Observation arrays by key, N rows."""
    actions: np.ndarray
    """float32 (N, A); the final row of each episode is padding."""
    rewards: np.ndarray
    """float32 (N,); reward following `actions[i]`."""
    is_first: np.ndarray
    """bool (N,)."""
    is_last: np.ndarray
    """bool (N,)."""


def line_demos(src: np.ndarray, dst: np.ndarray, episodes: int, rng: np.random.Generator) -> DemoArrays:
    """Straight-line expert demos for the point task: 0.1·a steps until within 0.05 of `dst`."""
    obs, acts, rew, first, last = [], [], [], [], []
    for _ in range(episodes):
        p = np.clip(src + rng.normal(0, 0.05, 2), -1, 1).astype(np.float32)
        for t in range(20):
            a = np.clip((dst - p) / 0.1, -1, 1).astype(np.float32)
            obs.append(p.copy())
            done = t == 19 or bool(np.linalg.norm(p - dst) < 0.05)
            acts.append(np.zeros(2, np.float32) if done else a)
            first.append(t == 0)
            last.append(done)
            p = np.clip(p + 0.1 * a, -1, 1).astype(np.float32)
            rew.append(0.0)
            if done:
                break
    return DemoArrays(observations={"state": np.array(obs)}, actions=np.array(acts), rewards=np.array(rew, np.float32),
                      is_first=np.array(first), is_last=np.array(last))


def demos(seed: int = 0) -> tuple[DemoArrays, DemoArrays]:
    rng = np.random.default_rng(seed)
    return line_demos(START, GOAL, 10, rng), line_demos(GOAL, START, 10, rng)


def chunk(xs: list[float], agent: int | list[int], first: bool = False) -> tuple:
    n = len(xs)
    obs = {"state": np.array([[x, 0.0] for x in xs], np.float32)}
    acts = np.array([[x, 1.0] for x in xs], np.float32)
    agents = np.full(n, agent) if isinstance(agent, int) else np.array(agent)
    is_first = np.zeros(n, bool)
    is_first[0] = first
    return obs, acts, agents, is_first, np.zeros(n, bool)


def test_agent_switch_closes_each_segment_with_one_extra_frame() -> None:
    tr = MedalTrainer(make_config(seed_frames=0), SPEC, 2, demos())
    tr.ingest_steps(*chunk([0, 1, 2, 3, 4], [0, 0, 0, 1, 1], first=True))
    tr.ingest_steps(*chunk([5, 6, 7], [1, 0, 0]))  # the switch 6 falls inside, 4->5 across calls
    assert tr.env_steps == 8 and tr.agent_steps == [5, 3]
    assert len(tr.replay[0]) == 5 + 1 and len(tr.replay[1]) == 3 + 1  # one closing frame per switch
    for a in (0, 1):
        b = tr.replay[a].sample(200, np.random.default_rng(a))
        x, nx = b.obs["state"][:, 0], b.next_obs["state"][:, 0]
        assert torch.equal(nx, x + 1)  # every transition ends in the true successor
        assert torch.equal(b.action[:, 0], x)
    got0 = set(tr.replay[0].sample(300, np.random.default_rng(5)).obs["state"][:, 0].tolist())
    got1 = set(tr.replay[1].sample(300, np.random.default_rng(6)).obs["state"][:, 0].tolist())
    assert got0 == {0, 1, 2, 6} and got1 == {3, 4, 5}  # 7 awaits its successor
    with pytest.raises(TrainerError):
        tr.ingest_steps(*chunk([1.0], [2]))


def test_seed_frames_go_to_both_buffers_and_the_stream_continues_after_them() -> None:
    # The authors' code: the random seed frames fill both agents' buffers.
    tr = MedalTrainer(make_config(seed_frames=4), SPEC, 2, demos())
    tr.ingest_steps(*chunk([0, 1, 2], [0, 0, 1], first=True))  # all seed: both buffers, no break
    tr.ingest_steps(*chunk([3, 4, 5, 6], [1, 1, 0, 0]))  # step 3 is the last seed frame
    assert tr.env_steps == 7 and tr.credit == [2, 1]  # credit for post-seed steps only
    got = [set(tr.replay[a].sample(400, np.random.default_rng(a)).obs["state"][:, 0].tolist()) for a in (0, 1)]
    assert got[1] == {0, 1, 2, 3, 4}  # the seed stream, then its own step 4 (closed by 5)
    assert got[0] == {0, 1, 2, 3, 5}  # the seed stream (3 closed by 4), then its own 5 -> 6
    for a in (0, 1):
        b = tr.replay[a].sample(200, np.random.default_rng(a + 2))
        assert torch.equal(b.next_obs["state"][:, 0], b.obs["state"][:, 0] + 1)


def test_backward_demo_buffer_holds_forward_and_backward_demos_by_default() -> None:
    fwd, bwd = demos()
    both = MedalTrainer(make_config(), SPEC, 2, (fwd, bwd))
    own = MedalTrainer(make_config(backward_demos="backward"), SPEC, 2, (fwd, bwd))
    assert len(both.demo_buffers[1]) == len(fwd.actions) + len(bwd.actions)
    assert len(own.demo_buffers[1]) == len(bwd.actions) and len(both.demo_buffers[0]) == len(fwd.actions)


def test_vice_positive_rows() -> None:
    fwd, _ = demos()
    rows = vice_positive_rows(fwd, 3, "auto")  # no rewards: the last 3 rows of each episode
    assert len(rows) == 30 and np.all(fwd.is_last[rows[2::3]])
    rewards = np.zeros_like(fwd.rewards)
    last = int(np.flatnonzero(fwd.is_last)[0])
    rewards[[5, last]] = 1.0  # the last row's reward leads nowhere
    rewarded = dataclasses.replace(fwd, rewards=rewards)
    assert vice_positive_rows(rewarded, 3, "auto").tolist() == [6]
    assert len(vice_positive_rows(rewarded, 3, "last_frames")) == 30


def test_schedules_seed_phase_bc_decay_and_discriminator_rounds() -> None:
    cfg = make_config(seed_frames=20)
    tr = MedalTrainer(cfg, SPEC, 2, demos())
    tr.ingest(0, *_random_steps(15, first=True))
    assert tr.seed_phase and tr.train_step() == {}
    tr.ingest(0, *_random_steps(10))  # 5 steps past the seed frames -> 5 updates of credit
    assert tr.credit == [5, 0]
    m = tr.train_step()
    assert "vice/loss" in m and "forward/losses/critic" in m and m["forward/charts/demo_fraction"] == 4 / 16
    assert "medal/loss" in m  # the seed frames filled the backward buffer too
    assert m["forward/charts/bc_weight"] == pytest.approx(cfg.schedule.bc_weight(25))  # λ by environment step
    while tr.credit[0]:
        tr.train_step()
    assert tr.updates == [5, 0] and tr.vice.num_updates == 2  # next VICE round at 30 steps
    assert cfg.schedule.bc_weight(50) == pytest.approx(0.5) and cfg.schedule.bc_weight(10**6) == 0.0
    offset = ScheduleConfig(bc_weight_end=0.1, bc_decay_start=10_000, bc_decay_steps=40_000)  # the authors'
    assert offset.bc_weight(10_000) == 1.0 and offset.bc_weight(30_000) == pytest.approx(0.55)
    assert offset.bc_weight(50_000) == pytest.approx(0.1)
    franka = ScheduleConfig(bc_decay_start=10_000, bc_decay_steps=40_000, bc_weight_end=0.1, bc_weight_end_backward=0.25)
    assert franka.bc_weight(50_000, FORWARD) == pytest.approx(0.1) and franka.bc_weight(50_000, BACKWARD) == 0.25
    assert franka.bc_weight(10_000, BACKWARD) == 1.0 and franka.bc_weight(30_000, BACKWARD) == pytest.approx(0.625)
    with pytest.raises(ValueError, match="bc_weight_end_backward"):
        ScheduleConfig(bc_weight_end_backward=-0.1)


def test_a_stop_request_ends_a_step_after_one_update_and_the_round_runs_again_in_full() -> None:
    # A pixel step on a CPU (two rounds of 10 discriminator updates, then the agents) outlasted
    # resetfree-sim's 60 s stop timeout and the learner was killed before its checkpoint.
    base = make_config(seed_frames=20)
    cfg = dataclasses.replace(base, vice=dataclasses.replace(base.vice, updates_per_round=4))
    tr = MedalTrainer(cfg, SPEC, 2, demos())
    tr.ingest(0, *_random_steps(25, first=True))
    asked = []

    def stop_after_two() -> bool:
        asked.append(1)
        return len(asked) > 2

    due = list(tr.disc_next_at)
    assert tr.train_step(should_stop=stop_after_two) == {}
    assert tr.vice.num_updates == 2 and tr.updates == [0, 0]  # two of the round's updates, no agent's
    assert tr.disc_next_at == due and tr.credit == [5, 0]  # the round is still due, the credit kept
    m = tr.train_step()
    assert "vice/loss" in m and tr.vice.num_updates == 2 + 4 and tr.updates == [1, 0]


def _random_steps(n: int, first: bool = False, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed + n)
    is_first = np.zeros(n, bool)
    is_first[0] = first
    return ({"state": rng.uniform(-1, 1, (n, 2)).astype(np.float32)}, rng.uniform(-1, 1, (n, 2)).astype(np.float32),
            is_first, np.zeros(n, bool))


def test_nonfinite_batches_are_skipped_and_weights_never_published_nonfinite(caplog: pytest.LogCaptureFixture) -> None:
    tr = MedalTrainer(make_config(seed_frames=0), SPEC, 2, demos())
    obs, acts, first, last = _random_steps(30, first=True)
    obs["state"][:] = np.nan  # a broken sensor
    tr.ingest(1, obs, acts, first, last)
    with caplog.at_level(logging.WARNING):
        m = tr.train_step()
    assert m["backward/skipped_nonfinite"] == 1.0 and tr.updates[1] == 0
    assert any("skipped" in r.getMessage() for r in caplog.records)
    assert tr.publishable_weights(1) is not None
    with torch.no_grad():
        next(tr.agents[0].actor.parameters()).fill_(float("inf"))
    assert tr.publishable_weights(0) is None


def test_nonfinite_losses_restore_the_last_good_snapshot() -> None:
    tr = MedalTrainer(make_config(seed_frames=0), SPEC, 2, demos())
    tr.ingest(0, *_random_steps(30, first=True))
    for _ in range(5):
        tr.train_step()
    good = {k: v.clone() for k, v in tr.agents[0].actor.state_dict().items()}  # snapshot at update 5
    with torch.no_grad():
        next(tr.agents[0].critic.parameters()).fill_(float("nan"))
    m = tr.train_step()
    assert m["forward/skipped_nonfinite"] == 1.0 and tr.updates[0] == 5
    for k, v in tr.agents[0].actor.state_dict().items():
        assert torch.equal(v, good[k])
    assert tr.publishable_weights(0) is not None


def _run(tr: MedalTrainer, steps: int, seed: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for i in range(steps):
        tr.ingest(i % 2, *_random_steps(5, seed=seed + i))
        while max(tr.credit) >= 1:
            out = tr.train_step()
    return out


def _save(tr: MedalTrainer, run_dir: Path) -> Path:
    """Checkpoints the trainer with its replay, as the learner service and the practice loop do."""
    return checkpoint.save_checkpoint(run_dir, updates=sum(tr.updates) + tr.env_steps, state=tr.state_dict(),
                                      counters=tr.counters(), replay=tr.replay_state())


def _restore(tr: MedalTrainer, run_dir: Path) -> Path | None:
    """Loads the newest good checkpoint of ``run_dir`` into ``tr`` (None when there is none)."""
    ckpt = checkpoint.load_latest(run_dir, with_replay=True)
    if ckpt is None:
        return None
    tr.load_state_dict(ckpt.state)
    tr.load_replay_state(ckpt.replay)
    return ckpt.path


def test_restored_trainer_makes_the_identical_next_update(tmp_path: Path) -> None:
    cfg = make_config(seed_frames=10)
    a = MedalTrainer(cfg, SPEC, 2, demos(), seed=1)
    a.ingest(0, *_random_steps(5, first=True))
    _run(a, 8, seed=100)
    _save(a, tmp_path / "run")
    m_a = _run(a, 3, seed=200)
    b = MedalTrainer(cfg, SPEC, 2, demos(), seed=99)  # different init: everything must come from the file
    assert _restore(b, tmp_path / "run") is not None
    m_b = _run(b, 3, seed=200)
    assert m_a == m_b and m_a
    for x, y in zip(a.agents, b.agents):
        for (k, v), w in zip(x.state_dict()["critic"].items(), y.state_dict()["critic"].values()):
            assert torch.equal(v, w), k
    assert torch.equal(a.medal.net.head[0].parametrizations.weight.original,
                       b.medal.net.head[0].parametrizations.weight.original)
    assert a.counters() == b.counters()


def test_corrupt_newest_checkpoint_falls_back(tmp_path: Path) -> None:
    cfg = make_config(seed_frames=10)
    tr = MedalTrainer(cfg, SPEC, 2, demos())
    tr.ingest(0, *_random_steps(20, first=True))
    first = _save(tr, tmp_path)
    _run(tr, 2, seed=5)
    newest = _save(tr, tmp_path)
    (newest / "meta.json").write_text("{")
    fresh = MedalTrainer(cfg, SPEC, 2, demos())
    assert _restore(fresh, tmp_path) == first
    assert fresh.env_steps == 20


def test_forward_demos_are_required() -> None:
    with pytest.raises(TrainerError, match="forward demos"):
        MedalTrainer(make_config(), SPEC, 2, (None, None))


# -- learning sanity: a 2-D point, forward = reach the goal, backward = return ------------------
def point_env_step(p: np.ndarray, a: np.ndarray) -> np.ndarray:
    return np.clip(p + 0.1 * np.clip(a, -1, 1), -1, 1).astype(np.float32)


def evaluate_forward(tr: MedalTrainer, episodes: int = 10) -> float:
    rng = np.random.default_rng(123)
    wins = 0
    for _ in range(episodes):
        p = np.clip(START + rng.normal(0, 0.05, 2), -1, 1).astype(np.float32)
        for _ in range(30):
            p = point_env_step(p, tr.agents[0].act({"state": p}, explore=False))
            if np.linalg.norm(p - GOAL) < 0.15:
                wins += 1
                break
    return wins / episodes


@pytest.mark.slow
def test_learns_to_reach_and_return_from_state() -> None:
    """~20 s on one core. Short horizon (γ 0.9) and a tuned temperature keep it that short."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(
        make_config(seed_frames=300, bc_decay_steps=3000, bc_weight_end=0.1, goal_frames=3),
        network=NetworkConfig(hidden_dim=64, num_critics=5),
        agent=AgentConfig(batch_size=64, gamma=0.9, tau=0.02, init_temperature=0.1, learnable_temperature=True),
        replay=ReplayConfig(capacity=20_000, batch_size=64, demo_per_batch=16),
        vice=DiscriminatorConfig(updates_every=10, updates_per_round=4, batch_size=64, hidden_dim=64, lr=1e-3),
        # Spectral norm and mixup (regularisers for pixels) keep a 2-D discriminator too smooth
        # to pull the backward agent home within 3k steps; the toy turns them off for MEDAL.
        medal=DiscriminatorConfig(updates_every=10, updates_per_round=4, batch_size=64, hidden_dim=64, lr=1e-3,
                                  spectral_norm=False, mixup_alpha=0.0),
    )
    fwd, bwd = demos()
    tr = MedalTrainer(cfg, SPEC, 2, (fwd, bwd), seed=0)
    rng = np.random.default_rng(0)
    p = START.copy()
    for step in range(3000):
        agent = (step // 50) % 2  # switch every 50 steps, never reset
        if tr.seed_phase:
            a = rng.uniform(-1, 1, 2).astype(np.float32)
        else:
            a = tr.agents[agent].act({"state": p}, explore=True)
        tr.ingest(agent, {"state": p[None]}, a[None], np.array([step == 0]), np.array([False]))
        p = point_env_step(p, a)
        while max(tr.credit) >= 1:
            tr.train_step()
    assert evaluate_forward(tr) >= 0.8
    # Backward = return: from the goal, the backward policy brings the point back near the
    # start, where the forward demos begin (MEDAL rewards the demos' state distribution).
    ends = []
    for _ in range(5):
        p = np.clip(GOAL + rng.normal(0, 0.05, 2), -1, 1).astype(np.float32)
        for _ in range(30):
            p = point_env_step(p, tr.agents[1].act({"state": p}, explore=False))
        ends.append(np.linalg.norm(p - START))
    assert np.mean(ends) < 0.3, ends


def test_pixel_trainer_with_the_robot_profile_shapes() -> None:
    """Pixels, the project's LearnerConfig: VICE on the wrist camera builds its own encoder."""
    from learner.config import profile

    cfg = profile("robot").with_overrides([
        "network.hidden_dim=32", "network.conv_channels=8", "network.feature_dim=16",
        "agent.batch_size=8", "replay.batch_size=8", "replay.demo_per_batch=2", "replay.capacity=100",
        "vice.batch_size=8", "medal.batch_size=8", "vice.updates_every=5", "medal.updates_every=5",
        "schedule.seed_frames=4", "schedule.goal_frames=2",
    ])
    spec = {"wrist": ((3, 16, 16), "uint8"), "third": ((3, 16, 16), "uint8"), "proprio": ((3,), "float32")}
    rng = np.random.default_rng(0)

    def pix(n: int) -> dict[str, np.ndarray]:
        return {"wrist": rng.integers(0, 255, (n, 3, 16, 16), dtype=np.uint8),
                "third": rng.integers(0, 255, (n, 3, 16, 16), dtype=np.uint8),
                "proprio": rng.normal(size=(n, 3)).astype(np.float32)}

    flags = np.zeros(10, bool)
    first, last = flags.copy(), flags.copy()
    first[0], last[-1] = True, True
    demo = DemoArrays(observations=pix(10), actions=rng.uniform(-1, 1, (10, 4)).astype(np.float32),
                      rewards=np.zeros(10, np.float32), is_first=first, is_last=last)
    tr = MedalTrainer(cfg, spec, 4, (demo, demo))
    assert tr.vice.net.encoder is not None and tr.vice.net.encoder.image_keys == ("wrist",)
    assert tr.vice.net.encoder.vector_keys == ()
    tr.ingest_steps(pix(16), rng.uniform(-1, 1, (16, 4)).astype(np.float32), np.repeat([0, 1], 8),
                    np.eye(1, 16, dtype=bool)[0], np.zeros(16, bool))
    m = tr.train_step()
    assert {"vice/loss", "medal/loss", "forward/losses/critic", "backward/losses/critic"} <= set(m)
    weights = tr.publishable_weights(0)
    assert weights is not None and all(np.isfinite(v).all() for v in weights.values())


def test_end_segment_closes_the_open_segment_without_counting_a_step() -> None:
    # A goal drawn at a turn switch: the forward segment ends at what its last action led to
    # (the closing frame), the backward segment starts at the changed observation.
    tr = MedalTrainer(make_config(seed_frames=0), SPEC, 2, demos())
    tr.ingest_steps(*chunk([0, 1, 2], [0, 0, 0], first=True))
    tr.end_segment({"state": np.array([[3.0, 0.0]], np.float32)})
    tr.end_segment({"state": np.array([[9.0, 0.0]], np.float32)})  # nothing open: nothing stored
    tr.ingest_steps(*chunk([10, 11, 12], [1, 1, 1], first=True))
    assert tr.env_steps == 6 and tr.agent_steps == [3, 3] and tr.credit == [3, 3]
    assert len(tr.replay[0]) == 4 and len(tr.replay[1]) == 3
    for a in (0, 1):
        b = tr.replay[a].sample(200, np.random.default_rng(a))
        assert torch.equal(b.next_obs["state"][:, 0], b.obs["state"][:, 0] + 1)
    assert set(tr.replay[1].sample(200, np.random.default_rng(3)).obs["state"][:, 0].tolist()) == {10, 11}


def test_end_segment_in_the_seed_phase_closes_both_buffers() -> None:
    tr = MedalTrainer(make_config(seed_frames=10), SPEC, 2, demos())
    tr.ingest_steps(*chunk([0, 1, 2], [0, 0, 0], first=True))
    tr.end_segment({"state": np.array([[3.0, 0.0]], np.float32)})
    tr.ingest_steps(*chunk([20, 21], [1, 1], first=True))
    assert tr.env_steps == 5
    for a in (0, 1):
        b = tr.replay[a].sample(300, np.random.default_rng(a))
        assert torch.equal(b.next_obs["state"][:, 0], b.obs["state"][:, 0] + 1)  # 2 -> 3, never 2 -> 20
        assert set(b.obs["state"][:, 0].tolist()) == {0, 1, 2, 20}


def test_the_bc_proposal_is_trained_once_when_practice_starts_and_resumes_with_the_run(tmp_path: Path) -> None:
    cfg = dataclasses.replace(make_config(seed_frames=10),
                              agent=AgentConfig(batch_size=16, bc_proposal=True, bc_proposal_steps=300))
    fwd = demos()[FORWARD]
    a = MedalTrainer(cfg, SPEC, 2, demos(), seed=1)
    a.ingest(0, *_random_steps(5, first=True))
    assert a.train_step() == {} and a.agents[FORWARD].proposal is None  # still the seed phase
    metrics: dict[str, float] = {}
    for i in range(8):
        a.ingest(i % 2, *_random_steps(5, seed=100 + i))
        while max(a.credit) >= 1:
            metrics.update(a.train_step())
    proposal = a.agents[FORWARD].proposal
    assert proposal is not None and a.agents[BACKWARD].proposal is None
    assert 0.0 <= metrics["forward/proposal/target_fraction"] <= 1.0
    # It clones the forward demos: its squared action error is a fraction of the zero action's.
    rows = ~fwd.is_last
    obs = {"state": torch.as_tensor(fwd.observations["state"][rows])}
    act = torch.as_tensor(fwd.actions[rows])
    with torch.no_grad():
        err = float((proposal(obs) - act).pow(2).sum(-1).mean())
    assert err < 0.2 * float(act.pow(2).sum(-1).mean()), err
    # A resumed run keeps the proposal it was trained with (no second training) and updates identically.
    _save(a, tmp_path / "run")
    m_a = _run(a, 3, seed=200)  # before b exists: both trainers draw on torch's one global RNG
    b = MedalTrainer(cfg, SPEC, 2, demos(), seed=99)
    assert _restore(b, tmp_path / "run") is not None
    assert b.agents[FORWARD].proposal is not None
    for v, w in zip(proposal.state_dict().values(), b.agents[FORWARD].proposal.state_dict().values()):
        assert torch.equal(v, w)
    assert _run(b, 3, seed=200) == m_a
