"""Discriminator-based rewards (MEDAL++, Sharma et al. 2023, Sec. 4).

Rewards are computed on the learner at sampling time from the *current* discriminator's
logits on the next observation; they are never stored in replay, so a discriminator
update changes every future reward at once.
"""

import logging
import math
from typing import Literal

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

ViceRewardForm = Literal["log_d", "neg_log_one_minus_d"]

REWARD_EPS = 1e-10
"""The authors' ε inside the logs (``-log(1 − σ + ε)``, ``log(min(σ + ε, 1))``): it bounds every
reward by ``|log ε|`` ≈ 23.03, so a critic's targets stay under ``23.03 / (1 − γ)``. Without it a
confident discriminator (logit 40) paid 40 per step and the backward critic diverged."""
REWARD_MAX = -math.log(REWARD_EPS)
"""The bound on |reward| that ``REWARD_EPS`` gives (≈ 23.03)."""
VICE_REWARD_FORMS: tuple[str, ...] = ("log_d", "neg_log_one_minus_d")


def vice_reward(logits: torch.Tensor, form: ViceRewardForm = "neg_log_one_minus_d") -> torch.Tensor:
    """Forward (VICE) reward from discriminator logits D(s').

    `log_d` is `log σ(D)` (≤ 0, the VICE/authors' choice); `neg_log_one_minus_d` is
    `−log(1 − σ(D))` (≥ 0, what the paper writes). Both increase monotonically with the
    logit and are bounded by `REWARD_MAX` in magnitude, as the authors' ε bounds them.

    Returns a tensor shaped like `logits` (no gradient flows to the discriminator when
    called under `torch.no_grad`, which the trainer does). Raises ValueError on an unknown
    form. Does not block.
    """
    if form == "log_d":
        return F.logsigmoid(logits).clamp(min=-REWARD_MAX)
    if form == "neg_log_one_minus_d":
        return _neg_log_one_minus_d(logits)
    raise ValueError(f"form must be one of {VICE_REWARD_FORMS}, got {form!r}")


def medal_reward(logits: torch.Tensor) -> torch.Tensor:
    """Backward (MEDAL) reward `−log(1 − σ(D(s')) + ε)`, in [0, `REWARD_MAX`] and increasing.

    High where the state looks like the demonstrations' state distribution. Returns a
    tensor shaped like `logits`. Does not block.
    """
    return _neg_log_one_minus_d(logits)


def _neg_log_one_minus_d(logits: torch.Tensor) -> torch.Tensor:
    """`−log(1 − σ(x) + ε)` = `−log(σ(−x) + ε)`: softplus(x) for moderate x, capped near `REWARD_MAX`."""
    # log(σ(−x) + ε) = logaddexp(logsigmoid(−x), log ε): exact, and finite for any finite x.
    return (-torch.logaddexp(F.logsigmoid(-logits), torch.full_like(logits, math.log(REWARD_EPS)))).clamp(min=0.0)
