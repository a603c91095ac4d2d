"""The MEDAL++ trainer: two REDQ agents, their replay and demo buffers, VICE and MEDAL.

Sharma et al. 2023 (MEDAL++): the forward agent is rewarded by VICE (positives: goal frames of
the forward demos), the backward agent by MEDAL (positives: demo states), each agent trains
REDQ with demo oversampling and a behaviour-cloning term that decays linearly. Rewards are
computed here at sampling time with the current discriminators, never stored.

`train_step()` is one labelled recipe: discriminator rounds that are due → one update of
each agent that has update credit (credit = `update_to_data` per ingested step after the
seed frames). Everything that makes the next update what it is — networks, optimisers,
discriminators, counters, RNG states (torch, numpy, python) and, optionally, replay — is in
`state_dict()`, so a restored trainer makes bit-for-bit the update an uninterrupted one
would (on CPU).

The schedule it follows (seed frames, the BC weight's decay, VICE's positives) is
`learner.schedule.ScheduleConfig`; what it takes from the demos (demo buffers, VICE positive
rows, the discriminators' input statistics) is built by `learner.demo_inputs`.
"""

import copy
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import numpy as np
import torch

from learner.agent import RedqAgent
from learner.agent_config import AgentConfig
from learner.demo_inputs import DemoData, demo_buffer, demo_states, vice_positive_rows
from learner.discriminators import Discriminator, DiscriminatorConfig
from learner.errors import DiscriminatorError, TrainerError
from learner.networks import NetworkConfig
from learner.proposal import train_proposal
from learner.replay import ReplayBuffer, ReplayConfig, sample_mixed
from learner.rewards import medal_reward, vice_reward
from learner.schedule import ScheduleConfig
from protocol.messages import BACKWARD, FORWARD, TransitionBatch
from protocol.spaces import ObsSpec

logger = logging.getLogger(__name__)

_SEED = 2
"""Stream state: the stream's last step was a seed-phase step (stored in both buffers)."""


class TrainerSections(Protocol):
    """The config sections the trainer reads (`learner.config.LearnerConfig` has them)."""

    network: NetworkConfig
    agent: AgentConfig
    replay: ReplayConfig
    vice: DiscriminatorConfig
    medal: DiscriminatorConfig
    schedule: ScheduleConfig


