"""Pixel smoke tests: the pixel-mode learner components learn from rendered door frames on CPU.

Full pixel training does not fit a CPU (0.3–0.9 updates/s), so these check the two pieces
that must work for it to work, each in well under a minute on one core:

* **VICE** (``learner.discriminators.Discriminator``, built as ``MedalTrainer`` builds it)
  separates EARL's door goal frames (the last 10 frames of each forward demo, re-rendered)
  from random-action rollouts out of the initial-state distribution, on frames it never saw
  (held-out demo episodes and rollouts), and ranks held-out goal frames above the held-out
  demos' *first* frames, which went through the same re-rendering path as the positives.
  It sees the camera only (``use_proprio=False``, as the robot profile's VICE): the hand
  position alone could separate the sets, so this proves learning from pixels.
* **BC** (``learner.bc.train_bc``) on the re-rendered demos (``doorview`` + ``proprio``, the
  task's pixel observation) predicts a held-out episode's actions far better than the zero
  action, the training mean action and its own untrained network.

Rendering (the EARL re-render dominates: ~10 s, at any image size, for driving the hand
to each of the 400 demo states) happens once per module; the module takes about 40 s and
runs in the default suite (``pytest tests/simulation/test_pixel_smoke.py -s`` prints the
metrics). ``RESETFREE_PIXEL_SMOKE_SEED`` (default 0) picks the seed of the split, the rollouts,
the initialisation and the sampling; ``RESETFREE_PIXEL_SMOKE_EVAL=1`` additionally runs the
BC policy for 5 pixel evaluation episodes and prints (does not assert) its success.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from learner.bc import BCConfig, train_bc
from learner.demo_inputs import vice_positive_rows
from learner.discriminators import Discriminator, DiscriminatorConfig
from learner.networks import NetworkConfig, build_actor
from protocol.demos import Demos
from simulation.tools.demos_cli import import_earl
from simulation.evaluation import evaluate
from simulation.app.evaluator import space_obs_spec
from simulation.tools.policies import Policy
from simulation.tasks import make

EARL = Path(os.environ.get("RESETFREE_EARL_DEMOS") or Path(__file__).resolve().parents[3] / "shared" / "earl-demos")
DOOR_FORWARD = EARL / "door_forward.npz"
SEED = int(os.environ.get("RESETFREE_PIXEL_SMOKE_SEED", "0"))
IMAGE_SIZE = 48
"""The smallest side the DrQ-v2 encoder and a ±4 px random shift handle comfortably; the door
is still clearly visible (rendering cost barely depends on it: the re-render dominates)."""
CAMERA = "doorview"
GOAL_FRAMES = 10
ROLLOUTS, ROLLOUT_STEPS, HELD_OUT_ROLLOUTS = 8, 40, 3

pytestmark = [
    pytest.mark.skipif(not DOOR_FORWARD.is_file(), reason=f"EARL demos not found at {EARL}"),
]


@dataclass(frozen=True)
class DoorPixels:
    demos: Demos
    """EARL's 5 door forward demos, re-rendered (``doorview`` + ``proprio``)."""
    episode: np.ndarray
    """Demo episode index of each demo row."""
    negatives: dict[str, np.ndarray]
    """Frames of random-action rollouts from the initial-state distribution."""
    rollout: np.ndarray
    """Rollout index of each negative frame."""
    obs_spec: dict[str, tuple[tuple[int, ...], str]]


@pytest.fixture(scope="module")
def door_pixels() -> DoorPixels:
    started = time.perf_counter()
    demos = import_earl(DOOR_FORWARD, "door", "forward", render_pixels=True, image_size=IMAGE_SIZE)
    rendered = time.perf_counter()
    env = make("door", obs="pixels", image_size=IMAGE_SIZE)
    rng = np.random.default_rng(SEED)
    frames: list[dict[str, np.ndarray]] = []
    rollout: list[int] = []
    try:
        for index in range(ROLLOUTS):
            observation, _ = env.reset(seed=1000 * SEED + index, options={"init": "initial"})
            frames.append(observation)
            for _ in range(ROLLOUT_STEPS):
                observation, *_ = env.step(rng.uniform(-1.0, 1.0, env.action_space.shape).astype(np.float32))
                frames.append(observation)
            rollout += [index] * (ROLLOUT_STEPS + 1)
        spec = space_obs_spec(env.observation_space)
    finally:
        env.close()
    print(f"\nrender: EARL re-render {rendered - started:.1f} s ({demos.num_steps} frames), "
          f"rollouts {time.perf_counter() - rendered:.1f} s ({len(frames)} frames) at {IMAGE_SIZE}x{IMAGE_SIZE}")
    negatives = {k: np.stack([f[k] for f in frames]) for k in spec}
    return DoorPixels(demos=demos, episode=np.cumsum(demos.is_first) - 1, negatives=negatives,
                      rollout=np.asarray(rollout), obs_spec=spec)


def _rows(arrays: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v[rows])) for k, v in arrays.items()}


