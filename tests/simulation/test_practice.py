"""simulation.app.practice: the in-process MEDAL++ loop, the BC baseline and the state preset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from learner.bc import BCConfig
from protocol.demos import DemoFormatError, load_demos, save_demos
from learner.config import LearnerConfig, profile
from learner.networks import NetworkConfig
from simulation.app.practice import (
    PracticeConfig, bc_baseline, load_task_demos, practice, practice_config, state_spec,
)
from protocol.messages import BACKWARD, FORWARD
from simulation.earl_import import BUNDLED_DEMOS
from simulation.tasks import make, task_info
from simulation.tasks.door import GOAL as door_goal

torch.set_num_threads(1)

PRESET = Path(__file__).resolve().parents[2] / "simulation" / "configs" / "tabletop_state.toml"

TINY = [
    "network.hidden_dim=32", "network.num_critics=2",
    "agent.batch_size=32", "replay.batch_size=32", "replay.demo_per_batch=8", "replay.capacity=2000",
    "vice.batch_size=32", "vice.hidden_dim=16", "vice.updates_every=50", "vice.updates_per_round=2",
    "medal.batch_size=32", "medal.hidden_dim=16", "medal.updates_every=50", "medal.updates_per_round=2",
    "schedule.seed_frames=100", "switch.interval=60",
]


@pytest.fixture(scope="module")
def tabletop_demos() -> tuple:
    return (load_task_demos("tabletop", "forward", source="expert", episodes=2),
            load_task_demos("tabletop", "backward", source="expert", episodes=2))


def test_practice_runs_switches_resets_and_evaluates(tabletop_demos: tuple) -> None:
    cfg = profile("sim").with_overrides(TINY)
    seen = []
    pcfg = PracticeConfig(task="tabletop", max_env_steps=330, eval_every=150, eval_episodes=1, reset_every=100)
    result = practice(cfg, pcfg, tabletop_demos, on_eval=seen.append)
    assert result.env_steps == 330
    # UTD 1 after 100 seed frames: one update per later step (each agent for its own steps);
    # the trainer also credits the closing row it stores at each of the 3 scheduled resets.
    assert result.updates == 330 - 100 + 3
    assert result.env_resets == 3
    assert [p.env_steps for p in result.curve] == [150, 300, 330]  # every 150 steps, plus the end
    # agents' turns (60 steps each, forward first) that ended in each evaluation's window
    turns = [(p.metrics["practice/forward_turns"], p.metrics["practice/backward_turns"]) for p in result.curve]
    assert turns == [(1, 1), (2, 1), (0, 0)]
    for point in result.curve[:2]:
        m = point.metrics
        assert 0.0 <= m["practice/backward_turns_reached"] <= 1.0
        assert m["practice/backward_turns_started_away"] <= m["practice/backward_turns"]
    assert "practice/forward_turns_reached" not in result.curve[2].metrics
    assert seen == result.curve
    assert all(0.0 <= p.success_rate <= 1.0 for p in result.curve)
    assert result.train_minutes > 0 and result.eval_minutes > 0
    assert result.to_dict()["final_success"] == result.final_success


@pytest.mark.parametrize("goal_per_turn", [True, False])
def test_practice_draws_a_goal_per_forward_turn_and_no_transition_crosses_it(
        tabletop_demos: tuple, goal_per_turn: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import simulation.app.practice as practice_module

    trainers = []
    real = practice_module.MedalTrainer
    monkeypatch.setattr(practice_module, "MedalTrainer", lambda *a, **k: trainers.append(real(*a, **k)) or trainers[-1])
    cfg = profile("sim").with_overrides(TINY)  # turns of 60 steps, 100 seed frames
    pcfg = PracticeConfig(task="tabletop", max_env_steps=1200, eval_every=10**6, eval_episodes=1, reset_every=0,
                          goal_per_turn=goal_per_turn)
    result = practice(cfg, pcfg, tabletop_demos)
    assert result.env_resets == 0 and result.updates == 1200 - 100  # a drawn goal is no step
    (trainer,) = trainers
    goals = set()
    for agent in (FORWARD, BACKWARD):
        buffer = trainer.replay[agent]
        batch = buffer.gather(buffer.valid_rows())
        obs, nxt = batch.obs["state"].numpy(), batch.next_obs["state"].numpy()
        np.testing.assert_array_equal(obs[:, 6:], nxt[:, 6:])  # the goal never changes within a transition
        # and no step is left without its successor: only closing frames and the newest step end nowhere
        stored = np.arange(len(buffer))
        dangling = np.setdiff1d(stored[~buffer._is_last[stored]], buffer.valid_rows())
        assert len(dangling) <= 1, f"{len(dangling)} steps of agent {agent} lost their transition"
        goals |= {tuple(g) for g in obs[:, 8:10]}
    # 10 forward turns with no reset: one goal, or (drawn per turn) all four with near certainty
    assert len(goals) == (4 if goal_per_turn else 1)


def test_practice_stops_on_the_wall_clock_budget(tabletop_demos: tuple) -> None:
    cfg = profile("sim").with_overrides(TINY)
    pcfg = PracticeConfig(task="tabletop", max_env_steps=10**6, max_minutes=0.02, eval_every=10**6,
                          eval_episodes=1)
    result = practice(cfg, pcfg, tabletop_demos)
    assert 0 < result.env_steps < 10**6
    assert 0.02 <= result.train_minutes < 0.2
    assert result.curve == []  # a stop is no evaluation: a run with a run_dir resumes from it


def test_practice_checkpoints_and_resumes_where_it_stopped(tabletop_demos: tuple, tmp_path: Path) -> None:
    cfg = profile("sim").with_overrides(TINY)
    stops = iter([False] * 229 + [True])  # stop after 230 steps, between two evaluations
    first = practice(cfg, PracticeConfig(task="tabletop", max_env_steps=400, eval_every=100, eval_episodes=1,
                                         run_dir=tmp_path), tabletop_demos, should_stop=lambda: next(stops))
    assert first.env_steps == 230 and [p.env_steps for p in first.curve] == [100, 200]
    second = practice(cfg, PracticeConfig(task="tabletop", max_env_steps=400, eval_every=100, eval_episodes=1,
                                          run_dir=tmp_path), tabletop_demos)
    assert second.env_steps == 400 and [p.env_steps for p in second.curve] == [100, 200, 300, 400]
    assert second.updates == 400 - 100  # the resumed trainer kept its counters: one update a step
    assert second.curve[:2] == first.curve  # read back from curve.jsonl
    assert second.train_minutes > first.train_minutes


needs_earl_demos = pytest.mark.skipif(not (BUNDLED_DEMOS / "tabletop_forward.npz").is_file(),
                                      reason=f"EARL demos not found at {BUNDLED_DEMOS}")


@needs_earl_demos
def test_practice_rejects_demos_of_another_task(tabletop_demos: tuple) -> None:
    door = load_task_demos("door", "forward", source="earl", episodes=1)
    with pytest.raises(ValueError, match="state shape"):
        practice(profile("sim").with_overrides(TINY), PracticeConfig(task="tabletop", max_env_steps=5),
                 (door, tabletop_demos[1]))


def test_bc_baseline_learns_the_expert_on_tabletop(tabletop_demos: tuple) -> None:
    # BC from 2 scripted episodes, enough steps to fit them: the evaluation protocol scores it.
    result = bc_baseline("tabletop", tabletop_demos[0], NetworkConfig(hidden_dim=64),
                         BCConfig(steps=300, batch_size=64, augment_pad=0), episodes=2)
    assert len(result.successes) == 2 and 0.0 <= result.success_rate <= 1.0


@needs_earl_demos
def test_load_task_demos_sources() -> None:
    earl = load_task_demos("tabletop", "forward", source="earl")
    assert earl.num_episodes == 12 and earl.observations["state"].shape[1:] == state_spec("tabletop")["state"][0]
    three = load_task_demos("tabletop", "forward", source="earl", episodes=3)
    assert three.num_episodes == 3
    np.testing.assert_array_equal(three.actions, earl.actions[: three.num_steps])
    with pytest.raises(ValueError, match="episodes"):
        load_task_demos("tabletop", "forward", source="earl", episodes=13)
    with pytest.raises(ValueError, match="source"):
        load_task_demos("tabletop", "forward", source="nowhere")


def test_load_task_demos_from_a_run_directory_picks_the_direction(tabletop_demos: tuple, tmp_path) -> None:
    forward, backward = tabletop_demos
    save_demos(tmp_path / "tabletop_forward.npz", forward)
    save_demos(tmp_path / "tabletop_backward.npz", backward)
    got = load_task_demos("tabletop", "backward", source=str(tmp_path), episodes=1)
    np.testing.assert_array_equal(got.actions, backward.episode(0).actions)
    with pytest.raises(DemoFormatError, match="door_forward.npz: no such file"):
        load_task_demos("door", "forward", source=str(tmp_path))


@pytest.mark.parametrize("field,value", [("task", "chess"), ("eval_every", 0), ("max_minutes", 0.0),
                                         ("reset_every", -1), ("max_env_steps", True)])
def test_practice_config_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field if field != "task" else "chess"):
        PracticeConfig(**{field: value})


def test_state_preset_loads_over_the_sim_profile() -> None:
    cfg = LearnerConfig.from_toml(PRESET, base=profile("sim"))
    assert cfg.profile == "sim"
    assert cfg != profile("sim")
    assert cfg.replay.batch_size == cfg.agent.batch_size


def test_practice_config_is_profile_then_preset_then_overrides() -> None:
    cfg = practice_config("door", seed=4, overrides=["agent.lr=1e-4"])
    assert cfg.seed == 4 and cfg.agent.lr == 1e-4
    assert cfg.network.hidden_dim == 256 and cfg.schedule.vice_reward_form == "log_d"  # the door preset
    assert cfg.schedule.seed_frames == profile("sim").schedule.seed_frames


def test_earl_demos_ship_with_the_package() -> None:
    # EARL's own sets (door 5+5, peg 10+20, tabletop 12+12), every episode successful; the
    # backward sets hold one copy of each episode per forward goal (tabletop has four).
    for task, counts in {"door": (5, 5), "peg": (10, 20), "tabletop": (12, 12)}.items():
        copies = {"forward": 1, "backward": len(task_info(task).state_goals)}
        for direction, episodes in zip(("forward", "backward"), counts):
            demos = load_task_demos(task, direction, source="earl")
            assert demos.num_episodes == episodes * copies[direction] and demos.episode_success.all()


@pytest.mark.parametrize("task", ["door", "peg", "tabletop"])
def test_shipped_demo_states_end_with_a_goal_the_twin_shows(task: str) -> None:
    # The backward agent sees the forward goal in its state; a demo ending with another goal
    # (EARL's backward sets as recorded) is a state it never visits, and BC on it never resets.
    goals = np.asarray(task_info(task).state_goals, dtype=np.float32)
    env = make(task, obs="state")
    try:
        shown = {tuple(env.reset(seed=s, options={"init": init})[0][-goals.shape[1]:])
                 for s in range(40) for init in ("initial", "goal")}
    finally:
        env.close()
    assert shown == {tuple(goal) for goal in goals}  # the declared goals are the ones the twin shows
    for direction in ("forward", "backward"):
        tails = load_task_demos(task, direction, source="earl").observations["state"][:, -goals.shape[1]:]
        assert {tuple(row) for row in tails} <= {tuple(goal) for goal in goals}, direction
    one_demo = load_demos(BUNDLED_DEMOS / "door_one_demo" / "door_backward.npz").observations["state"]
    assert {tuple(row) for row in one_demo[:, 7:]} == {tuple(np.asarray(door_goal, dtype=np.float32))}


def test_turn_tally_counts_resets_only_from_turns_that_started_away() -> None:
    from protocol.messages import BACKWARD
    from simulation.app.practice_curve import TurnTally

    tally = TurnTally()
    tally.add(BACKWARD, True, True)  # already in the initial configuration: not a reset
    tally.add(BACKWARD, False, True)  # brought back: a reset without a human
    tally.add(BACKWARD, False, False)  # left away: a human would have had to step in
    assert tally.pop() == {"practice/forward_turns": 0.0, "practice/forward_turns_started_away": 0.0,
                           "practice/backward_turns": 3.0, "practice/backward_turns_started_away": 2.0,
                           "practice/backward_turns_reached": 2 / 3, "practice/backward_turns_away_reached": 0.5}
    assert tally.pop()["practice/backward_turns"] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("task", ["door", "peg"])
def test_bc_on_the_shipped_backward_demos_resets_from_the_goal(task: str) -> None:
    # What the relabelled goal half buys: before it, this BC reset 0 of 20 (door, peg; 2 seeds).
    from learner.bc import train_bc_from_demos
    from learner.networks import build_actor

    demos = load_task_demos(task, "backward", source="earl")
    spec = state_spec(task)
    net = practice_config(task, seed=0).network
    policy = build_actor(spec, demos.action_dim, net)
    policy.load_state_dict(train_bc_from_demos(demos, spec, net, BCConfig(steps=5000, seed=0)))
    policy.eval()
    env = make(task, obs="state")
    resets = 0
    try:
        for episode in range(20):
            observation, info = env.reset(seed=1000 + episode, options={"init": "goal"})
            for _ in range(200):  # one backward turn
                with torch.no_grad():
                    action = policy({"state": torch.as_tensor(observation)[None]})[0].numpy()
                observation, _, _, _, info = env.step(action)
                if info["backward_success"]:
                    resets += 1
                    break
    finally:
        env.close()
    assert resets >= 16, f"{task}: BC on the backward demos reset {resets} of 20 from the goal"
