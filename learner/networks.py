"""Networks shared by the learner and the runtime: the encoder and the actor (the policy the
runtime runs), and the config both sides build them from. The critic ensemble is the
learner's alone (``learner.critic``).

The encoder is DrQ-v2's conv trunk (Yarats et al., 2021). Design choices, measured on the
2-core CPU this project targets (see ``learner/bench.py``):

* **One conv for every camera.** Cameras share the conv weights and are stacked on the batch
  dimension, so a two-camera batch of 256 is one conv call on 512 images (fewer, larger
  kernels), not one call per camera. Each camera keeps its own slice of the projection.
* **The projection lives in the encoder** (DrQ style: Linear → LayerNorm → tanh to
  ``feature_dim``), computed once and shared by the actor and the critics, then late fusion
  with the proprio vector. The actor trains on detached features (DrQ-v2), so only the
  critic's loss trains the conv trunk and the projection.
* **The critic ensemble is one module** (``learner.critic``): weights carry a leading critic
  dimension and the members run as one batched matmul (``torch.baddbmm``) instead of a Python loop.

Images enter as ``uint8 (B, C, H, W)`` and are converted to ``x / 255 - 0.5`` on the device.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from protocol.spaces import ObsSpec

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class NetworkConfig:
    """Architecture of the encoder, actor and critics (must match between learner and runtime)."""

    feature_dim: int = 50
    """Width of the encoder's projection (DrQ-v2: 50; the authors' robot code: 256)."""
    hidden_dim: int = 1024
    """Width of the actor's and critics' hidden layers (DrQ-v2: 1024)."""
    conv_channels: int = 32
    """Channels of each of the four DrQ-v2 conv layers."""
    num_critics: int = 5
    """Critics in the REDQ ensemble (paper Table 1: 5)."""
    num_min_target: int = 2
    """Target critics the REDQ target takes the minimum over (paper: 2)."""
    log_std_min: float = -5.0
    """Lower clamp of the actor's log standard deviation."""
    log_std_max: float = 2.0
    """Upper clamp of the actor's log standard deviation."""
    cameras: tuple[str, ...] | None = None
    """Image keys the encoder uses; None uses every image key of the observation spec."""
    use_proprio: bool = True
    """Whether vector keys (``proprio``) are fused with the image features in pixel mode."""
    state_trunk: bool = True
    """State mode (no image keys): the actor and every critic pass the state through their own
    Linear → LayerNorm → tanh trunk to ``feature_dim`` before their MLP, as the authors' networks
    do (``SACActor.policy_trunk``, ``Qnet.trunk``). Bounded, normalised features keep the
    critics from extrapolating far outside the data. Pixel mode already has the encoder's
    projection (the same three layers, shared) and ignores this."""

    def __post_init__(self) -> None:
        for name in ("feature_dim", "hidden_dim", "conv_channels", "num_critics", "num_min_target"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"NetworkConfig.{name} must be a positive int, got {value!r}")
        if self.num_min_target > self.num_critics:
            raise ValueError(
                f"NetworkConfig.num_min_target ({self.num_min_target}) exceeds num_critics ({self.num_critics})"
            )
        if not self.log_std_min < self.log_std_max:
            raise ValueError("NetworkConfig.log_std_min must be below log_std_max")
        if self.cameras is not None:
            if isinstance(self.cameras, str) or not all(isinstance(c, str) for c in self.cameras):
                raise ValueError(f"NetworkConfig.cameras must be a tuple of names, got {self.cameras!r}")
            object.__setattr__(self, "cameras", tuple(self.cameras))

    def to_dict(self) -> dict[str, Any]:
        """Returns the config as JSON-ready builtins (tuples become lists)."""
        out = dataclasses.asdict(self)
        if out["cameras"] is not None:
            out["cameras"] = list(out["cameras"])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NetworkConfig:
        """Builds a config from :meth:`to_dict` output; raises ValueError on unknown keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"NetworkConfig: unknown key(s) {unknown}")
        kwargs = dict(data)
        if kwargs.get("cameras") is not None:
            kwargs["cameras"] = tuple(kwargs["cameras"])
        return cls(**kwargs)


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Returns whether ``device`` computes bfloat16 convolutions natively: a CUDA device with
    bf16 support, or a CPU whose oneDNN has bf16 kernels (AMX / AVX512-BF16). Elsewhere bf16
    is emulated and slower than float32 (a batch-256 pixel update on an AVX2-only EPYC: 24 s
    under bf16 autocast, 4 s in float32)."""
    device = torch.device(device)
    try:
        if device.type == "cuda":
            return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        if device.type == "cpu":
            return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without the check
        return False
    return False