def test_vice_tells_held_out_goal_frames_from_random_rollouts(door_pixels: DoorPixels) -> None:
    data, demos = door_pixels, door_pixels.demos
    rng = np.random.default_rng(SEED)
    held_demos = rng.choice(demos.num_episodes, size=2, replace=False)
    held_rollouts = rng.choice(ROLLOUTS, size=HELD_OUT_ROLLOUTS, replace=False)
    goal = vice_positive_rows(demos, GOAL_FRAMES, "last_frames")
    pos_train, pos_test = goal[~np.isin(data.episode[goal], held_demos)], goal[np.isin(data.episode[goal], held_demos)]
    neg_train = np.flatnonzero(~np.isin(data.rollout, held_rollouts))
    neg_test = np.flatnonzero(np.isin(data.rollout, held_rollouts))
    starts = np.flatnonzero(demos.is_first)
    first_frames = np.concatenate([np.arange(starts[e], starts[e] + GOAL_FRAMES) for e in held_demos])

    torch.manual_seed(SEED)
    cfg = DiscriminatorConfig(batch_size=32, share_encoder=False, use_proprio=False)
    vice = Discriminator(data.obs_spec, cfg, "cpu", name="vice")
    vice.set_input_stats({"proprio": torch.from_numpy(demos.observations["proprio"])})  # as MedalTrainer does
    pos = {k: torch.from_numpy(v) for k, v in demos.observations.items()}
    neg = {k: torch.from_numpy(v) for k, v in data.negatives.items()}

    def held_out() -> dict[str, float]:
        lp = vice.logits(_rows(demos.observations, pos_test))
        ln = vice.logits(_rows(data.negatives, neg_test))
        lf = vice.logits(_rows(demos.observations, first_frames))
        return {"accuracy": 0.5 * float((lp > 0).float().mean() + (ln <= 0).float().mean()),
                "logit_pos": float(lp.mean()), "logit_neg": float(ln.mean()), "logit_first": float(lf.mean()),
                "first_as_negative": float((lf <= 0).float().mean())}

    before = held_out()
    started = time.perf_counter()
    half = cfg.batch_size // 2
    for _ in range(200):  # MedalTrainer._disc_round's sampling: uniform positives, uniform negatives
        p = torch.from_numpy(rng.choice(pos_train, size=half))
        n = torch.from_numpy(rng.choice(neg_train, size=half))
        metrics = vice.update({k: v[p] for k, v in pos.items()}, {k: v[n] for k, v in neg.items()})
    after = held_out()
    print(f"\nVICE seed {SEED}: 200 updates in {time.perf_counter() - started:.1f} s, last loss {metrics['loss']:.3f}; "
          f"held-out ({len(pos_test)} goal, {len(neg_test)} rollout, {len(first_frames)} first frames) "
          f"before {_fmt(before)} after {_fmt(after)}")
    assert before["accuracy"] <= 0.75  # an untrained discriminator is at chance
    assert after["accuracy"] >= 0.9
    assert after["logit_pos"] > after["logit_neg"] + 1.0
    # Not just "re-rendered demo vs simulated": the demos' own start frames read as non-goal.
    assert after["logit_pos"] > after["logit_first"] + 1.0
    assert after["first_as_negative"] >= 0.8


def test_bc_from_rendered_demos_beats_untrained_and_constant_actions(door_pixels: DoorPixels) -> None:
    demos = door_pixels.demos
    held = int(np.random.default_rng(SEED).integers(demos.num_episodes))
    train = door_pixels.episode != held
    test = np.flatnonzero((door_pixels.episode == held) & ~demos.is_last)  # last rows' actions are padding
    net = NetworkConfig(conv_channels=16, feature_dim=32, hidden_dim=128)
    bc_cfg = BCConfig(steps=300, batch_size=32, lr=1e-3, seed=SEED)
    started = time.perf_counter()
    trained = train_bc({k: v[train] for k, v in demos.observations.items()}, demos.actions[train],
                       demos.is_last[train], door_pixels.obs_spec, net, bc_cfg)
    train_s = time.perf_counter() - started
    torch.manual_seed(SEED)  # BCPolicy's initialisation: the network before its first step
    untrained = build_actor(door_pixels.obs_spec, demos.actions.shape[1], net).state_dict()

    target = demos.actions[test]

    def mse(pred: np.ndarray) -> float:
        return float(((pred - target) ** 2).sum(-1).mean())

    def policy(state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
        network = build_actor(door_pixels.obs_spec, demos.actions.shape[1], net)
        network.load_state_dict(state_dict)
        return network.eval()

    def predict(state_dict: dict[str, torch.Tensor]) -> np.ndarray:
        with torch.no_grad():
            return policy(state_dict)(_rows(demos.observations, test)).numpy()

    train_actions = demos.actions[train][~demos.is_last[train]]
    result = {"trained": mse(predict(trained)), "untrained": mse(predict(untrained)),
              "zero": mse(np.zeros_like(target)), "train_mean": mse(train_actions.mean(0, keepdims=True))}
    print(f"\nBC seed {SEED}: 300 steps in {train_s:.1f} s; held-out episode {held} ({len(test)} steps) "
          f"action MSE {_fmt(result)}")
    assert result["trained"] < 0.5 * result["untrained"]
    assert result["trained"] < 0.5 * result["zero"]
    assert result["trained"] < 0.6 * result["train_mean"]
    if os.environ.get("RESETFREE_PIXEL_SMOKE_EVAL") == "1":
        runnable = Policy(network=policy(trained), obs_spec=door_pixels.obs_spec, kind="bc", path=Path("bc-smoke"))
        outcome = evaluate(runnable, "door", episodes=5, obs="pixels", seed=SEED, stop_on_success=True,
                           env_kwargs={"image_size": IMAGE_SIZE})
        print(f"BC seed {SEED}: 5 pixel evaluation episodes, success {outcome.successes} "
              f"({outcome.success_rate:.1f}) in {outcome.wall_s:.1f} s")


def _fmt(values: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k} {v:.3f}" for k, v in values.items()) + "}"
