import numpy as np
import pytest

from polar_rl.metrics import mcnemar_exact, method_summary, paired_bootstrap, score, wilson_interval


def test_wilson_interval_contains_estimate_and_narrows_with_n():
    lo, hi = wilson_interval(48, 100)
    assert lo < 0.48 < hi
    lo2, hi2 = wilson_interval(1140, 2376)
    assert hi2 - lo2 < (hi - lo) / 4
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)


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