def is_image(shape: Sequence[int], dtype: str) -> bool:
    """Returns whether a spec entry is an image (``uint8`` with three dimensions)."""
    return len(shape) == 3 and str(dtype) == "uint8"


def weight_init(module: nn.Module) -> None:
    """DrQ-v2 initialisation: orthogonal weights (ReLU gain for convs), zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.orthogonal_(module.weight.data)
        if module.bias is not None:
            module.bias.data.fill_(0.0)
    elif isinstance(module, nn.Conv2d):
        nn.init.orthogonal_(module.weight.data, nn.init.calculate_gain("relu"))
        if module.bias is not None:
            module.bias.data.fill_(0.0)


class Encoder(nn.Module):
    """Observation dict → feature vector ``(B, repr_dim)``.

    Pixel mode: shared DrQ-v2 conv trunk over the selected cameras (stacked on the batch
    dimension), one Linear+LayerNorm+tanh projection of all cameras to ``feature_dim``, then
    concatenation with the vector keys when ``use_proprio``. State mode (no image keys): the
    vector keys concatenated (identity), ``repr_dim`` = their total width.
    """

    def __init__(self, obs_spec: ObsSpec, cfg: NetworkConfig) -> None:
        super().__init__()
        all_images = sorted(k for k, (shape, dtype) in obs_spec.items() if is_image(shape, dtype))
        vectors = sorted(k for k, (shape, dtype) in obs_spec.items() if not is_image(shape, dtype))
        for key in vectors:
            if len(obs_spec[key][0]) != 1:
                raise ValueError(f"obs_spec[{key!r}]: vector keys must be 1-D, got {obs_spec[key][0]}")
        if cfg.cameras is not None:
            missing = [c for c in cfg.cameras if c not in all_images]
            if missing:
                raise ValueError(f"NetworkConfig.cameras: {missing} are not image keys of {all_images}")
            all_images = sorted(cfg.cameras)
        self.image_keys: tuple[str, ...] = tuple(all_images)
        use_vectors = cfg.use_proprio or not self.image_keys
        self.vector_keys: tuple[str, ...] = tuple(vectors) if use_vectors else ()
        self.vector_dim = sum(int(obs_spec[k][0][0]) for k in self.vector_keys)
        self.image_shape: tuple[int, ...] | None = None
        if self.image_keys:
            shapes = {tuple(obs_spec[k][0]) for k in self.image_keys}
            if len(shapes) != 1:
                raise ValueError(f"obs_spec: cameras {self.image_keys} must share one shape, got {shapes}")
            self.image_shape = shapes.pop()
            ch = cfg.conv_channels
            self.convnet = nn.Sequential(
                nn.Conv2d(self.image_shape[0], ch, 3, stride=2), nn.ReLU(),
                nn.Conv2d(ch, ch, 3, stride=1), nn.ReLU(),
                nn.Conv2d(ch, ch, 3, stride=1), nn.ReLU(),
                nn.Conv2d(ch, ch, 3, stride=1), nn.ReLU(),
            )
            with torch.no_grad():  # conv output size by a dummy pass, never hard-coded
                self.conv_dim = int(self.convnet(torch.zeros(1, *self.image_shape)).numel())
            self.projection = nn.Sequential(
                nn.Linear(self.conv_dim * len(self.image_keys), cfg.feature_dim),
                nn.LayerNorm(cfg.feature_dim),
                nn.Tanh(),
            )
            self.repr_dim = cfg.feature_dim + self.vector_dim
        else:
            self.conv_dim = 0
            self.repr_dim = self.vector_dim
        if self.repr_dim == 0:
            raise ValueError("obs_spec: the encoder selects no keys")
        self.apply(weight_init)

    def forward(self, obs: Mapping[str, Tensor]) -> Tensor:
        """Returns features ``(B, repr_dim)``; images may be uint8 or float in [0, 255]."""
        parts: list[Tensor] = []
        if self.image_keys:
            images = torch.stack([obs[k] for k in self.image_keys], dim=1)  # (B, N, C, H, W)
            batch, n_cams = images.shape[:2]
            # The conv weights' dtype: float32 in training (autocast may run it in bf16),
            # bfloat16 in a runtime that holds a bf16 trunk (`cast_for_inference`).
            x = images.flatten(0, 1).to(self.convnet[0].weight.dtype).div_(255.0).sub_(0.5)
            x = x.contiguous(memory_format=torch.channels_last)
            conv = self.convnet(x)  # (B*N, ch, h, w), channels_last
            linear, norm, squash = self.projection
            if conv.dtype != linear.weight.dtype and not torch.is_autocast_enabled(conv.device.type):
                conv = conv.contiguous().to(linear.weight.dtype)  # NCHW first: a cast, not a strided copy
            features = linear(conv.reshape(batch, n_cams * self.conv_dim))
            parts.append(squash(norm(features.float())))  # LayerNorm in float32, as autocast runs it
        parts.extend(obs[k].float() for k in self.vector_keys)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


_ACTION_EPS = 1e-4
"""Margin that keeps a saturated action's ``atanh`` finite in :meth:`Actor.log_prob`."""


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, out_dim),
    )


