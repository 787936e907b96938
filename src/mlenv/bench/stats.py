"""Statistics for "is the new model really better?": confidence intervals, paired and unpaired
tests, effect sizes, the corrected resampled t-test and the 5x2cv paired t-test for
cross-validation, McNemar, the bootstrap and Holm's correction.
Every function takes plain sequences of numbers and returns plain numbers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass
class TestResult:
    __test__ = False  # not a pytest test class

    test: str
    statistic: float
    p_value: float
    effect_name: str = ""
    effect: float = float("nan")
    df: float = float("nan")  # degrees of freedom of a t statistic


def _sample(values: Sequence[float], name: str, at_least: int = 2) -> np.ndarray:
    """``values`` as a 1-D float array of at least ``at_least`` finite numbers."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"{name}: expects a flat list of numbers, got shape {x.shape}")
    if len(x) < at_least:
        raise ValueError(f"{name}: needs at least {at_least} values, got {len(x)}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: every value must be a finite number, got {x.tolist()}")
    return x


def _differences(a: Sequence[float], b: Sequence[float], name: str) -> np.ndarray:
    """``a - b`` for a paired test: both of the same length, at least 2 pairs."""
    x, y = _sample(a, name), _sample(b, name)
    if len(x) != len(y):
        raise ValueError(
            f"{name}: pairs need as many values in a as in b, got {len(x)} and {len(y)}"
        )
    return x - y


def _t_test(mean: float, standard_error: float, df: float) -> tuple[float, float]:
    """Two-sided t statistic and p-value; a zero standard error gives t = 0 (p = 1) when the
    mean is 0, else an infinite t (p = 0)."""
    if standard_error == 0:
        return (0.0, 1.0) if mean == 0 else (math.copysign(math.inf, mean), 0.0)
    t = mean / standard_error
    return t, float(2 * stats.t.sf(abs(t), df))


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and the t-based confidence interval ``(mean, low, high)``; with one value the
    interval is NaN.

    >>> round(mean_ci([1.0, 2.0, 3.0])[2], 4)
    4.4841
    """
    x = _sample(values, "mean_ci", at_least=1)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf((1 + confidence) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return mean, float(mean - half), float(mean + half)


def cohens_d_paired(a: Sequence[float], b: Sequence[float]) -> float:
    """d_z: mean difference over the standard deviation of the differences.

    >>> cohens_d_paired([3.0, 5.0, 7.0], [1.0, 2.0, 3.0])
    3.0
    """
    d = _differences(a, b, "cohens_d_paired")
    sd = d.std(ddof=1)
    if sd == 0:
        return 0.0 if d.mean() == 0 else math.copysign(math.inf, d.mean())
    return float(d.mean() / sd)


def cohens_d(a: Sequence[float], b: Sequence[float]) -> float:
    """Difference of means over the pooled standard deviation.

    >>> round(cohens_d([2.0, 4.0], [0.0, 2.0]), 4)  # 2 / sqrt(2)
    1.4142
    """
    x, y = _sample(a, "cohens_d"), _sample(b, "cohens_d")
    pooled = math.sqrt(
        ((len(x) - 1) * x.var(ddof=1) + (len(y) - 1) * y.var(ddof=1)) / (len(x) + len(y) - 2)
    )
    return float((x.mean() - y.mean()) / pooled) if pooled > 0 else float("nan")


def paired_t(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Student's paired t-test: t = mean(d) / (sd(d) / sqrt(n)), n - 1 df. Right for pairs
    that are independent of each other (one pair per seed).

    >>> round(paired_t([3.0, 5.0, 7.0], [1.0, 2.0, 3.0]).statistic, 4)  # 3 / (1 / sqrt(3))
    5.1962
    """
    d = _differences(a, b, "paired_t")
    t, p = _t_test(float(d.mean()), float(d.std(ddof=1)) / math.sqrt(len(d)), len(d) - 1)
    return TestResult("paired t-test", t, p, "Cohen's d_z", cohens_d_paired(a, b), len(d) - 1)


def corrected_resampled_t(
    a: Sequence[float], b: Sequence[float], test_train_ratio: float
) -> TestResult:
    """Nadeau and Bengio's (2003) corrected resampled t-test for the J paired scores of
    (repeated) cross-validation: t = mean(d) / sqrt((1/J + n_test/n_train) var(d)), J - 1 df.
    The term n_test/n_train (about 1/(k-1) for k folds; more when the validation rows come out
    of the training folds) accounts for the training rows the folds share, which make their
    scores correlated; without it (the plain paired t-test) the test rejects far too often.

    >>> d = corrected_resampled_t([3.0, 5.0, 7.0], [1.0, 2.0, 3.0], 0.5)  # d = 2, 3, 4
    >>> round(d.statistic, 4)  # 3 / sqrt((1/3 + 1/2) * 1)
    3.2863
    """
    d = _differences(a, b, "corrected_resampled_t")
    if not test_train_ratio > 0:
        raise ValueError(
            f"corrected_resampled_t: test_train_ratio (n_test/n_train) must be > 0, "
            f"got {test_train_ratio}"
        )
    j = len(d)
    standard_error = math.sqrt((1 / j + test_train_ratio) * d.var(ddof=1))
    t, p = _t_test(float(d.mean()), standard_error, j - 1)
    return TestResult(
        "corrected resampled t-test", t, p, "Cohen's d_z", cohens_d_paired(a, b), j - 1
    )


