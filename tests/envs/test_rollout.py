"""Decoding rules of a trained policy: greedy and a SKIP-probability threshold."""

from types import SimpleNamespace

import numpy as np
import torch

from polar_rl.envs.rollout import sb3_policy


class FixedPolicy:
    """A stand-in SB3 model whose action distribution is the same table for every call."""

    device = "cpu"

    def __init__(self, probs):
        self.probs = torch.tensor(probs, dtype=torch.float32)
        self.policy = SimpleNamespace(get_distribution=self._dist)

    def _dist(self, obs):
        return SimpleNamespace(distribution=SimpleNamespace(probs=self.probs[: obs.shape[0]]))


def test_skip_threshold_skips_when_probability_reaches_it():
    model = FixedPolicy([[0.30, 0.60, 0.10], [0.05, 0.25, 0.70], [0.10, 0.85, 0.05]])
    obs = np.zeros((3, 4), np.float32)
    masks = np.ones((3, 3), bool)
    act = sb3_policy(model, skip_threshold=0.2)
    assert act(obs, masks, 0).tolist() == [0, 2, 1]
    assert sb3_policy(model, skip_threshold=0.05)(obs, masks, 0).tolist() == [0, 0, 0]
    assert sb3_policy(model, skip_threshold=0.5)(obs, masks, 0).tolist() == [1, 2, 1]


def test_skip_threshold_respects_masks():
    model = FixedPolicy([[0.30, 0.60, 0.10], [0.05, 0.25, 0.70]])
    obs = np.zeros((2, 4), np.float32)
    masks = np.array([[False, True, True], [True, True, False]])
    assert sb3_policy(model, skip_threshold=0.01)(obs, masks, 0).tolist() == [1, 0]
    # LOOP masked and SKIP below threshold: EXECUTE
    assert sb3_policy(model, skip_threshold=0.99)(obs, masks, 0).tolist() == [1, 1]
