"""Behaviour cloning: fits a demo mapping, skips padding rows, loads into build_actor."""

import numpy as np
import pytest
import torch

from learner.bc import BCConfig, train_bc
from learner.errors import LearnerError
from learner.networks import NetworkConfig, build_actor

torch.set_num_threads(1)


def test_bc_fits_a_state_mapping_and_loads_into_build_actor():
    rng = np.random.default_rng(0)
    n = 400
    state = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    actions = np.stack([0.5 * state[:, 0], -0.5 * state[:, 1]], axis=1).astype(np.float32)
    is_last = np.zeros(n, bool)
    is_last[99::100] = True
    actions[is_last] = 0.9  # padding rows: must not be learnt
    spec = {"state": ((3,), "float32")}
    net = NetworkConfig(hidden_dim=64)
    sd = train_bc({"state": state}, actions, is_last, spec, net, BCConfig(steps=300, batch_size=64, lr=1e-3))
    policy = build_actor(spec, 2, net)
    policy.load_state_dict(sd)
    with torch.no_grad():
        pred = policy({"state": torch.as_tensor(state)}).numpy()
    err = np.abs(pred[~is_last] - actions[~is_last]).mean()
    assert err < 0.05, err


def test_bc_pixels_runs_and_round_trips():
    rng = np.random.default_rng(0)
    spec = {"cam": ((3, 24, 24), "uint8"), "proprio": ((2,), "float32")}
    obs = {"cam": rng.integers(0, 256, (20, 3, 24, 24), dtype=np.uint8),
           "proprio": rng.normal(size=(20, 2)).astype(np.float32)}
    net = NetworkConfig(feature_dim=8, hidden_dim=16, conv_channels=4)
    sd = train_bc(obs, rng.uniform(-1, 1, (20, 2)).astype(np.float32), np.zeros(20, bool), spec, net,
                  BCConfig(steps=3, batch_size=8))
    policy = build_actor(spec, 2, net.to_dict())
    policy.load_state_dict(sd)


def test_bc_rejects_bad_inputs():
    spec = {"state": ((3,), "float32")}
    with pytest.raises(LearnerError, match="no demo step"):
        train_bc({"state": np.zeros((3, 3), np.float32)}, np.zeros((3, 2), np.float32), np.ones(3, bool),
                 spec, NetworkConfig(), BCConfig(steps=1))
    with pytest.raises(LearnerError, match="state"):
        train_bc({"state": np.zeros((2, 3), np.float32)}, np.zeros((3, 2), np.float32), np.zeros(3, bool),
                 spec, NetworkConfig(), BCConfig(steps=1))
    with pytest.raises(ValueError, match="steps"):
        BCConfig(steps=0)