def corrected_resampled_ci(
    a: Sequence[float], b: Sequence[float], test_train_ratio: float, confidence: float = 0.95
) -> tuple[float, float]:
    """The interval of mean(a - b) that goes with :func:`corrected_resampled_t`:
    mean(d) -/+ t_{J-1} sqrt((1/J + n_test/n_train) var(d)).

    >>> [round(v, 3) for v in corrected_resampled_ci([3.0, 5.0, 7.0], [1.0, 2.0, 3.0], 0.5)]
    [-0.928, 6.928]
    """
    d = _differences(a, b, "corrected_resampled_ci")
    j = len(d)
    half = stats.t.ppf((1 + confidence) / 2, j - 1) * math.sqrt(
        (1 / j + test_train_ratio) * d.var(ddof=1)
    )
    return float(d.mean() - half), float(d.mean() + half)


def welch_t(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Welch's t-test for two independent samples with unequal variances; the df is the
    Welch-Satterthwaite approximation.

    >>> round(welch_t([1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]).df, 4)
    4.9592
    """
    x, y = _sample(a, "welch_t"), _sample(b, "welch_t")
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)  # squared standard errors
    se2 = vx + vy
    df = se2**2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1)) if se2 > 0 else len(x) + len(y) - 2
    t, p = _t_test(float(x.mean() - y.mean()), math.sqrt(se2), df)
    return TestResult("Welch's t-test", t, p, "Cohen's d", cohens_d(a, b), float(df))


def wilcoxon(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Wilcoxon signed-rank; statistic: min(W+, W-); effect: the matched-pairs rank-biserial
    correlation (W+ - W-) / (W+ + W-).

    >>> wilcoxon([2.0, 3.0, 5.0, 9.0], [1.0, 1.0, 2.0, 4.0]).statistic
    0.0
    """
    d = _differences(a, b, "wilcoxon")
    if not np.any(d != 0):
        raise ValueError("wilcoxon: every difference is zero; the test needs one that is not")
    r = stats.wilcoxon(d)
    nonzero = d[d != 0]
    ranks = stats.rankdata(np.abs(nonzero))
    rbc = float((ranks[nonzero > 0].sum() - ranks[nonzero < 0].sum()) / ranks.sum())
    return TestResult(
        "Wilcoxon signed-rank", float(r.statistic), float(r.pvalue), "rank-biserial r", rbc
    )


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Mann-Whitney U (U of ``a``: the pairs with a > b, ties count 1/2); effect: the
    rank-biserial correlation 2U/(n1 n2) - 1.

    >>> mann_whitney([3.0, 4.0, 5.0], [1.0, 2.0]).statistic
    6.0
    """
    x, y = _sample(a, "mann_whitney", at_least=1), _sample(b, "mann_whitney", at_least=1)
    r = stats.mannwhitneyu(x, y, alternative="two-sided")
    rbc = 2 * float(r.statistic) / (len(x) * len(y)) - 1
    return TestResult("Mann-Whitney U", float(r.statistic), float(r.pvalue), "rank-biserial r", rbc)


def five_by_two_cv_t(differences: Sequence[Sequence[float]]) -> TestResult:
    """Dietterich's (1998) 5x2cv paired t-test. ``differences[i][j]``: the difference of the
    two models' scores on fold j of replication i (5 x 2). t = p_11 / sqrt(mean_i s_i^2), 5 df,
    with s_i^2 = (p_i1 - mean_i)^2 + (p_i2 - mean_i)^2.

    >>> round(five_by_two_cv_t([[0.02, 0.0]] * 5).statistic, 4)  # 0.02 / sqrt(0.0002)
    1.4142
    """
    p = np.asarray(differences, dtype=float)
    if p.shape != (5, 2):
        raise ValueError(f"the 5x2cv test needs 5 replications of 2 folds, got {p.shape}")
    mean = p.mean(axis=1, keepdims=True)
    s2 = ((p - mean) ** 2).sum(axis=1)
    t, pvalue = _t_test(float(p[0, 0]), math.sqrt(s2.mean()), 5)
    return TestResult("5x2cv paired t-test", t, pvalue, df=5)


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> TestResult:
    """Exact McNemar test on the discordant pairs (a binomial test with p = 1/2).

    >>> round(mcnemar([True, True, True, False], [False, False, False, True]).p_value, 4)
    0.625
    """
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b.shape:
        raise ValueError(f"mcnemar: needs one answer per row from both, got {len(a)} and {len(b)}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    p = float(stats.binomtest(only_a, n, 0.5).pvalue) if n else 1.0
    return TestResult(
        "McNemar (exact)",
        float(min(only_a, only_b)),
        p,
        "discordant a-only / b-only",
        float(only_a) / max(only_b, 1),
    )


def bootstrap_diff_ci(
    a: Sequence[float],
    b: Sequence[float],
    paired: bool,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a) - mean(b) (pairs resampled together if paired).

    >>> bootstrap_diff_ci([2.0, 3.0], [1.0, 2.0], paired=True)
    (1.0, 1.0)
    """
    x, y = _sample(a, "bootstrap_diff_ci", 1), _sample(b, "bootstrap_diff_ci", 1)
    rng = np.random.default_rng(seed)
    if paired:
        d = _differences(x, y, "bootstrap_diff_ci")
        means = d[rng.integers(0, len(d), (resamples, len(d)))].mean(axis=1)
    else:
        means = x[rng.integers(0, len(x), (resamples, len(x)))].mean(axis=1) - y[
            rng.integers(0, len(y), (resamples, len(y)))
        ].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order.

    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
    """
    p = _sample(p_values, "holm", at_least=1)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, (len(p) - rank) * p[index])
        adjusted[index] = min(1.0, running)
    return adjusted.tolist()