def _trunk(in_dim: int, feature_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())


class Actor(nn.Module):
    """Tanh-Gaussian policy head on encoder features (SAC; DrQ-v2's MLP widths).

    ``trunk`` puts a Linear → LayerNorm → tanh layer to ``feature_dim`` in front of the MLP
    (state mode, :attr:`NetworkConfig.state_trunk`)."""

    def __init__(self, repr_dim: int, action_dim: int, cfg: NetworkConfig, *, trunk: bool = False) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.log_std_min = cfg.log_std_min
        self.log_std_max = cfg.log_std_max
        self.trunk = _trunk(repr_dim, cfg.feature_dim) if trunk else nn.Identity()
        self.policy = _mlp(cfg.feature_dim if trunk else repr_dim, cfg.hidden_dim, 2 * action_dim)
        self.apply(weight_init)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(mu, log_std)`` of the pre-tanh Gaussian, each ``(B, A)``."""
        mu, log_std = self.policy(self.trunk(h)).chunk(2, dim=-1)
        # SAC-style soft clamp keeps gradients alive near the bounds.
        log_std = torch.tanh(log_std)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (log_std + 1.0)
        return mu, log_std

    def sample(self, h: Tensor, *, noise_clip: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Draws a reparameterised action.

        Returns ``(action, log_prob, mean_action)``: ``action`` ``(B, A)`` in (-1, 1),
        ``log_prob`` ``(B,)`` with the tanh correction, ``mean_action`` = ``tanh(mu)``.
        ``noise_clip`` clips the pre-tanh noise ``std * eps`` as DrQ-v2 does (the log-prob
        is then that of the unclipped Gaussian, an approximation used only with entropy > 0).
        """
        mu, log_std = self(h)
        std = log_std.exp()
        eps = torch.randn_like(mu)
        noise = std * eps
        if noise_clip is not None:
            noise = noise.clamp(-noise_clip, noise_clip)
        pre = mu + noise
        action = torch.tanh(pre)
        gauss = -0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
        # log(1 - tanh(x)^2), numerically stable form
        correction = 2.0 * (math.log(2.0) - pre - F.softplus(-2.0 * pre))
        log_prob = (gauss - correction).sum(-1)
        return action, log_prob, torch.tanh(mu)

    def log_prob(self, h: Tensor, action: Tensor) -> Tensor:
        """Returns ``log π(action | h)`` ``(B,)`` of the tanh-Gaussian, tanh correction included.

        Actions are clamped to ``±(1 − 1e-4)`` first (a demonstration's saturated ±1 has no
        finite pre-image), so the result is finite for any action in [-1, 1]."""
        mu, log_std = self(h)
        a = action.clamp(-1.0 + _ACTION_EPS, 1.0 - _ACTION_EPS)
        pre = torch.atanh(a)
        z = (pre - mu) * torch.exp(-log_std)
        gauss = -0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
        correction = 2.0 * (math.log(2.0) - pre - F.softplus(-2.0 * pre))
        return (gauss - correction).sum(-1)

    def beta_nll(self, h: Tensor, action: Tensor, *, beta: float) -> Tensor:
        """Returns the β-NLL of ``action`` ``(B,)`` (Seitzer et al. 2022): each dimension's
        Gaussian negative log-likelihood of the pre-tanh action, ``(pre − μ)²/2σ² + log σ``,
        weighted by ``σ^(2β)`` with no gradient through the weight. β = 0 is ``−log_prob`` up to
        terms without parameters; the mean's gradient is ``(μ − pre)/σ^(2−2β)``. Actions are
        clamped as in :meth:`log_prob`."""
        mu, log_std = self(h)
        pre = torch.atanh(action.clamp(-1.0 + _ACTION_EPS, 1.0 - _ACTION_EPS))
        nll = 0.5 * ((pre - mu) * torch.exp(-log_std)).pow(2) + log_std
        return (nll * torch.exp(2.0 * beta * log_std).detach()).sum(-1)


