"""Evaluation statistics: Wilson intervals, McNemar, the paired bootstrap, the per-method block."""

import math

import numpy as np
import pytest
from scipy import stats

from polar_rl.metrics import mcnemar_exact, method_summary, paired_bootstrap, score, wilson_interval


def test_wilson_interval_contains_estimate_and_narrows_with_n():
    lo, hi = wilson_interval(48, 100)
    assert lo < 0.48 < hi
    lo2, hi2 = wilson_interval(1140, 2376)
    assert hi2 - lo2 < (hi - lo) / 4
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)


def _wilson_score_formula(k: int, n: int, confidence: float) -> tuple[float, float]:
    """The closed form polar-rl computed before it used scipy (Wilson 1927), clipped to [0, 1]."""
    z = stats.norm.ppf(0.5 + confidence / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_interval_equals_the_score_formula(confidence: float) -> None:
    """scipy's interval is the old formula to 1e-12 on every k of small n and on the evaluation sizes
    (ARC-Easy val 110, OpenBookQA 500, ARC-Challenge 1,172, ARC-Easy test 2,376)."""
    cases = [(k, n) for n in range(1, 61) for k in range(n + 1)]
    cases += [(k, n) for n in (110, 500, 1172, 2376) for k in np.linspace(0, n, 41).astype(int)]
    for k, n in cases:
        got, want = wilson_interval(int(k), n, confidence), _wilson_score_formula(int(k), n, confidence)
        assert got == pytest.approx(want, abs=1e-12, rel=0), (k, n)
        assert 0.0 <= got[0] <= k / n <= got[1] <= 1.0


def test_wilson_interval_of_no_questions_is_everything() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_paired_bootstrap_is_the_percentile_interval_of_resampled_mean_differences() -> None:
    """The same seed gives the same resamples as ``rng.integers`` draws them, and the interval is the
    2.5 / 97.5 % quantiles of their means (what eval.json's delta_ci has always held)."""
    rng = np.random.default_rng(5)
    full, method = rng.random(300) < 0.6, rng.random(300) < 0.5
    diff = method.astype(float) - full.astype(float)
    idx = np.random.default_rng(3).integers(0, 300, size=(500, 300))
    means = diff[idx].mean(axis=1)
    want = (np.quantile(means, 0.025), np.quantile(means, 0.975))
    assert paired_bootstrap(full, method, n_boot=500, seed=3) == want
    assert paired_bootstrap(full, method, n_boot=500, seed=4) != want
    assert paired_bootstrap([True], [False]) == (-1.0, -1.0)  # one question: a point, not an error
    assert paired_bootstrap([], []) == (0.0, 0.0)


def test_mcnemar_counts_discordant_pairs():
    full = [True, True, False, False, True]
    method = [True, False, True, True, True]
    r = mcnemar_exact(full, method)
    assert (r["lost"], r["gained"]) == (1, 2)
    assert r["p_value"] == pytest.approx(1.0)
    lopsided = mcnemar_exact([True] * 30, [False] * 30)
    assert lopsided["p_value"] < 1e-6


def test_paired_bootstrap_sign():
    full = np.array([True] * 50 + [False] * 50)
    better = full.copy()
    better[50:70] = True
    lo, hi = paired_bootstrap(full, better)
    assert 0 < lo < 0.2 < hi


def test_method_summary_rates():
    full = [True, True, False, False]
    method = [True, False, True, False]
    s = method_summary(method, [30, 20, 10, 20], 30, full)
    assert s["accuracy"] == 0.5 and s["layer_calls"] == 20 and s["compute_fraction"] == pytest.approx(2 / 3)
    assert s["correction_rate"] == 0.5 and s["retention_rate"] == 0.5
    assert s["mcnemar"]["lost"] == 1 and s["mcnemar"]["gained"] == 1
    assert score(0.5, 0.8, 0.1) == pytest.approx(0.42)
