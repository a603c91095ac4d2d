"""Discriminator-based rewards (MEDAL++, Sharma et al. 2023, Sec. 4).

Rewards are computed on the learner at sampling time from the *current* discriminator's
logits on the next observation; they are never stored in replay, so a discriminator
update changes every future reward at once.
"""

import logging
from typing import Literal

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

ViceRewardForm = Literal["log_d", "neg_log_one_minus_d"]
VICE_REWARD_FORMS: tuple[str, ...] = ("log_d", "neg_log_one_minus_d")


def vice_reward(logits: torch.Tensor, form: ViceRewardForm = "neg_log_one_minus_d") -> torch.Tensor:
    """Forward (VICE) reward from discriminator logits D(s').

    `log_d` is `log σ(D)` (≤ 0, the VICE/authors' choice); `neg_log_one_minus_d` is
    `−log(1 − σ(D))` (≥ 0, what the paper writes). Both increase monotonically with the
    logit; both are computed with `logsigmoid`/`softplus` so they stay finite for any
    finite logit.

    Returns a tensor shaped like `logits` (no gradient flows to the discriminator when
    called under `torch.no_grad`, which the trainer does). Raises ValueError on an unknown
    form. Does not block.
    """
    if form == "log_d":
        return F.logsigmoid(logits)
    if form == "neg_log_one_minus_d":
        # −log(1 − σ(x)) = −log σ(−x) = softplus(x)
        return F.softplus(logits)
    raise ValueError(f"form must be one of {VICE_REWARD_FORMS}, got {form!r}")


def medal_reward(logits: torch.Tensor) -> torch.Tensor:
    """Backward (MEDAL) reward `−log(1 − σ(D(s')))` = softplus(D(s')), ≥ 0 and increasing.

    High where the state looks like the demonstrations' state distribution. Returns a
    tensor shaped like `logits`. Does not block.
    """
    return F.softplus(logits)
