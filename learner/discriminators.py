"""VICE (forward) and MEDAL (backward) discriminators (MEDAL++, Sharma et al. 2023, Sec. 4).

Both classify observations as "looks like the positives" (goal frames for VICE, demo states
for MEDAL) versus the agent's own replay. Regularised as the paper does: random shift on
the images, spectral norm on every layer the discriminator owns, mixup on the fused
embedding with λ ~ Beta(α, α) and the labels mixed alike, binary cross-entropy.

Encoders. MEDAL (and VICE when it cannot share) builds its own DrQ-v2 `Encoder` over its
configured cameras, with spectral norm on its conv and projection layers. VICE shares the
forward agent's `Encoder` (paper) **detached**: the discriminator reads the agent's features
under `no_grad` and trains only its head, so the critic alone shapes the agent's
representation (DrQ-v2's rule that only the critic trains the encoder) and the
discriminator's optimiser never touches agent weights.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from learner.augment import RandomShift
from learner.errors import DiscriminatorError
from learner.networks import Encoder, NetworkConfig, is_image
from protocol.spaces import ObsSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class DiscriminatorConfig:
    """One discriminator's architecture, regularisers, optimiser and update schedule."""

    updates_every: int = 500
    """Environment steps between update rounds (paper sim: VICE 500, MEDAL 100)."""
    updates_per_round: int = 10
    """Gradient steps per round (paper sim: 10; robot: 1)."""
    batch_size: int = 512
    """Observations per update, half positives and half negatives (paper: 512)."""
    cameras: tuple[str, ...] | None = None
    """Image keys the discriminator sees; None = every image key (robot: wrist only)."""
    use_proprio: bool = True
    """Fuse the vector keys with the image features (robot: VICE no, MEDAL yes)."""
    share_encoder: bool = True
    """VICE only: use the forward agent's encoder (detached) when its inputs match."""
    feature_dim: int = 50
    """Projection width of the discriminator's own encoder."""
    hidden_dim: int = 256
    """Width of the head's hidden layer."""
    mixup_alpha: float = 1.0
    """Mixup λ ~ Beta(α, α) on the fused embedding; 0 disables mixup."""
    lr: float = 3e-4
    """Adam learning rate."""
    spectral_norm: bool = True
    """Spectral normalisation on every layer the discriminator owns."""
    augment_pad: int = 4
    """Random-shift padding on images (DrQ-v2); 0 disables it."""
    normalize_vectors: bool = True
    """Standardise vector keys (state, proprio) by the demos' per-dimension mean and std.

    Spectral norm makes every layer 1-Lipschitz, so on raw states in metres the logit can
    move only as far as the state does: on door (handle travel ~0.3 m) the logits stayed
    within ±0.2 and the reward barely varied. Standardised, they reach ±2.5; success did not
    change either way in the one-seed comparisons of docs/learning.md §9."""
    vector_std_floor: float = 0.01
    """Smallest std used for a dimension (keeps constant dimensions, e.g. a fixed goal, finite)."""
    vector_clip: float = 10.0
    """Standardised vectors are clipped to ±this (a state far outside the demos saturates)."""

    def __post_init__(self) -> None:
        for name in ("updates_every", "updates_per_round", "feature_dim", "hidden_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"DiscriminatorConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2 or self.batch_size % 2:
            raise ValueError(f"DiscriminatorConfig.batch_size must be even and >= 2, got {self.batch_size}")
        if self.mixup_alpha < 0:
            raise ValueError(f"DiscriminatorConfig.mixup_alpha must be >= 0, got {self.mixup_alpha}")
        if not self.lr > 0:
            raise ValueError(f"DiscriminatorConfig.lr must be > 0, got {self.lr}")
        if self.augment_pad < 0:
            raise ValueError(f"DiscriminatorConfig.augment_pad must be >= 0, got {self.augment_pad}")
        if not self.vector_std_floor > 0:
            raise ValueError(f"DiscriminatorConfig.vector_std_floor must be > 0, got {self.vector_std_floor}")
        if not self.vector_clip > 0:
            raise ValueError(f"DiscriminatorConfig.vector_clip must be > 0, got {self.vector_clip}")
        if self.cameras is not None:
            object.__setattr__(self, "cameras", tuple(self.cameras))


def mixup(h: Tensor, labels: Tensor, lam: Tensor, perm: Tensor) -> tuple[Tensor, Tensor]:
    """Mix rows with a permutation of themselves: `λ·x + (1−λ)·x[perm]`, labels alike.

    `h` is `(B, D)`, `labels` and `lam` are `(B,)`. Returns the mixed `(h, labels)`.
    """
    lam_h = lam.unsqueeze(-1)
    return lam_h * h + (1 - lam_h) * h[perm], lam * labels + (1 - lam) * labels[perm]


class VectorNormalizer(nn.Module):
    """Per-dimension standardisation of vector keys, `clip((x − mean) / std, ±clip)`.

    The statistics are buffers (saved with the discriminator), fixed at construction from
    the demos; image keys pass through untouched. Until `set_stats` is called it is the
    identity (mean 0, std 1).
    """

    def __init__(self, obs_spec: ObsSpec, std_floor: float, clip: float) -> None:
        super().__init__()
        self.keys = tuple(sorted(k for k, (shape, dtype) in obs_spec.items() if not is_image(shape, dtype)))
        self.std_floor = std_floor
        self.clip = clip
        for k in self.keys:
            dim = int(obs_spec[k][0][0])
            self.register_buffer(_buf(k, "mean"), torch.zeros(dim))
            self.register_buffer(_buf(k, "std"), torch.ones(dim))

    def set_stats(self, samples: Mapping[str, Tensor]) -> None:
        """Sets mean and std (floored) from `(N, D)` samples of each vector key present."""
        for k in self.keys:
            if k not in samples:
                continue
            x = samples[k].double()
            if x.ndim != 2 or len(x) == 0 or not bool(torch.isfinite(x).all()):
                raise DiscriminatorError(f"normaliser: {k!r} samples must be finite (N, D), got {tuple(x.shape)}")
            mean = getattr(self, _buf(k, "mean"))
            if x.shape[1] != mean.numel():
                raise DiscriminatorError(f"normaliser: {k!r} has {x.shape[1]} dims, the spec {mean.numel()}")
            mean.copy_(x.mean(0).float())
            getattr(self, _buf(k, "std")).copy_(x.std(0, correction=0).clamp_min(self.std_floor).float())

    def forward(self, obs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Returns `obs` with every vector key standardised (new dict; inputs untouched)."""
        out = dict(obs)
        for k in self.keys:
            if k in out:
                x = (out[k].float() - getattr(self, _buf(k, "mean"))) / getattr(self, _buf(k, "std"))
                out[k] = x.clamp(-self.clip, self.clip)
        return out


def _buf(key: str, stat: str) -> str:
    return f"{key.replace('.', '_')}_{stat}"


class DiscriminatorNet(nn.Module):
    """Own encoder (optional) + MLP head → one logit per observation."""

    def __init__(self, obs_spec: ObsSpec, cfg: DiscriminatorConfig, shared: Encoder | None) -> None:
        super().__init__()
        self.normalizer: VectorNormalizer | None = (
            VectorNormalizer(obs_spec, cfg.vector_std_floor, cfg.vector_clip) if cfg.normalize_vectors else None
        )
        self.encoder: Encoder | None = None
        if shared is None:
            net_cfg = NetworkConfig(feature_dim=cfg.feature_dim, cameras=cfg.cameras, use_proprio=cfg.use_proprio)
            self.encoder = Encoder(obs_spec, net_cfg)
            repr_dim = self.encoder.repr_dim
        else:
            repr_dim = shared.repr_dim
        self.head = nn.Sequential(nn.Linear(repr_dim, cfg.hidden_dim), nn.ReLU(), nn.Linear(cfg.hidden_dim, 1))
        if cfg.spectral_norm:
            for name, module in list(self.named_modules()):
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    spectral_norm(module)

    def forward(self, h: Tensor) -> Tensor:
        """Returns logits `(B,)` from fused embeddings `(B, repr_dim)`."""
        return self.head(h).squeeze(-1)


class Discriminator:
    """A discriminator with its optimiser: `update(pos, neg)` trains it, `logits(obs)` reads it.

    Not thread-safe; blocks for one forward/backward pass per call.
    """

    def __init__(
        self,
        obs_spec: ObsSpec,
        cfg: DiscriminatorConfig,
        device: torch.device | str = "cpu",
        *,
        shared_encoder: Encoder | None = None,
        name: str = "disc",
    ) -> None:
        self.cfg = cfg
        self.name = name
        self.device = torch.device(device)
        self.shared_encoder = shared_encoder
        try:
            self.net = DiscriminatorNet(obs_spec, cfg, shared_encoder).to(self.device)
        except ValueError as e:
            raise DiscriminatorError(f"{name}: cannot build its encoder: {e}") from e
        self.optim = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        self.augment = RandomShift(cfg.augment_pad)
        self._beta = (
            torch.distributions.Beta(torch.tensor(cfg.mixup_alpha), torch.tensor(cfg.mixup_alpha))
            if cfg.mixup_alpha > 0
            else None
        )
        self.num_updates = 0

    def set_input_stats(self, samples: Mapping[str, Tensor]) -> None:
        """Fixes the vector-key standardisation from `(N, D)` samples (the demos); a no-op
        when `normalize_vectors` is off. Raises DiscriminatorError on malformed samples."""
        if self.net.normalizer is not None:
            self.net.normalizer.set_stats({k: v.to(self.device) for k, v in samples.items()})

    def embed(self, obs: Mapping[str, Tensor], *, augment: bool) -> Tensor:
        """Returns the fused embedding `(B, repr_dim)` (shared encoder: without gradient)."""
        obs = {k: v.to(self.device) for k, v in obs.items()}
        if self.net.normalizer is not None:
            obs = self.net.normalizer(obs)
        if augment:
            obs = self.augment(obs)
        if self.net.encoder is not None:
            return self.net.encoder(obs)
        with torch.no_grad():  # VICE on the agent's encoder: detached, see module docstring
            return self.shared_encoder(obs)

    @torch.no_grad()
    def logits(self, obs: Mapping[str, Tensor]) -> Tensor:
        """Returns logits `(B,)` for observations (no augmentation, no gradient)."""
        return self.net(self.embed(obs, augment=False))

    def update(self, pos_obs: Mapping[str, Tensor], neg_obs: Mapping[str, Tensor]) -> dict[str, float]:
        """One BCE step with mixup on positives (label 1) and negatives (label 0).

        Returns metrics: loss, accuracy (unmixed), mean logits on positives/negatives, and
        `skipped_nonfinite` (1.0 when the loss was not finite and no step was taken).
        Raises DiscriminatorError on empty or mismatched inputs.
        """
        n_pos = _rows(pos_obs)
        n_neg = _rows(neg_obs)
        if n_pos == 0 or n_neg == 0:
            raise DiscriminatorError(f"{self.name}: need positives and negatives, got {n_pos}/{n_neg}")
        obs = {k: torch.cat([pos_obs[k], neg_obs[k]]) for k in pos_obs}
        labels = torch.cat([torch.ones(n_pos), torch.zeros(n_neg)]).to(self.device)
        h = self.embed(obs, augment=True)
        plain_logits = self.net(h)
        if self._beta is not None:
            lam = self._beta.sample((len(labels),)).to(self.device)
            perm = torch.randperm(len(labels)).to(self.device)
            h_mix, y_mix = mixup(h, labels, lam, perm)
            loss = F.binary_cross_entropy_with_logits(self.net(h_mix), y_mix)
        else:
            loss = F.binary_cross_entropy_with_logits(plain_logits, labels)
        metrics = self._metrics(loss, plain_logits.detach(), labels, n_pos)
        if not torch.isfinite(loss):
            logger.warning("%s: non-finite loss %s, update skipped", self.name, loss.item())
            metrics["skipped_nonfinite"] = 1.0
            return metrics
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        self.optim.step()
        self.num_updates += 1
        return metrics

    @staticmethod
    def _metrics(loss: Tensor, logits: Tensor, labels: Tensor, n_pos: int) -> dict[str, float]:
        correct = ((logits > 0).float() == labels).float().mean()
        return {
            "loss": float(loss.item()),
            "accuracy": float(correct.item()),
            "logits_pos": float(logits[:n_pos].mean().item()),
            "logits_neg": float(logits[n_pos:].mean().item()),
            "skipped_nonfinite": 0.0,
        }

    def state_dict(self) -> dict[str, object]:
        """Returns `{"net": ..., "optim": ..., "num_updates": int}` (shared encoder excluded)."""
        return {"net": self.net.state_dict(), "optim": self.optim.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Loads a `state_dict()` in place. Raises DiscriminatorError on a mismatch."""
        try:
            net_state = dict(state["net"])  # type: ignore[arg-type]
            if self.net.normalizer is not None and not any(k.startswith("normalizer.") for k in net_state):
                # A checkpoint from before input standardisation: keep the demo statistics set here.
                logger.warning("%s: checkpoint has no input statistics; keeping the ones from the demos", self.name)
                net_state.update({f"normalizer.{k}": v for k, v in self.net.normalizer.state_dict().items()})
            self.net.load_state_dict(net_state)
            self.optim.load_state_dict(state["optim"])
            self.num_updates = int(state["num_updates"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise DiscriminatorError(f"{self.name}: bad state: {e}") from e


def _rows(obs: Mapping[str, Tensor]) -> int:
    if not obs:
        return 0
    return int(next(iter(obs.values())).shape[0])
