"""``resetfree-bench learner``: REDQ updates/s from pixels and state, against a naive reference.

The pixel workload is the project's: two 84×84 RGB cameras + proprio, batch 256, 5 critics,
one update = sampling from a uint8 replay (``learner.replay.ReplayBuffer``), augmentation,
the critic step and the actor step. The naive reference builds the same networks the way
common reference implementations do (DrQ-v2 / REDQ code): float32 frames in a replay that
stores obs and next_obs, ``grid_sample`` augmentation on floats, one conv call per camera,
a Python list of separately built critics evaluated in a loop, and default glibc malloc.
It runs first (before the allocator is tuned), in the same process on the same machine.

Prints progress, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from learner.agent import AgentConfig, RedqAgent, tune_cpu_allocator
from learner.batch import Batch
from learner.networks import Actor, NetworkConfig, weight_init
from protocol.spaces import ObsSpec
from learner.replay import ReplayBuffer

logger = logging.getLogger(__name__)

IMG = 84
ACTION_DIM = 4
PIXEL_SPEC: ObsSpec = {
    "wrist": ((3, IMG, IMG), "uint8"),
    "third_person": ((3, IMG, IMG), "uint8"),
    "proprio": ((8,), "float32"),
}
STATE_SPEC: ObsSpec = {"state": ((39,), "float32")}


# ---------------------------------------------------------------------- naive reference
class NaiveReplay:
    """float32 frames, obs and next_obs stored separately (as many SAC/DrQ replays do)."""

    def __init__(self, spec: ObsSpec, capacity: int, rng: np.random.Generator) -> None:
        self.obs = {k: rng.integers(0, 256, (capacity, *s)).astype(np.float32) if d == "uint8"
                    else rng.normal(size=(capacity, *s)).astype(np.float32) for k, (s, d) in spec.items()}
        self.next_obs = {k: v.copy() for k, v in self.obs.items()}
        self.action = rng.uniform(-1, 1, (capacity, ACTION_DIM)).astype(np.float32)
        self.capacity = capacity

    def sample(self, n: int, rng: np.random.Generator) -> Batch:
        idx = rng.integers(0, self.capacity, n)
        return Batch(obs={k: torch.from_numpy(v[idx]) for k, v in self.obs.items()},
                     action=torch.from_numpy(self.action[idx]),
                     next_obs={k: torch.from_numpy(v[idx]) for k, v in self.next_obs.items()},
                     discount=torch.full((n,), 0.99), is_demo=torch.zeros(n, dtype=torch.bool))


def naive_shift(x: Tensor, pad: int = 4) -> Tensor:
    """DrQ-v2's RandomShiftsAug verbatim in spirit: replicate pad + grid_sample on floats."""
    n, _, h, w = x.shape
    x = F.pad(x, (pad,) * 4, mode="replicate")
    eps = 1.0 / (h + 2 * pad)
    arange = torch.linspace(-1.0 + eps, 1.0 - eps, h + 2 * pad)[:h]
    arange = arange.unsqueeze(0).repeat(h, 1).unsqueeze(2)
    base = torch.cat([arange, arange.transpose(1, 0)], dim=2).unsqueeze(0).repeat(n, 1, 1, 1)
    shift = torch.randint(0, 2 * pad + 1, (n, 1, 1, 2)).float() * 2.0 / (h + 2 * pad)
    return F.grid_sample(x, base + shift, padding_mode="zeros", align_corners=False)


class NaiveEncoder(nn.Module):
    """One DrQ-v2 conv per camera call (shared weights), then projection + proprio."""

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        ch = cfg.conv_channels
        self.convnet = nn.Sequential(nn.Conv2d(3, ch, 3, 2), nn.ReLU(), nn.Conv2d(ch, ch, 3, 1), nn.ReLU(),
                                     nn.Conv2d(ch, ch, 3, 1), nn.ReLU(), nn.Conv2d(ch, ch, 3, 1), nn.ReLU())
        conv_dim = self.convnet(torch.zeros(1, 3, IMG, IMG)).numel()
        self.projection = nn.Sequential(nn.Linear(2 * conv_dim, cfg.feature_dim), nn.LayerNorm(cfg.feature_dim), nn.Tanh())
        self.repr_dim = cfg.feature_dim + 8
        self.apply(weight_init)

    def forward(self, obs: dict[str, Tensor]) -> Tensor:
        feats = [self.convnet(obs[k] / 255.0 - 0.5).flatten(1) for k in ("third_person", "wrist")]
        return torch.cat([self.projection(torch.cat(feats, 1)), obs["proprio"]], 1)