class MedalTrainer:
    """Owns both agents, their buffers and both discriminators; not thread-safe.

    Size: one responsibility, the MEDAL++ step (ingest → discriminator rounds → agent updates),
    whose parts share one state — step counters, update credit, stream state, the discriminator
    schedule, the RNGs — that `state_dict()` must capture whole for a bit-for-bit resume; its
    schedule config and its demo inputs are modules of their own.

    `ingest*` and `train_step` block for their work (a `train_step` for at most one update per
    agent plus one round per due discriminator). Agents: 0 forward, 1 backward.
    """

    def __init__(
        self,
        config: TrainerSections,
        obs_spec: ObsSpec,
        action_dim: int,
        demos: tuple[DemoData | None, DemoData | None],
        device: torch.device | str = "cpu",
        *,
        seed: int = 0,
    ) -> None:
        self.config = config
        self.sched = config.schedule
        self.obs_spec = dict(obs_spec)
        self.action_dim = action_dim
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        if demos[FORWARD] is None:
            raise TrainerError("forward demos are required: VICE's positives come from them")
        gamma = config.agent.gamma
        self.agents = [RedqAgent(obs_spec, action_dim, config.agent, config.network, self.device, role=role)
                       for role in ("forward", "backward")]
        self.replay = [ReplayBuffer(obs_spec, action_dim, config.replay.capacity, discount=gamma) for _ in range(2)]
        # The backward agent's demos: forward and backward ones (the authors' code), or its own.
        backward_demos = [d for d in (demos if self.sched.backward_demos == "both" else (demos[BACKWARD],))
                          if d is not None]
        self.demo_buffers: list[ReplayBuffer | None] = [
            demo_buffer([demos[FORWARD]], self.obs_spec, action_dim, gamma),
            demo_buffer(backward_demos, self.obs_spec, action_dim, gamma)]
        fwd = demos[FORWARD]
        rows = vice_positive_rows(fwd, self.sched.goal_frames, self.sched.vice_positives)
        if len(rows) == 0:
            raise TrainerError("forward demos yield no VICE positives")
        self.vice_pos = {k: torch.from_numpy(np.ascontiguousarray(np.asarray(v)[rows])) for k, v in fwd.observations.items()}
        # MEDAL positives: every forward demo state (as the authors' code does).
        self.medal_pos = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in fwd.observations.items()}
        self.vice = Discriminator(obs_spec, config.vice, self.device, shared_encoder=self._vice_encoder(), name="vice")
        self.medal = Discriminator(obs_spec, config.medal, self.device, name="medal")
        # Both discriminators standardise vector keys by every demo state they can see.
        stats = demo_states(demos, self.obs_spec)
        self.vice.set_input_stats(stats)
        self.medal.set_input_stats(stats)
        self.seed = seed
        self._forward_demos = fwd  # the BC proposal's training set (AgentConfig.bc_proposal)
        self.env_steps = 0
        self.agent_steps = [0, 0]
        self.updates = [0, 0]
        self.credit = [0, 0]
        # First rounds right when the seed phase ends, then every `updates_every` steps.
        self.disc_next_at = [self.sched.seed_frames, self.sched.seed_frames]
        self.skipped_nonfinite = 0
        self._streams: dict[int, tuple[int, bool]] = {}  # stream -> (last agent, its last step open)
        self._snapshots: list[dict[str, Any]] = [copy.deepcopy(a.state_dict()) for a in self.agents]
        logger.info("MEDAL++ trainer: VICE positives %d, MEDAL positives %d", len(rows), len(fwd.actions))

    def _vice_encoder(self) -> Any:
        cfg, enc = self.config.vice, self.agents[FORWARD].encoder
        same_cams = cfg.cameras is None or tuple(sorted(cfg.cameras)) == enc.image_keys
        same_vec = cfg.use_proprio == self.config.network.use_proprio or not enc.image_keys
        if cfg.share_encoder and same_cams and same_vec:
            return enc
        if cfg.share_encoder:
            logger.info("VICE inputs differ from the forward agent's encoder: VICE builds its own")
        return None

    # -- ingest ------------------------------------------------------------------------
    @property
    def seed_phase(self) -> bool:
        """True while fewer than `seed_frames` steps were ingested (runtimes act randomly)."""
        return self.env_steps < self.sched.seed_frames

    def ingest(self, agent: int, observations: Mapping[str, np.ndarray], actions: np.ndarray,
               is_first: np.ndarray, is_last: np.ndarray, *, stream: int = 0) -> None:
        """Ingest consecutive steps that one agent took (one stream). See `ingest_steps`."""
        agents = np.full(len(actions), agent, dtype=np.int64)
        self.ingest_steps(observations, actions, agents, is_first, is_last, stream=stream)

    def ingest_steps(self, observations: Mapping[str, np.ndarray], actions: np.ndarray, agents: np.ndarray,
                     is_first: np.ndarray, is_last: np.ndarray, *, stream: int = 0) -> None:
        """Ingest consecutive steps of one stream, each tagged with the agent that acted.

        Seed-phase steps (the first `seed_frames`) go to both agents' buffers as one
        continuous stream (the authors' code). After it, each run of one agent goes to its
        buffer; where the next step belongs to the other agent, that step's observation is
        stored once more as an `is_last` closing step in the first agent's buffer (one frame
        per switch). Raises TrainerError on an unknown agent, ReplayError on malformed
        arrays. Blocks for the copies.
        """
        n = len(actions)
        agents = np.asarray(agents, dtype=np.int64)
        if n == 0:
            return
        if agents.shape != (n,) or not np.isin(agents, (FORWARD, BACKWARD)).all():
            raise TrainerError(f"agents must be ({n},) of 0/1, got {agents!r}")
        is_first = np.asarray(is_first, dtype=bool).copy()
        is_last = np.asarray(is_last, dtype=bool)
        prev_agent, prev_open = self._streams.get(stream, (-1, False))
        bounds = np.flatnonzero(np.diff(agents)) + 1
        for lo_, hi_ in zip(np.r_[0, bounds], np.r_[bounds, n]):
            lo, hi, a = int(lo_), int(hi_), int(agents[lo_])
            seed = min(max(self.sched.seed_frames - self.env_steps, 0), hi - lo)
            if seed:  # 1. seed-phase steps: the same stream into both buffers
                part = slice(lo, lo + seed)
                run = {k: v[part] for k, v in observations.items()}
                for buf in self.replay:
                    buf.add_steps(run, np.asarray(actions[part], np.float32), is_first[part], is_last[part],
                                  stream=stream)
                self.agent_steps[a] += seed
                self.env_steps += seed
                prev_agent, prev_open = _SEED, not bool(is_last[lo + seed - 1])
                lo += seed
                if lo == hi:
                    continue
            if prev_agent == _SEED:  # the stream goes on in `a`'s buffer only: close the other's
                if prev_open and not is_first[lo]:
                    self._close(1 - a, {k: v[lo : lo + 1] for k, v in observations.items()}, stream)
            elif prev_agent not in (-1, a):
                if prev_open and not is_first[lo]:
                    self._close(prev_agent, {k: v[lo : lo + 1] for k, v in observations.items()}, stream)
                is_first[lo] = True  # a new segment for `a`; its old tail was closed at the switch
            run = {k: v[lo:hi] for k, v in observations.items()}
            self.replay[a].add_steps(run, np.asarray(actions[lo:hi], np.float32), is_first[lo:hi], is_last[lo:hi],
                                     stream=stream)
            self.agent_steps[a] += hi - lo
            self.credit[a] += self.config.agent.update_to_data * (hi - lo)  # credit only past the seed frames
            self.env_steps += hi - lo
            prev_agent, prev_open = a, not bool(is_last[hi - 1])
        self._streams[stream] = (prev_agent, prev_open)

    def ingest_batch(self, batch: TransitionBatch, *, stream: int = 0) -> None:
        """Ingest one wire batch (its steps, each tagged with its agent) of one stream. See `ingest_steps`."""
        self.ingest_steps(dict(batch.observations), batch.actions, batch.agents, batch.is_first, batch.is_last,
                          stream=stream)

    def refill(self, runs: Iterable[tuple[int, TransitionBatch]]) -> int:
        """Rebuild replay from steps that were already counted (a resume whose checkpoint
        holds no replay): each `(stream, batch)` is added to the buffers as `ingest_batch`
        would, in order, while step counters, update credit and stream state stay as
        restored. Returns the steps added. Blocks.

        The runs are taken to start at environment step 0 (the journal's start), so the
        first `seed_frames` of them go to both buffers again; a journal whose retention
        dropped its oldest steps mirrors up to `seed_frames` later steps instead."""
        saved = (self.env_steps, list(self.agent_steps), list(self.credit), dict(self._streams))
        self._streams = {}
        self.env_steps = 0
        added = 0
        try:
            for stream, batch in runs:
                self.ingest_batch(batch, stream=stream)
                added += batch.size
        finally:
            self.env_steps, self.agent_steps, self.credit, self._streams = saved
        return added

    def end_segment(self, observations: Mapping[str, np.ndarray], *, stream: int = 0) -> None:
        """Closes the stream's open segment with one final observation (``(1, ...)`` arrays),
        stored as an `is_last` closing step and not counted as an environment step; the
        stream's next step must be `is_first`. For a change the environment makes between two
        steps that no action caused (a new goal drawn at a turn switch): the last transition
        ends at what the action led to, the next segment starts from what follows. During the
        seed phase the segment is open in both buffers and both are closed. A stream with no
        open segment is left as it is. Raises ReplayError on malformed arrays."""
        prev_agent, prev_open = self._streams.get(stream, (-1, False))
        if not prev_open:
            return
        for agent in ((FORWARD, BACKWARD) if prev_agent == _SEED else (prev_agent,)):
            self._close(agent, observations, stream)
        self._streams[stream] = (prev_agent, False)

    def _close(self, agent: int, obs: Mapping[str, np.ndarray], stream: int) -> None:
        pad = np.zeros((1, self.action_dim), dtype=np.float32)
        self.replay[agent].add_steps(obs, pad, np.zeros(1, bool), np.ones(1, bool), stream=stream)

    # -- training ----------------------------------------------------------------------
    def train_step(self, should_stop: Callable[[], bool] | None = None) -> dict[str, float]:
        """Run the discriminator rounds that are due, then one update per agent with credit.

        Returns grouped metrics (`vice/*`, `medal/*`, `forward/*`, `backward/*`, `charts/*`);
        empty during the seed phase or when nothing is due. Blocks for the updates.
        `should_stop` is asked between single updates: when it turns true the step ends
        there (a discriminator round left unfinished runs again in full later; unused agent
        credit stays), so a stop waits for one update, not for a whole step — on a CPU a
        pixel step's two rounds of 10 discriminator updates took over a minute.
        """
        metrics: dict[str, float] = {}
        if self.seed_phase:
            return metrics
        stop = should_stop or (lambda: False)
        # 1. discriminators on their own schedule of environment steps
        for idx, disc, pos, name in ((FORWARD, self.vice, self.vice_pos, "vice"),
                                     (BACKWARD, self.medal, self.medal_pos, "medal")):
            if self.env_steps >= self.disc_next_at[idx] and len(self.replay[idx]) > 0:
                done = self._disc_round(idx, disc, pos, name, stop)
                if done is None:
                    return metrics
                metrics.update(done)
                self.disc_next_at[idx] += disc.cfg.updates_every
        # 2. agents (the forward agent's BC proposal first, once, when it has none yet)
        if self.config.agent.bc_proposal and self.agents[FORWARD].proposal is None:
            self.agents[FORWARD].set_proposal(train_proposal(
                self._forward_demos, self.obs_spec, self.config.network,
                steps=self.config.agent.bc_proposal_steps, seed=self.seed, device=self.device))
        for a, name in ((FORWARD, "forward"), (BACKWARD, "backward")):
            if stop():
                return metrics
            if self.credit[a] >= 1 and self.replay[a].has_transition():
                metrics.update({f"{name}/{k}": v for k, v in self._agent_update(a).items()})
                self.credit[a] -= 1
        metrics["charts/env_steps"] = float(self.env_steps)
        metrics["charts/skipped_nonfinite"] = float(self.skipped_nonfinite)
        return metrics

    def _disc_round(self, idx: int, disc: Discriminator, pos: Mapping[str, torch.Tensor], name: str,
                    stop: Callable[[], bool]) -> dict[str, float] | None:
        """One round of updates; returns its metrics, or None when `stop` ended it early."""
        half = disc.cfg.batch_size // 2
        out: dict[str, float] = {}
        for _ in range(disc.cfg.updates_per_round):
            if stop():
                return None
            rows = torch.from_numpy(self.rng.integers(0, len(next(iter(pos.values()))), size=half))
            neg = self.replay[idx].sample_observations(half, self.rng)
            out = disc.update({k: v[rows] for k, v in pos.items()}, neg)
        return {f"{name}/{k}": v for k, v in out.items()}

    def reward(self, agent: int, next_obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Returns the agent's reward `(B,)` for next observations, from the current discriminator."""
        if agent == FORWARD:
            return vice_reward(self.vice.logits(next_obs), self.sched.vice_reward_form)  # type: ignore[arg-type]
        return medal_reward(self.medal.logits(next_obs))

    def _agent_update(self, a: int) -> dict[str, float]:
        rcfg = self.config.replay
        batch = sample_mixed(self.replay[a], self.demo_buffers[a], rcfg.batch_size, rcfg.demo_per_batch, self.rng)
        reward = self.reward(a, batch.next_obs)
        bc = self.sched.bc_weight(self.env_steps, a) if a in self.sched.bc_agents else 0.0
        if not (_finite(reward) and all(_finite(v) for v in (*batch.obs.values(), *batch.next_obs.values()))):
            return self._skip(a, "non-finite reward or observation in the batch")
        utd = self.config.agent.update_to_data
        # REDQ with G = update_to_data: G critic steps per environment step, one actor step.
        update_actor = self.updates[a] % utd == utd - 1
        demo_batch = None
        demo_buf = self.demo_buffers[a]
        if update_actor and bc > 0 and demo_buf is not None:
            demo_batch = demo_buf.sample(self.sched.bc_batch_size, self.rng)
        metrics = self.agents[a].update(batch, reward, bc_weight=bc, step=self.updates[a], update_actor=update_actor,
                                        demo_batch=demo_batch)
        if not all(np.isfinite(v) for v in metrics.values()):
            self.agents[a].load_state_dict(self._snapshots[a])
            return self._skip(a, f"non-finite losses {metrics}; restored the last good snapshot")
        self.updates[a] += 1
        if self.updates[a] % self.sched.snapshot_every == 0:
            self._snapshots[a] = copy.deepcopy(self.agents[a].state_dict())
        metrics["charts/demo_fraction"] = batch.demo_fraction
        metrics["skipped_nonfinite"] = 0.0
        return metrics

    def _skip(self, a: int, why: str) -> dict[str, float]:
        self.skipped_nonfinite += 1
        logger.warning("agent %d: update skipped: %s", a, why)
        return {"skipped_nonfinite": 1.0}

    def publishable_weights(self, agent: int) -> dict[str, np.ndarray] | None:
        """Returns the agent's policy tensors as numpy, or None (logged) when any is non-finite."""
        state = self.agents[agent].policy_state_dict()
        bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            logger.error("agent %d: not publishing, non-finite tensors %s", agent, bad)
            return None
        return {k: v.numpy() for k, v in state.items()}

    # -- state -------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """Returns the step counters (`env_steps`, `updates` = both agents' updates)."""
        return {"env_steps": self.env_steps, "updates": sum(self.updates),
                "updates_forward": self.updates[0], "updates_backward": self.updates[1]}

    def state_dict(self) -> dict[str, Any]:
        """Returns everything the next update depends on except replay (see `replay_state`)."""
        return {
            "agents": [a.state_dict() for a in self.agents],
            "vice": self.vice.state_dict(),
            "medal": self.medal.state_dict(),
            "counters": {"env_steps": self.env_steps, "agent_steps": list(self.agent_steps),
                         "updates": list(self.updates), "credit": list(self.credit),
                         "disc_next_at": list(self.disc_next_at), "skipped_nonfinite": self.skipped_nonfinite},
            "streams": {s: [a, o] for s, (a, o) in self._streams.items()},
            "rng": {"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state(),
                    "numpy_global": np.random.get_state(), "python": random.getstate()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores `state_dict()` output in place. Raises TrainerError on a mismatch."""
        try:
            for agent, s in zip(self.agents, state["agents"]):
                agent.load_state_dict(s)
            self.vice.load_state_dict(state["vice"])
            self.medal.load_state_dict(state["medal"])
            c = state["counters"]
            self.env_steps = int(c["env_steps"])
            self.agent_steps, self.updates = list(c["agent_steps"]), list(c["updates"])
            self.credit, self.disc_next_at = list(c["credit"]), list(c["disc_next_at"])
            self.skipped_nonfinite = int(c["skipped_nonfinite"])
            self._streams = {int(s): (int(v[0]), bool(v[1])) for s, v in state["streams"].items()}
            rng = state["rng"]
            self.rng.bit_generator.state = rng["numpy"]
            torch.set_rng_state(rng["torch"])
            np.random.set_state(rng["numpy_global"])
            random.setstate(rng["python"])
            # The restored weights are good ones: they become the non-finite fallback.
            self._snapshots = [copy.deepcopy(a.state_dict()) for a in self.agents]
        except (KeyError, RuntimeError, ValueError, TypeError, DiscriminatorError) as e:
            raise TrainerError(f"trainer state does not match this trainer: {e}") from e

    def replay_state(self) -> dict[str, np.ndarray]:
        """Returns both agent buffers' arrays, keyed `agent<i>/<name>`."""
        return {f"agent{i}/{k}": v for i, buf in enumerate(self.replay) for k, v in buf.state_dict().items()}

    def load_replay_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Restores `replay_state()` output. Raises ReplayError on a mismatch."""
        for i, buf in enumerate(self.replay):
            prefix = f"agent{i}/"
            buf.load_state_dict({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})


def _finite(t: torch.Tensor) -> bool:
    return not t.is_floating_point() or bool(torch.isfinite(t).all())
