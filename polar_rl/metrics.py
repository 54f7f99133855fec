"""Evaluation statistics: accuracy with confidence intervals and paired tests against the full model.

On 4-choice questions a program that is right by chance looks like a win, so every comparison
reports a 95 % Wilson interval, the paired difference with a bootstrap interval, and an exact
McNemar test on the discordant pairs (full right / method wrong vs full wrong / method right).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (scipy's ``proportion_ci``); (0, 1) when n is 0."""
    if n == 0:
        return (0.0, 1.0)
    ci = stats.binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def mcnemar_exact(full_correct: Sequence[bool], method_correct: Sequence[bool]) -> dict[str, Any]:
    """Exact (binomial) McNemar test. b = full right & method wrong, c = full wrong & method right."""
    f = np.asarray(full_correct, dtype=bool)
    m = np.asarray(method_correct, dtype=bool)
    b = int((f & ~m).sum())
    c = int((~f & m).sum())
    p = 1.0 if b + c == 0 else float(stats.binomtest(c, b + c, 0.5).pvalue)
    return {"lost": b, "gained": c, "p_value": p}


def paired_bootstrap(
    full_correct: Sequence[bool], method_correct: Sequence[bool], n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95 % bootstrap interval of accuracy(method) - accuracy(full), resampling questions."""
    # not scipy.stats.bootstrap: same resamples, but its levels (1-0.95)/2 move last bits; it refuses n=1
    diff = np.asarray(method_correct, dtype=float) - np.asarray(full_correct, dtype=float)
    if diff.size == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diff.size, size=(n_boot, diff.size))
    means = diff[idx].mean(axis=1)
    return (float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975)))


def method_summary(
    correct: Sequence[bool],
    layer_calls: Sequence[float],
    num_layers: int,
    full_correct: Sequence[bool],
    flops_fraction: float | None = None,
    seconds_per_example: float | None = None,
) -> dict[str, Any]:
    """The per-method block of ``eval.json``."""
    c = np.asarray(correct, dtype=bool)
    f = np.asarray(full_correct, dtype=bool)
    n = int(c.size)
    lo, hi = wilson_interval(int(c.sum()), n)
    calls = float(np.mean(layer_calls)) if n else 0.0
    out: dict[str, Any] = {
        "n": n,
        "accuracy": float(c.mean()) if n else 0.0,
        "accuracy_ci": [lo, hi],
        "layer_calls": calls,
        "compute_fraction": calls / num_layers,
        "flops_fraction": flops_fraction,
        # correction: wrong under the full model -> right; retention: right -> right
        "correction_rate": float((c & ~f).sum() / max(1, (~f).sum())),
        "retention_rate": float((c & f).sum() / max(1, f.sum())),
        "seconds_per_example": seconds_per_example,
    }
    out["delta_vs_full"] = out["accuracy"] - (float(f.mean()) if n else 0.0)
    out["delta_ci"] = list(paired_bootstrap(f, c))
    out["mcnemar"] = mcnemar_exact(f, c)
    return out


def score(accuracy: float, compute_fraction: float, score_penalty: float = 0.1) -> float:
    """``eval/score``, the sweep target: accuracy - score_penalty x compute fraction.

    One fixed trade-off for every run (default: 10 % of compute is worth 1 accuracy point), not the
    reward's lambda, so runs with different lambdas compare on one scale.
    """
    return accuracy - score_penalty * compute_fraction