class NaiveAgent:
    """REDQ as reference code writes it: a list of critics, loops, no frozen critic grads."""

    def __init__(self, cfg: NetworkConfig) -> None:
        self.cfg = cfg
        self.encoder = NaiveEncoder(cfg)
        rd = self.encoder.repr_dim
        self.actor = Actor(rd, ACTION_DIM, cfg)

        def critic() -> nn.Module:
            return nn.Sequential(nn.Linear(rd + ACTION_DIM, cfg.hidden_dim), nn.ReLU(),
                                 nn.Linear(cfg.hidden_dim, cfg.hidden_dim), nn.ReLU(), nn.Linear(cfg.hidden_dim, 1))

        self.critics = nn.ModuleList([critic() for _ in range(cfg.num_critics)])
        self.targets = nn.ModuleList([critic() for _ in range(cfg.num_critics)])
        self.targets.load_state_dict(self.critics.state_dict())
        self.critic_opt = torch.optim.Adam([*self.encoder.parameters(), *self.critics.parameters()], lr=3e-4)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=3e-4)

    def update(self, batch: Batch, reward: Tensor) -> None:
        obs = {k: naive_shift(v) if v.dim() == 4 else v for k, v in batch.obs.items()}
        nxt = {k: naive_shift(v) if v.dim() == 4 else v for k, v in batch.next_obs.items()}
        h = self.encoder(obs)
        with torch.no_grad():
            h_next = self.encoder(nxt)
            a_next = self.actor.sample(h_next, noise_clip=0.3)[0]
            idx = np.random.choice(self.cfg.num_critics, self.cfg.num_min_target, replace=False)
            q_next = torch.min(torch.cat([self.targets[i](torch.cat([h_next, a_next], 1)) for i in idx], 1), 1).values
            target = reward + batch.discount * q_next
        qs = [c(torch.cat([h, batch.action], 1)).squeeze(-1) for c in self.critics]
        loss = sum(F.mse_loss(q, target) for q in qs)
        self.critic_opt.zero_grad()
        loss.backward()
        self.critic_opt.step()
        hd = h.detach()
        a = self.actor.sample(hd, noise_clip=0.3)[0]
        q_pi = torch.stack([c(torch.cat([hd, a], 1)).squeeze(-1) for c in self.critics]).mean(0)
        self.actor_opt.zero_grad()
        (-q_pi.mean()).backward()
        self.actor_opt.step()
        with torch.no_grad():
            for p, tp in zip(self.critics.parameters(), self.targets.parameters()):
                tp.data.lerp_(p.data, 0.005)


# ---------------------------------------------------------------------- measurement
def filled_replay(spec: ObsSpec, capacity: int, rng: np.random.Generator) -> ReplayBuffer:
    """Returns a ``learner.replay.ReplayBuffer`` filled with random steps (one stream)."""
    buf = ReplayBuffer(spec, ACTION_DIM, capacity)
    chunk = 500
    for start in range(0, capacity, chunk):
        n = min(chunk, capacity - start)
        obs = {k: rng.integers(0, 256, (n, *s), dtype=np.uint8) if d == "uint8"
               else rng.normal(size=(n, *s)).astype(np.float32) for k, (s, d) in spec.items()}
        first = np.zeros(n, bool)
        first[0] = start == 0
        buf.add_steps(obs, rng.uniform(-1, 1, (n, ACTION_DIM)).astype(np.float32), first, np.zeros(n, bool))
    return buf


def rate(step: Callable[[], None], warmup: int, updates: int, label: str) -> float:
    """Runs ``step`` ``warmup`` then ``updates`` times; returns updates per second."""
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(updates):
        step()
    per_s = updates / (time.perf_counter() - start)
    logger.info("%-28s %.3f updates/s", label, per_s)
    return per_s


