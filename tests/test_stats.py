"""Every statistic against scipy.stats or its formula, and the bootstrap's coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sp

from mlenv.bench import stats

A = [0.861, 0.872, 0.858, 0.869, 0.875, 0.866, 0.870, 0.862]
B = [0.855, 0.861, 0.857, 0.860, 0.866, 0.858, 0.861, 0.859]


def test_mean_ci_against_scipy():
    mean, low, high = stats.mean_ci(A)
    ref = sp.t.interval(0.95, len(A) - 1, loc=np.mean(A), scale=sp.sem(A))
    assert mean == pytest.approx(np.mean(A))
    assert (low, high) == pytest.approx(ref, rel=1e-12)


def test_paired_and_unpaired_tests_against_scipy():
    r = stats.paired_t(A, B)
    ref = sp.ttest_rel(A, B)
    assert (r.statistic, r.p_value) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-12)
    d = np.subtract(A, B)
    assert r.effect == pytest.approx(d.mean() / d.std(ddof=1))
    r = stats.welch_t(A, B)
    ref = sp.ttest_ind(A, B, equal_var=False)
    assert (r.statistic, r.p_value) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-12)
    pooled = math.sqrt((np.var(A, ddof=1) + np.var(B, ddof=1)) / 2)  # equal sizes
    assert r.effect == pytest.approx((np.mean(A) - np.mean(B)) / pooled)
    r = stats.wilcoxon(A, B)
    ref = sp.wilcoxon(A, B)
    assert (r.statistic, r.p_value) == pytest.approx((ref.statistic, ref.pvalue))
    assert r.effect == pytest.approx(1.0)  # every difference is positive
    r = stats.mann_whitney(A, B)
    ref = sp.mannwhitneyu(A, B, alternative="two-sided")
    assert (r.statistic, r.p_value) == pytest.approx((ref.statistic, ref.pvalue))
    assert r.effect == pytest.approx(2 * ref.statistic / 64 - 1)


def test_mcnemar_is_an_exact_binomial_on_discordant_pairs():
    a = [True] * 30 + [True] * 9 + [False] * 2 + [False] * 5
    b = [True] * 30 + [False] * 9 + [True] * 2 + [False] * 5
    r = stats.mcnemar(a, b)
    assert r.p_value == pytest.approx(sp.binomtest(9, 11, 0.5).pvalue)
    assert r.p_value == pytest.approx(2 * sum(math.comb(11, k) for k in range(3)) / 2**11)


def test_five_by_two_cv_against_the_formula_on_a_hand_computed_case():
    p = [[0.02, 0.04], [0.01, 0.03], [0.03, 0.03], [0.00, 0.02], [0.05, 0.01]]
    # s_i^2 = (p_i1 - mean_i)^2 + (p_i2 - mean_i)^2 = 0.0002, 0.0002, 0, 0.0002, 0.0008
    t = 0.02 / math.sqrt((0.0002 + 0.0002 + 0 + 0.0002 + 0.0008) / 5)
    r = stats.five_by_two_cv_t(p)
    assert r.statistic == pytest.approx(t)
    assert r.p_value == pytest.approx(2 * sp.t.sf(t, 5))
    with pytest.raises(ValueError, match="5 replications of 2 folds"):
        stats.five_by_two_cv_t([[0.1, 0.2]])


def test_holm():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])


def test_bootstrap_interval_covers_the_true_difference_near_the_nominal_rate():
    rng = np.random.default_rng(1)
    trials, covered = 300, 0
    for t in range(trials):
        a, b = rng.normal(1.0, 1.0, 40), rng.normal(0.5, 1.0, 40)
        low, high = stats.bootstrap_diff_ci(a, b, paired=False, resamples=2000, seed=t)
        covered += low <= 0.5 <= high
    assert 0.90 <= covered / trials <= 0.99, covered / trials