class PolicyNetwork(nn.Module):
    """Encoder + actor: the module the runtime runs; ``forward(obs) -> (B, A)`` in [-1, 1]."""

    def __init__(self, encoder: Encoder, actor: Actor) -> None:
        super().__init__()
        self.encoder = encoder
        self.actor = actor
        self.gaussian_output = False
        """When set, :meth:`forward` returns the pre-tanh Gaussian ``[mu, log_std]`` ``(B, 2A)``
        instead of the action, so a runtime can sample exploration actions from it (the
        learner's ``RedqAgent.act(explore=True)`` draws ``tanh(mu + std · ε)``). Not part of
        the state dict; set it before tracing."""

    def forward(self, obs: Mapping[str, Tensor]) -> Tensor:
        """Returns the deterministic action ``tanh(mu)`` ``(B, A)``, or ``[mu, log_std]``
        ``(B, 2A)`` with :attr:`gaussian_output`."""
        mu, log_std = self.actor(self.encoder(obs))
        if self.gaussian_output:
            return torch.cat([mu, log_std], dim=-1)
        return torch.tanh(mu)


def cast_for_inference(policy: PolicyNetwork, conv_dtype: torch.dtype,
                       projection_dtype: torch.dtype = torch.float32) -> PolicyNetwork:
    """Holds ``policy``'s conv trunk in ``conv_dtype`` and its projection's linear layer in
    ``projection_dtype``, in place; returns ``policy``. No-op in state mode.

    For inference: the learner trains the encoder under bfloat16 autocast
    (``AgentConfig.encoder_bf16``), so a bf16 trunk computes what training computed, in about
    half the conv time on CPUs with AMX/AVX512-BF16. The projection (78,400×50 for two
    cameras) is a matrix-vector product bound by memory at batch 1: float16 halves its bytes
    and ran 0.44 ms against 0.58 (float32) and 0.63 (bf16) on an idle AVX512-FP16 core here,
    but the whole actor was slower with fp16 under a learner's load (see the runtime's
    ``PolicySlotConfig.projection_dtype``). LayerNorm and the actor MLP stay float32.
    """
    if policy.encoder.image_keys:
        policy.encoder.convnet.to(conv_dtype)
        policy.encoder.projection[0].to(projection_dtype)
    return policy


def as_network_config(net_config: NetworkConfig | Mapping[str, Any]) -> NetworkConfig:
    """Returns ``net_config`` as a :class:`NetworkConfig` (accepts its ``to_dict`` form)."""
    if isinstance(net_config, NetworkConfig):
        return net_config
    return NetworkConfig.from_dict(net_config)


def build_actor(
    obs_spec: ObsSpec, action_dim: int, net_config: NetworkConfig | Mapping[str, Any]
) -> PolicyNetwork:
    """Builds the runtime's policy (encoder + actor) for ``obs_spec`` and ``action_dim``.

    Returns a :class:`PolicyNetwork` whose ``state_dict()`` names match
    ``RedqAgent.policy_state_dict()``. Raises ValueError on a bad config or spec.
    """
    if action_dim < 1:
        raise ValueError(f"action_dim must be positive, got {action_dim}")
    cfg = as_network_config(net_config)
    encoder = Encoder(obs_spec, cfg)
    return PolicyNetwork(encoder, Actor(encoder.repr_dim, action_dim, cfg, trunk=uses_state_trunk(encoder, cfg)))


def actor_layout(
    obs_spec: ObsSpec, action_dim: int, net_config: NetworkConfig | Mapping[str, Any]
) -> dict[str, tuple[tuple[int, ...], str]]:
    """Returns the tensors of :func:`build_actor`'s state dict, name → (shape, dtype), without
    allocating them (built on the meta device): what a weights blob of this actor carries,
    e.g. to size a subscriber's limits (``protocol.transport.weights_limits``)."""
    with torch.device("meta"):
        policy = build_actor(obs_spec, action_dim, net_config)
    return {name: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in policy.state_dict().items()}


def uses_state_trunk(encoder: Encoder, cfg: NetworkConfig) -> bool:
    """Whether the actor and critics on ``encoder`` get their own trunk (state mode only)."""
    return cfg.state_trunk and not encoder.image_keys
