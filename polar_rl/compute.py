"""Compute accounting: FLOPs of layer calls, the LM head and the policy itself.

Counts multiply-accumulates x 2 of the matmuls (the usual 2 x params x tokens rule) plus the
attention score and value products. Every method (full model, baselines, policy) is accounted by
the same functions, so their ``flops_fraction`` values are comparable by construction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def layer_params(lm: object) -> int:
    """Parameters of one decoder layer (all layers of a model have the same shape)."""
    layer = lm.parts.layers[0]  # type: ignore[attr-defined]
    return sum(p.numel() for p in layer.parameters())


def layer_call_flops(lm: object, seq_len: int) -> float:
    """FLOPs of one layer call on a causal sequence of ``seq_len`` tokens."""
    hidden = int(lm.hidden_size)  # type: ignore[attr-defined]
    matmul = 2.0 * layer_params(lm) * seq_len
    attention = 2.0 * 2.0 * hidden * seq_len * (seq_len + 1) / 2  # QK^T and AV over the causal half
    return matmul + attention


def head_flops(lm: object, n_positions: int) -> float:
    """FLOPs of the LM head on ``n_positions`` positions."""
    head = lm.parts.head  # type: ignore[attr-defined]
    return 2.0 * head.weight.numel() * n_positions


def policy_flops(policy: torch.nn.Module | None, decisions: int) -> float:
    """FLOPs of running an MLP policy ``decisions`` times (2 x weights per forward)."""
    if policy is None:
        return 0.0
    weights = sum(p.numel() for n, p in policy.named_parameters() if n.endswith("weight"))
    return 2.0 * weights * decisions


def flops_fraction(
    lm: object,
    seq_lens: Sequence[int],
    layer_calls: Sequence[float],
    head_positions: Sequence[int],
    decisions: int = 0,
    policy: torch.nn.Module | None = None,
    logit_lens: bool = False,
) -> float:
    """Mean FLOPs of a method / FLOPs of the full model, over examples.

    seq_lens: tokens per example; layer_calls: calls per example; head_positions: positions the
    head reads to score each example. ``decisions`` policy calls per example, each reading the head
    once more at the last context token when the observation uses logit-lens features.
    """
    L = int(lm.num_layers)  # type: ignore[attr-defined]
    total, full = 0.0, 0.0
    for t, calls, hp in zip(seq_lens, layer_calls, head_positions, strict=True):
        per_call = layer_call_flops(lm, t)
        full += L * per_call + head_flops(lm, hp)
        total += calls * per_call + head_flops(lm, hp)
        total += policy_flops(policy, decisions)
        if logit_lens:
            total += head_flops(lm, decisions)
    return total / full if full else 0.0
