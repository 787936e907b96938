"""Statistics for "is the new model really better?": confidence intervals, paired and unpaired
tests, effect sizes, the 5x2cv paired t-test, McNemar, the bootstrap and Holm's correction.
Every function takes plain sequences of numbers and returns plain numbers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass
class TestResult:
    test: str
    statistic: float
    p_value: float
    effect_name: str = ""
    effect: float = float("nan")


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and the t-based confidence interval ``(mean, low, high)``.

    >>> round(mean_ci([1.0, 2.0, 3.0])[2], 4)
    4.4841
    """
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf((1 + confidence) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return mean, mean - half, mean + half


def cohens_d_paired(a: Sequence[float], b: Sequence[float]) -> float:
    """d_z: mean difference over the standard deviation of the differences."""
    d = np.asarray(a, float) - np.asarray(b, float)
    sd = d.std(ddof=1)
    return float(d.mean() / sd) if sd > 0 else float("inf") * np.sign(d.mean())


def cohens_d(a: Sequence[float], b: Sequence[float]) -> float:
    """Difference of means over the pooled standard deviation."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    pooled = math.sqrt(
        ((len(x) - 1) * x.var(ddof=1) + (len(y) - 1) * y.var(ddof=1)) / (len(x) + len(y) - 2)
    )
    return float((x.mean() - y.mean()) / pooled) if pooled > 0 else float("nan")


def paired_t(a: Sequence[float], b: Sequence[float]) -> TestResult:
    r = stats.ttest_rel(a, b)
    return TestResult(
        "paired t-test", float(r.statistic), float(r.pvalue), "Cohen's d_z", cohens_d_paired(a, b)
    )


def welch_t(a: Sequence[float], b: Sequence[float]) -> TestResult:
    r = stats.ttest_ind(a, b, equal_var=False)
    return TestResult(
        "Welch's t-test", float(r.statistic), float(r.pvalue), "Cohen's d", cohens_d(a, b)
    )


def wilcoxon(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Wilcoxon signed-rank; effect: the matched-pairs rank-biserial correlation."""
    d = np.asarray(a, float) - np.asarray(b, float)
    r = stats.wilcoxon(a, b)
    nonzero = d[d != 0]
    ranks = stats.rankdata(np.abs(nonzero))
    total = ranks.sum()
    rbc = float((ranks[nonzero > 0].sum() - ranks[nonzero < 0].sum()) / total) if total else 0.0
    return TestResult(
        "Wilcoxon signed-rank", float(r.statistic), float(r.pvalue), "rank-biserial r", rbc
    )


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Mann-Whitney U; effect: the rank-biserial correlation 2U/(n1 n2) - 1."""
    r = stats.mannwhitneyu(a, b, alternative="two-sided")
    rbc = 2 * float(r.statistic) / (len(a) * len(b)) - 1
    return TestResult("Mann-Whitney U", float(r.statistic), float(r.pvalue), "rank-biserial r", rbc)


def five_by_two_cv_t(differences: Sequence[Sequence[float]]) -> TestResult:
    """Dietterich's 5x2cv paired t-test. ``differences[i][j]``: the difference of the two
    models' scores on fold j of replication i (5 x 2). t = p_11 / sqrt(mean_i s_i^2), 5 df."""
    p = np.asarray(differences, dtype=float)
    if p.shape != (5, 2):
        raise ValueError(f"the 5x2cv test needs 5 replications of 2 folds, got {p.shape}")
    mean = p.mean(axis=1, keepdims=True)
    s2 = ((p - mean) ** 2).sum(axis=1)
    t = float(p[0, 0] / math.sqrt(s2.mean())) if s2.mean() > 0 else float("inf")
    return TestResult("5x2cv paired t-test", t, float(2 * stats.t.sf(abs(t), 5)))


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> TestResult:
    """Exact McNemar test on the discordant pairs (a binomial test with p = 1/2)."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
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
    """Percentile bootstrap interval of mean(a) - mean(b) (pairs resampled together if paired)."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    rng = np.random.default_rng(seed)
    if paired:
        d = x - y
        means = d[rng.integers(0, len(d), (resamples, len(d)))].mean(axis=1)
    else:
        means = x[rng.integers(0, len(x), (resamples, len(x)))].mean(axis=1) - y[
            rng.integers(0, len(y), (resamples, len(y)))
        ].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order."""
    p = np.asarray(p_values, float)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, (len(p) - rank) * p[index])
        adjusted[index] = min(1.0, running)
    return adjusted.tolist()
