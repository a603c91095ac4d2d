"""Policies for evaluation, loaded from checkpoints into a callable ``obs dict -> action``.

Two sources, both ``learner.checkpoint`` directories (safetensors + JSON, no pickle):

* a **learner run** (``resetfree-learner --run-dir``) or one of its ``ckpt-N/``
  directories: the chosen agent's encoder and actor (``state["agents"][0|1]``), rebuilt with
  ``learner.networks.build_actor`` from the checkpoint's ``config["network"]``;
* a **BC checkpoint** written by :func:`save_bc_policy` (``config["kind"] == "bc"``): the
  ``learner.bc`` policy trained on demos with the same encoder architecture.

The observation spec is taken from the checkpoint's ``config["obs_spec"]`` when recorded
(BC checkpoints always record it), else from the robot the policy will run on; either way
``load_state_dict`` is strict, so a mismatch is an error naming the tensor, never a silent
wrong policy.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from learner import checkpoint
from learner.bc import BCConfig, train_bc_from_demos
from learner.errors import CheckpointError, LearnerError
from learner.networks import NetworkConfig, PolicyNetwork, as_network_config, build_actor, is_image
from protocol.spaces import ObsSpec
from protocol.demos import Demos
from protocol.messages import AGENTS
from simulation.tasks.base import SimulationError

logger = logging.getLogger(__name__)

BC_KIND = "bc"
POLICY_KIND = "policy"
"""A bare forward policy a run kept (``resetfree-sim``'s ``best-policy/``): its tensors under
``state["policy"]``, as a BC checkpoint holds them."""


class PolicyLoadError(SimulationError):
    """A policy could not be loaded: missing or corrupt checkpoint, or one that does not fit."""


@dataclass(frozen=True, kw_only=True)
class PolicySource:
    """A policy's weights and architecture, read from disk, not yet built."""

    kind: str
    """``learner`` or ``bc``."""
    path: Path
    """The checkpoint directory read."""
    net_config: NetworkConfig
    """Architecture for ``build_actor``."""
    state_dict: dict[str, torch.Tensor]
    """``build_actor``-compatible tensors (``encoder.*``, ``actor.*``)."""
    obs_spec: dict[str, tuple[tuple[int, ...], str]] | None
    """The observation spec recorded with the weights, when there is one."""

    @property
    def action_dim(self) -> int:
        """Length of the action, read off the actor's output layer (mean and log-std)."""
        weights = [k for k in self.state_dict if k.startswith("actor.") and k.endswith(".weight")]
        last = max(weights, key=lambda k: int(k.split(".")[-2]))
        return int(self.state_dict[last].shape[0]) // 2

    def image_size(self) -> int | None:
        """The recorded image side, or ``None`` when no spec (or no image) was recorded."""
        for shape, dtype in (self.obs_spec or {}).values():
            if is_image(shape, dtype):
                return int(shape[-1])
        return None

    def build(self, obs_spec: ObsSpec | None = None) -> "Policy":
        """Returns the runnable :class:`Policy` on ``obs_spec`` (default: the recorded one).

        Raises:
            PolicyLoadError: when there is no spec, or the weights do not fit the network.
        """
        spec = dict(obs_spec) if obs_spec is not None else self.obs_spec
        if spec is None:
            raise PolicyLoadError(f"{self.path}: no observation spec recorded; give the robot's")
        try:
            network = build_actor(spec, self.action_dim, self.net_config)
            network.load_state_dict(self.state_dict, strict=True)
        except (ValueError, RuntimeError) as e:
            raise PolicyLoadError(f"{self.path}: the {self.kind} weights do not fit observations "
                              f"{_describe(spec)}: {e}") from e
        network.eval()
        return Policy(network=network, obs_spec=spec, kind=self.kind, path=self.path)


@dataclass(frozen=True, kw_only=True)
class Policy:
    """A deterministic policy (``tanh(μ)``) on CPU: ``policy(obs) -> float32 (A,)``."""

    network: PolicyNetwork
    """The encoder + actor."""
    obs_spec: dict[str, tuple[tuple[int, ...], str]]
    """The observation keys it reads, with shapes and dtypes."""
    kind: str
    """``learner`` or ``bc``."""
    path: Path
    """Where it was loaded from."""

    def __call__(self, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        """Returns the action for one observation. Blocks for one forward pass (~ms on CPU).

        Raises:
            PolicyLoadError: when a key is missing or has the wrong shape.
        """
        batch: dict[str, torch.Tensor] = {}
        for key, (shape, dtype) in self.obs_spec.items():
            if key not in observation:
                raise PolicyLoadError(f"observation has no {key!r} (policy needs {sorted(self.obs_spec)})")
            array = np.asarray(observation[key], dtype=dtype)
            if array.shape != tuple(shape):
                raise PolicyLoadError(f"observation {key!r} is {array.shape}, policy needs {tuple(shape)}")
            batch[key] = torch.from_numpy(np.ascontiguousarray(array))[None]
        with torch.inference_mode():
            action = self.network(batch)[0]
        return action.numpy().astype(np.float32)


def arrays_obs_spec(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Returns the spec ``{key: (shape, dtype)}`` of one observation (no batch dimension)."""
    return {k: (tuple(int(d) for d in np.shape(v)), np.asarray(v).dtype.name) for k, v in arrays.items()}


def read_policy(path: str | Path, *, agent: str = "forward") -> PolicySource:
    """Reads a learner run directory, a ``ckpt-N`` directory or a BC checkpoint. Blocks on disk.

    ``path`` may be a checkpoint directory (holding ``meta.json``) or a directory holding
    ``ckpt-N/`` directories (directly or under ``checkpoints/``): the newest good one is
    used, falling back past corrupt ones.

    Returns the :class:`PolicySource`.

    Raises:
        PolicyLoadError: for a missing path, no checkpoint, every checkpoint corrupt, an unknown
            agent, or a checkpoint without the expected tensors or network config.
    """
    if agent not in AGENTS:
        raise PolicyLoadError(f"agent: expected one of {sorted(AGENTS)}, got {agent!r}")
    root = Path(path)
    if not root.exists():
        raise PolicyLoadError(f"{root}: no such checkpoint or run directory")
    try:
        if (root / checkpoint.META_FILE).is_file():
            ckpt = checkpoint.load_checkpoint(root, with_replay=False)
        else:
            ckpt = None
            for candidate in (root, root / "checkpoints"):
                ckpt = checkpoint.load_latest(candidate, with_replay=False)
                if ckpt is not None:
                    break
    except CheckpointError as e:
        raise PolicyLoadError(f"{root}: unusable checkpoint: {e}") from e
    if ckpt is None:
        raise PolicyLoadError(f"{root}: no checkpoint (expected ckpt-N/ directories or a {checkpoint.META_FILE})")
    return _source(ckpt, agent)


def _source(ckpt: checkpoint.Checkpoint, agent: str) -> PolicySource:
    config = ckpt.config
    try:
        net_config = as_network_config(config["network"])
        spec = config.get("obs_spec")
        obs_spec = None if spec is None else {k: (tuple(int(d) for d in v[0]), str(v[1])) for k, v in spec.items()}
        if config.get("kind") in (BC_KIND, POLICY_KIND):
            kind, state = str(config["kind"]), dict(ckpt.state["policy"])
        else:
            kind, parts = "learner", ckpt.state["agents"][AGENTS.index(agent)]
            state = {f"{part}.{k}": v for part in ("encoder", "actor") for k, v in parts[part].items()}
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        raise PolicyLoadError(f"{ckpt.path}: not a learner or BC policy checkpoint ({type(e).__name__}: {e})") from e
    logger.info("policy: %s checkpoint %s (%s agent)", kind, ckpt.path, agent if kind == "learner" else kind)
    return PolicySource(kind=kind, path=ckpt.path, net_config=net_config, state_dict=state, obs_spec=obs_spec)


def save_policy(out_dir: str | Path, state_dict: Mapping[str, torch.Tensor | np.ndarray], *, obs_spec: ObsSpec,
                net_config: NetworkConfig, updates: int, info: Mapping[str, Any]) -> Path:
    """Writes a forward policy (float32) as a ``learner.checkpoint`` ``out_dir/ckpt-<updates>/``,
    replacing the one there: what ``resetfree-eval --policy out_dir`` and :func:`read_policy`
    load. ``info`` (JSON: where the policy came from, how it scored) goes into its config.
    Blocks on disk. Returns the checkpoint directory; raises PolicyLoadError when it cannot be written."""
    config: dict[str, Any] = {
        "kind": POLICY_KIND, "network": net_config.to_dict(),
        "obs_spec": {k: [list(shape), dtype] for k, (shape, dtype) in obs_spec.items()}, **dict(info),
    }
    tensors = {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in state_dict.items()}
    try:
        return checkpoint.save_checkpoint(out_dir, updates=updates, state={"policy": tensors}, config=config, keep=1)
    except CheckpointError as e:
        raise PolicyLoadError(f"cannot save the policy to {out_dir}: {e}") from e


def save_bc_policy(out_dir: str | Path, state_dict: Mapping[str, torch.Tensor], *, obs_spec: ObsSpec,
                   net_config: NetworkConfig, bc_config: BCConfig, demos_path: str) -> Path:
    """Writes a BC policy as a ``learner.checkpoint`` (``out_dir/ckpt-<steps>/``). Blocks on disk.

    Returns the checkpoint directory. Raises PolicyLoadError when it cannot be written.
    """
    config: dict[str, Any] = {
        "kind": BC_KIND, "network": net_config.to_dict(),
        "obs_spec": {k: [list(shape), dtype] for k, (shape, dtype) in obs_spec.items()},
        "bc": dataclasses.asdict(bc_config), "demos": demos_path,
    }
    try:
        return checkpoint.save_checkpoint(out_dir, updates=bc_config.steps, state={"policy": dict(state_dict)},
                                          config=config, keep=1)
    except CheckpointError as e:
        raise PolicyLoadError(f"cannot save the BC policy: {e}") from e


def train_bc_policy(demos: Demos, out_dir: str | Path, *, net_config: NetworkConfig, bc_config: BCConfig,
                    demos_path: str) -> PolicySource:
    """Trains ``learner.bc`` on every demo key (cameras + proprio), saves it under
    ``out_dir`` and returns it as a :class:`PolicySource`. Blocks for the training run.

    Raises:
        PolicyLoadError: when the demos cannot be trained on or the policy cannot be saved.
    """
    spec = arrays_obs_spec({k: v[0] for k, v in demos.observations.items()})
    try:
        state = train_bc_from_demos(demos, spec, net_config, bc_config)
    except (LearnerError, ValueError, RuntimeError) as e:
        raise PolicyLoadError(f"BC training failed: {e}") from e
    path = save_bc_policy(out_dir, state, obs_spec=spec, net_config=net_config, bc_config=bc_config,
                          demos_path=demos_path)
    return PolicySource(kind=BC_KIND, path=path, net_config=net_config, state_dict=dict(state), obs_spec=spec)


def _describe(spec: Mapping[str, tuple[tuple[int, ...], str]]) -> str:
    return ", ".join(f"{k} {tuple(s)} {d}" for k, (s, d) in sorted(spec.items()))
