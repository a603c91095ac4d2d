"""resetfree-sim's evaluator keeps the forward policy of its best evaluation (issue 18: keep
the best, not only the last checkpoints), so a practice run that declines later loses nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import simulation.app.evaluator as evaluator_module
from learner.networks import NetworkConfig, build_actor
from simulation.evaluation import EvalResult
from simulation.app.evaluator import EvaluatorConfig, PolicyEvaluator, task_spec
from simulation.tools.policies import POLICY_KIND, read_policy

NET = NetworkConfig(hidden_dim=16, feature_dim=8)


def _weights(seed: int) -> dict[str, np.ndarray]:
    import torch

    torch.manual_seed(seed)
    obs_spec, action_dim = task_spec("tabletop", "state")
    return {k: v.numpy().astype(np.float16) for k, v in build_actor(obs_spec, action_dim, NET).state_dict().items()}


def test_the_best_evaluations_policy_is_kept_and_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scores = iter([0.2, 0.5, 0.5, 0.3])

    def scripted(policy, task, **kwargs) -> EvalResult:  # the score, not the policy, is under test
        rate = next(scores)
        return EvalResult(success_rate=rate, successes=[rate > 0.4], returns=[rate], lengths=[1])

    monkeypatch.setattr(evaluator_module, "evaluate", scripted)
    evaluator = PolicyEvaluator(EvaluatorConfig(task="tabletop", video=False), tmp_path, NET)
    offered = {}
    for version, step in enumerate((10_000, 20_000, 30_000, 40_000)):
        offered[step] = _weights(version)
        assert evaluator.offer_weights("forward", version, offered[step])
        evaluator.evaluate_latest(step, wall_s=1.0)
    source = read_policy(evaluator.best_dir)
    assert source.kind == POLICY_KIND and source.path.name == "ckpt-20000"  # the first 0.5 stays best
    for name, tensor in source.state_dict.items():
        assert tensor.dtype.is_floating_point and str(tensor.dtype) == "torch.float32"
        np.testing.assert_array_equal(tensor.numpy(), offered[20_000][name].astype(np.float32))
    assert len(list(evaluator.best_dir.glob("ckpt-*"))) == 1
