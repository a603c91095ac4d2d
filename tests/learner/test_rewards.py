"""Discriminator rewards: signs, monotonicity, finiteness."""

import pytest
import torch

from learner.rewards import medal_reward, vice_reward


def test_signs_and_values() -> None:
    logits = torch.tensor([-30.0, -2.0, 0.0, 2.0, 30.0])
    log_d = vice_reward(logits, "log_d")
    neg = vice_reward(logits, "neg_log_one_minus_d")
    assert torch.all(log_d <= 0) and torch.all(neg >= 0)
    p = torch.sigmoid(logits[1:4])
    assert torch.allclose(log_d[1:4], torch.log(p))
    assert torch.allclose(neg[1:4], -torch.log1p(-p))
    assert torch.allclose(medal_reward(logits), neg)
    assert torch.isfinite(log_d).all() and torch.isfinite(neg).all()


def test_monotone_in_the_logit() -> None:
    logits = torch.linspace(-50, 50, 1001)
    for r in (vice_reward(logits, "log_d"), vice_reward(logits, "neg_log_one_minus_d"), medal_reward(logits)):
        assert torch.all(r[1:] >= r[:-1])
        assert r[-1] > r[0]


def test_unknown_form_raises() -> None:
    with pytest.raises(ValueError, match="form"):
        vice_reward(torch.zeros(2), "linear")  # type: ignore[arg-type]