def agent_rate(spec: ObsSpec, buf: ReplayBuffer, device: str, updates: int, warmup: int,
               label: str, **agent_kw: object) -> float:
    """Updates/s of :class:`RedqAgent` (sampling included) on ``device``."""
    agent = RedqAgent(spec, ACTION_DIM, AgentConfig(**agent_kw), NetworkConfig(), device)
    rng = np.random.default_rng(1)
    counter = {"step": 0}

    def step() -> None:
        batch = buf.sample(256, rng)
        if device != "cpu":
            batch = batch.to(device, non_blocking=True)
        counter["step"] += 1
        agent.update(batch, torch.randn(256, device=device), bc_weight=1.0, step=counter["step"])

    return rate(step, warmup, updates, label)


def main(argv: list[str]) -> int:
    """Runs the learner benchmark; prints one JSON object last. Returns 0. Blocks for minutes."""
    parser = argparse.ArgumentParser(prog="resetfree-bench learner", description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--quick", action="store_true", help="a few updates per measurement")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda: where the CUDA figure runs")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads on CPU")
    parser.add_argument("--updates", type=int, default=None, help="timed updates per pixel measurement")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    updates = args.updates or (3 if args.quick else 15)
    warmup = 1 if args.quick else 2
    capacity = 1000 if args.quick else 4000
    rng = np.random.default_rng(0)
    results: dict[str, object] = {"threads": args.threads, "batch_size": 256, "num_critics": 5,
                                  "timed_updates": updates}

    logger.info("naive reference (float32 replay, critic loop, default malloc)")
    naive, naive_buf = NaiveAgent(NetworkConfig()), NaiveReplay(PIXEL_SPEC, 600, rng)
    results["naive_updates_per_s"] = rate(
        lambda: naive.update(naive_buf.sample(256, rng), torch.randn(256)), warmup, updates, "naive pixels")
    del naive, naive_buf

    logger.info("filling a uint8 replay of %d steps", capacity)
    buf = filled_replay(PIXEL_SPEC, capacity, rng)
    report = buf.memory_report()
    results["replay_bytes_per_transition"] = report["total_bytes"] / buf.capacity
    results["raw_frame_bytes_per_transition"] = report["frame_bytes"] / buf.capacity
    results["replay_ratio"] = report["ratio"]
    results["replay_source"] = "learner.replay.ReplayBuffer"

    results["updates_per_s_fp32_default_malloc"] = agent_rate(
        PIXEL_SPEC, buf, "cpu", updates, warmup, "pixels fp32, default malloc", encoder_bf16=False)
    results["allocator_tuned"] = tune_cpu_allocator()
    results["updates_per_s_fp32"] = agent_rate(
        PIXEL_SPEC, buf, "cpu", updates, warmup, "pixels fp32, tuned malloc", encoder_bf16=False)
    results["updates_per_s"] = agent_rate(
        PIXEL_SPEC, buf, "cpu", updates, warmup, "pixels bf16 encoder (default)", encoder_bf16=True)
    results["speedup"] = results["updates_per_s"] / results["naive_updates_per_s"]
    results["speedup_fp32"] = results["updates_per_s_fp32"] / results["naive_updates_per_s"]

    state_buf = filled_replay(STATE_SPEC, capacity, rng)
    results["state_updates_per_s"] = agent_rate(
        STATE_SPEC, state_buf, "cpu", updates * 4, warmup, "state")

    want_cuda = args.device in ("auto", "cuda") or args.device.startswith("cuda:")
    if want_cuda and torch.cuda.is_available():
        dev = "cuda" if args.device == "auto" else args.device
        results["updates_per_s_cuda"] = agent_rate(PIXEL_SPEC, buf, dev, updates * 5, warmup, "pixels cuda")
        results["cuda_device"] = torch.cuda.get_device_name(torch.device(dev))
    elif args.device.startswith("cuda"):
        logger.warning("--device %s requested but CUDA is not available", args.device)
    print(json.dumps(results, sort_keys=True))
    return 0
