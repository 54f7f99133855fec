import pytest
import torch

from polar_rl.compute import flops_fraction, head_flops, layer_call_flops, policy_flops
from tests.conftest import tiny_layer_model


def test_full_model_has_flops_fraction_one_and_skips_save():
    lm = tiny_layer_model("llama", num_layers=4)
    assert flops_fraction(lm, [10, 20], [4, 4], [3, 3]) == pytest.approx(1.0)
    half = flops_fraction(lm, [10, 20], [2, 2], [3, 3])
    assert 0.5 < half < 1.0  # the head is paid by every method
    assert flops_fraction(lm, [10], [8], [3]) > 1.9  # looping every layer


def test_policy_cost_is_counted():
    lm = tiny_layer_model("llama", num_layers=4)
    mlp = torch.nn.Sequential(torch.nn.Linear(10, 64), torch.nn.Tanh(), torch.nn.Linear(64, 3))
    assert policy_flops(mlp, 4) == 2 * (640 + 192) * 4
    without = flops_fraction(lm, [10], [4], [3])
    with_policy = flops_fraction(lm, [10], [4], [3], decisions=4, policy=mlp, logit_lens=True)
    assert with_policy > without


def test_layer_flops_grow_with_length():
    lm = tiny_layer_model("gpt2", num_layers=2)
    assert layer_call_flops(lm, 20) > 2 * layer_call_flops(lm, 10) - 1e-9
    assert head_flops(lm, 2) == 2 * head_flops(lm, 1)
