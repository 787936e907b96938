"""Every statistic against a published worked example or a value computed by hand here (never
scipy against scipy), and `compare` through a real SQLite store: which test for which group,
and which groups it refuses."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from mlenv.bench import stats
from mlenv.bench.experiments import compare_groups, parse_seeds, repeat
from mlenv.cli import main
from mlenv.errors import ConfigError
from mlenv.track.store import Store

# Student (1908), "The probable error of a mean", Biometrika 6: extra hours of sleep of 10
# patients under two drugs (Cushny & Peebles); R's `sleep` data set.
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| > |t|) for Student's t with an integer df, in closed form: Abramowitz & Stegun
    (1964) 26.7.3 (odd df) and 26.7.4 (even df), with theta = atan(|t| / sqrt(df))."""
    theta = math.atan(abs(t) / math.sqrt(df))
    c, s = math.cos(theta), math.sin(theta)
    if df % 2:  # A = 2/pi (theta + sin(theta) (cos + 2/3 cos^3 + 2*4/(3*5) cos^5 + ...))
        series, coef = 0.0, 1.0
        for j in range(1, (df - 1) // 2 + 1):
            series += coef * c ** (2 * j - 1)
            coef *= 2 * j / (2 * j + 1)
        return 1 - 2 / math.pi * (theta + s * series)
    series, coef = 0.0, 1.0  # A = sin(theta) (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
    for j in range(df // 2):
        series += coef * c ** (2 * j)
        coef *= (2 * j + 1) / (2 * j + 2)
    return 1 - s * series


def test_closed_form_t_tail_against_printed_table_values():
    # two-sided 5% points from a t table: t_{0.975,2} = 4.303, t_{0.975,5} = 2.571,
    # t_{0.975,9} = 2.262; and the Cauchy (df 1): P(|T| > 1) = 1/2
    assert t_two_sided_p(4.303, 2) == pytest.approx(0.05, rel=1e-3)
    assert t_two_sided_p(2.571, 5) == pytest.approx(0.05, rel=1e-3)
    assert t_two_sided_p(2.262, 9) == pytest.approx(0.05, rel=1e-3)
    assert t_two_sided_p(1.0, 1) == pytest.approx(0.5, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Intervals and effect sizes


def test_mean_ci_by_hand_with_a_tabled_t_quantile():
    values = [0.81, 0.84, 0.83, 0.80, 0.82]
    # mean 0.82; deviations -0.01, 0.02, 0.01, -0.02, 0 -> sum of squares 0.001, sd^2 = 0.001/4
    se = math.sqrt(0.001 / 4) / math.sqrt(5)
    half = 2.776 * se  # t_{0.975,4} = 2.776 (t table, 3 decimals)
    mean, low, high = stats.mean_ci(values)
    assert mean == pytest.approx(0.82, rel=1e-12)
    assert (high - low) / 2 == pytest.approx(half, rel=2e-4)
    assert (low + high) / 2 == pytest.approx(0.82, rel=1e-12)
    assert math.isnan(stats.mean_ci([0.5])[1])


def test_cohens_d_and_d_z_by_hand_on_the_sleep_data():
    # d = SLEEP_2 - SLEEP_1 = 1.2, 2.4, 1.3, 1.3, 0, 1.0, 1.8, 0.8, 4.6, 1.4: sum 15.8, mean 1.58,
    # sum of squared deviations 13.616 -> sd = sqrt(13.616 / 9)
    d_z = 1.58 / math.sqrt(13.616 / 9)
    assert stats.cohens_d_paired(SLEEP_2, SLEEP_1) == pytest.approx(d_z, rel=1e-9)
    assert d_z == pytest.approx(1.2846, rel=1e-4)
    # means 0.75 and 2.33; sums of squared deviations 28.805 and 36.081 -> pooled sd^2 = 64.886/18
    d = (0.75 - 2.33) / math.sqrt((28.805 + 36.081) / 18)
    assert stats.cohens_d(SLEEP_1, SLEEP_2) == pytest.approx(d, rel=1e-9)
    assert d == pytest.approx(-0.8322, rel=1e-4)


# ---------------------------------------------------------------------------------------------
# Tests on pairs and on two samples


def test_paired_t_reproduces_students_sleep_result():
    r = stats.paired_t(SLEEP_2, SLEEP_1)
    # by hand: t = mean(d) / (sd(d) / sqrt(n)) with the sums above
    assert r.statistic == pytest.approx(1.58 / (math.sqrt(13.616 / 9) / math.sqrt(10)), rel=1e-9)
    # published (R: t.test(extra ~ group, data = sleep, paired = TRUE)): t = 4.0621, df = 9,
    # p-value = 0.002833
    assert r.statistic == pytest.approx(4.0621, rel=1e-4)
    assert r.df == 9
    assert r.p_value == pytest.approx(0.002833, rel=1e-3)
    assert r.p_value == pytest.approx(t_two_sided_p(r.statistic, 9), rel=1e-9)
    assert r.effect_name == "Cohen's d_z"


def test_welch_t_against_a_hand_welch_satterthwaite_df_and_the_published_sleep_result():
    r = stats.welch_t(SLEEP_1, SLEEP_2)
    v1, v2 = 28.805 / 9 / 10, 36.081 / 9 / 10  # squared standard errors s_i^2 / n_i
    df = (v1 + v2) ** 2 / (v1**2 / 9 + v2**2 / 9)
    assert r.statistic == pytest.approx((0.75 - 2.33) / math.sqrt(v1 + v2), rel=1e-9)
    assert r.df == pytest.approx(df, rel=1e-9)
    # published (R: t.test(extra ~ group, data = sleep)): t = -1.8608, df = 17.776,
    # p-value = 0.07939
    assert r.statistic == pytest.approx(-1.8608, rel=1e-4)
    assert r.df == pytest.approx(17.776, rel=1e-4)
    assert r.p_value == pytest.approx(0.07939, rel=1e-3)
    assert r.effect_name == "Cohen's d"
    # unequal sizes, by hand: s^2/n = 1/3 and (5/3)/4 = 5/12, so se^2 = 3/4 and
    # df = (3/4)^2 / ((1/3)^2 / 2 + (5/12)^2 / 3) = 243/49
    r = stats.welch_t([1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0])
    assert r.statistic == pytest.approx((2.0 - 5.5) / math.sqrt(3 / 4), rel=1e-12)
    assert r.df == pytest.approx(243 / 49, rel=1e-12)


def test_wilcoxon_signed_rank_on_hollander_and_wolfe_example():
    # Hollander & Wolfe (1973), p. 29 (R's ?wilcox.test, paired example): Hamilton depression
    # scale factor IV at the first (x) and second (y) visit; R gives V = 40, p = 0.01953
    # (one-sided "greater").
    x = [1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30]
    y = [0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29]
    # |d| ranked: 0.01 (1), 0.08 (2), 0.147 (3), 0.43 (4), 0.49 (5), 0.59 (6), 0.62 (7),
    # 0.952 (8), 1.022 (9); negative differences: 0.147 and 0.08 -> W- = 3 + 2 = 5, W+ = 40
    r = stats.wilcoxon(x, y)
    assert r.statistic == 5  # min(W+, W-)
    assert r.effect == pytest.approx((40 - 5) / 45, rel=1e-12)
    # exact null: each of the 2^9 sign patterns equally likely. Subsets of {1..9} with rank sum
    # <= 5: {}, {1}, {2}, {3}, {1,2}, {4}, {1,3}, {5}, {1,4}, {2,3} -> 10
    low = sum(sum(s) <= 5 for k in range(10) for s in itertools.combinations(range(1, 10), k))
    assert low == 10
    assert r.p_value == pytest.approx(2 * 10 / 2**9, rel=1e-9)
    assert r.p_value / 2 == pytest.approx(0.01953, rel=1e-3)
    with pytest.raises(ValueError, match="every difference is zero"):
        stats.wilcoxon([1.0, 2.0], [1.0, 2.0])


def test_mann_whitney_u_on_hollander_and_wolfe_example():
    # Hollander & Wolfe (1973), p. 69 (R's ?wilcox.test, two-sample example): permeability of
    # the chorioamnion at term (x) and at 12-26 weeks (y); R gives W = 35, p = 0.1272 ("greater")
    x = [0.80, 0.83, 1.89, 1.04, 1.45, 1.38, 1.91, 1.64, 0.73, 1.46]
    y = [1.15, 0.88, 0.90, 0.74, 1.21]
    # U of x = pairs with x > y, counted per x: 1, 1, 5, 3, 5, 5, 5, 5, 0, 5 = 35
    assert sum(xi > yi for xi in x for yi in y) == 35
    # exact null: the 5 ranks of y are any of the C(15, 5) = 3003 subsets of 1..15, and
    # U_x = 50 - (rank sum of y - 15)
    null = [50 - (sum(s) - 15) for s in itertools.combinations(range(1, 16), 5)]
    upper = sum(u >= 35 for u in null) / len(null)
    assert upper == pytest.approx(0.1272, rel=1e-3)
    r = stats.mann_whitney(x, y)
    assert r.statistic == 35
    assert r.p_value == pytest.approx(2 * upper, rel=1e-9)
    assert r.effect == pytest.approx(2 * 35 / 50 - 1, rel=1e-12)


def test_mcnemar_exact_from_a_two_by_two_table_by_binomial_sums():
    # 30 both right, 9 only a right, 2 only b right, 5 both wrong: under H0 the 11 discordant
    # rows split Binomial(11, 1/2); two-sided p = 2 P(X <= 2) = 2 (1 + 11 + 55) / 2^11
    a = [True] * 30 + [True] * 9 + [False] * 2 + [False] * 5
    b = [True] * 30 + [False] * 9 + [True] * 2 + [False] * 5
    r = stats.mcnemar(a, b)
    assert r.p_value == pytest.approx(2 * (1 + 11 + 55) / 2048, rel=1e-12)
    assert r.statistic == 2
    assert r.effect == pytest.approx(9 / 2, rel=1e-12)  # a-only over b-only
    assert stats.mcnemar([True, False], [True, False]).p_value == 1.0


# ---------------------------------------------------------------------------------------------
# Cross-validation tests


CV_DIFFERENCES = [0.01, 0.03] * 5  # J = 10 paired fold scores; mean 0.02, each off by 0.01


def test_corrected_resampled_t_by_hand_and_smaller_than_the_plain_paired_t():
    a = [0.8 + d for d in CV_DIFFERENCES]
    b = [0.8] * 10
    var = 10 * 0.01**2 / 9  # sum of squared deviations / (J - 1)
    # Nadeau & Bengio (2003): t = mean / sqrt((1/J + n_test/n_train) var); 10-fold: ratio 1/9
    corrected_t = 0.02 / math.sqrt((1 / 10 + 1 / 9) * var)
    plain_t = 0.02 / math.sqrt(var / 10)
    assert plain_t == pytest.approx(6.0, rel=1e-12)
    r = stats.corrected_resampled_t(a, b, 1 / 9)
    assert r.test == "corrected resampled t-test"
    assert r.statistic == pytest.approx(corrected_t, rel=1e-9)
    assert r.statistic == pytest.approx(4.1295, rel=1e-4)
    assert r.df == 9
    assert r.p_value == pytest.approx(t_two_sided_p(corrected_t, 9), rel=1e-9)
    plain = stats.paired_t(a, b)
    assert plain.statistic == pytest.approx(plain_t, rel=1e-9)
    assert r.statistic < plain.statistic and r.p_value > plain.p_value
    low, high = stats.corrected_resampled_ci(a, b, 1 / 9)
    half = 2.262 * math.sqrt((1 / 10 + 1 / 9) * var)  # t_{0.975,9} = 2.262 (t table)
    assert (low, high) == pytest.approx((0.02 - half, 0.02 + half), rel=2e-4)
    with pytest.raises(ValueError, match="n_test/n_train"):
        stats.corrected_resampled_t(a, b, 0.0)


def test_five_by_two_cv_against_dietterichs_formula_by_hand():
    p = [[0.02, 0.04], [0.01, 0.03], [0.03, 0.03], [0.00, 0.02], [0.05, 0.01]]
    # Dietterich (1998): s_i^2 = (p_i1 - mean_i)^2 + (p_i2 - mean_i)^2
    # = 0.0002, 0.0002, 0, 0.0002, 0.0008; t = p_11 / sqrt(mean of s_i^2), 5 df
    t = 0.02 / math.sqrt((0.0002 + 0.0002 + 0 + 0.0002 + 0.0008) / 5)
    r = stats.five_by_two_cv_t(p)
    assert r.statistic == pytest.approx(t, rel=1e-9)
    assert r.df == 5
    assert r.p_value == pytest.approx(t_two_sided_p(t, 5), rel=1e-9)
    with pytest.raises(ValueError, match="5 replications of 2 folds"):
        stats.five_by_two_cv_t([[0.1, 0.2]])


# ---------------------------------------------------------------------------------------------
# Multiple comparisons, bootstrap, input checks


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 times 3, 2, 1 = 0.03, 0.06, 0.04; running max: 0.03, 0.06, 0.06
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06], rel=1e-12)
    assert stats.holm([0.5, 0.001]) == pytest.approx([0.5, 0.002], rel=1e-12)
    # 0.3 * 4 = 1.2 is capped at 1, and every later one follows the running maximum
    assert stats.holm([0.9, 0.3, 0.5, 0.6]) == pytest.approx([1.0, 1.0, 1.0, 1.0])
    assert stats.holm([0.04]) == [0.04]


def test_bootstrap_of_constant_differences_is_that_difference():
    assert stats.bootstrap_diff_ci([0.9, 0.8, 0.7], [0.8, 0.7, 0.6], paired=True) == (
        pytest.approx(0.1),
        pytest.approx(0.1),
    )


def test_paired_bootstrap_percentiles_from_the_exact_resampling_distribution():
    # differences 0, 0, 3: a resample's mean is 3k/3 = k with k ~ Binomial(3, 1/3) threes,
    # P(k) = 8/27, 12/27, 6/27, 1/27 (cumulative .296, .741, .963, 1). The 2.5% point is 0 and
    # the 97.5% point 3; at 80% the 10% point is 0 and the 90% point 2.
    a, b = [1.0, 2.0, 5.0], [1.0, 2.0, 2.0]
    assert stats.bootstrap_diff_ci(a, b, paired=True) == (0.0, 3.0)
    assert stats.bootstrap_diff_ci(a, b, paired=True, confidence=0.8) == (0.0, 2.0)


def test_a_zero_standard_error_gives_t_zero_or_infinite():
    same = stats.paired_t([0.8, 0.9, 0.7], [0.8, 0.9, 0.7])  # every difference 0
    assert (same.statistic, same.p_value) == (0.0, 1.0)
    shifted = stats.paired_t([1.5, 2.5, 3.5], [1.0, 2.0, 3.0])  # every difference 0.5 exactly
    assert shifted.statistic == math.inf and shifted.p_value == 0.0
    lower = stats.corrected_resampled_t([0.5, 0.75], [1.0, 1.25], 0.25)
    assert lower.statistic == -math.inf and lower.p_value == 0.0


def test_bootstrap_interval_covers_the_true_difference_near_the_nominal_rate():
    rng = np.random.default_rng(1)
    trials, covered = 300, 0
    for t in range(trials):
        a, b = rng.normal(1.0, 1.0, 40), rng.normal(0.5, 1.0, 40)
        low, high = stats.bootstrap_diff_ci(a, b, paired=False, resamples=2000, seed=t)
        covered += low <= 0.5 <= high
    assert 0.90 <= covered / trials <= 0.99, covered / trials


def test_statistics_refuse_unusable_input():
    with pytest.raises(ValueError, match="as many values in a as in b, got 3 and 2"):
        stats.paired_t([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least 2 values, got 1"):
        stats.welch_t([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        stats.mean_ci([1.0, float("nan")])


# ---------------------------------------------------------------------------------------------
# Seeds


@pytest.mark.parametrize(
    ("spec", "seeds"), [("0-4", [0, 1, 2, 3, 4]), ("1,5,9", [1, 5, 9]), ("0-2, 7", [0, 1, 2, 7])]
)
def test_parse_seeds(spec, seeds):
    assert parse_seeds(spec) == seeds


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("3,3", "seed 3 is given more than once in '3,3'"),
        ("0-4,2", "seed 2 is given more than once"),
        ("-1,2", "seeds are integers >= 0, got '-1'"),
        ("0,-3-2", "seeds are integers >= 0, got '-3-2'"),
        ("5-3", "the range '5-3' runs backwards; write 3-5"),
        ("a,b", "accepts a range like 0-4"),
        ("4", "at least 2 seeds"),
    ],
)
def test_parse_seeds_refuses(spec, message):
    with pytest.raises(ConfigError) as err:
        parse_seeds(spec)
    assert str(err.value).startswith("--seeds: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_repeat_refuses_duplicate_or_negative_seeds_before_running_anything():
    with pytest.raises(ConfigError, match="seed 1 is given more than once"):
        repeat(None, [1, 2, 1], [], "dup")
    with pytest.raises(ConfigError, match="seeds are integers >= 0, got -1"):
        repeat(None, [-1, 2], [], "negative")


# ---------------------------------------------------------------------------------------------
# compare through a real store


def add_group(store, name, kind, values, plan=None, config=None, shuffle=None, sizes=None):
    """A group of finished runs whose summary holds ``test_acc`` = ``values[member]``, written
    in the order of ``values`` or, with ``shuffle`` (a seed), in a random order. With ``sizes``
    (the rows of each run, as ``summary.json`` records them under ``data.sizes``, or a function
    of the member giving them) every run gets a folder with that summary."""
    group = store.create_group(name, kind, "synthetic", plan or {})
    items = list(values.items())
    if shuffle is not None:
        items = [items[i] for i in np.random.default_rng(shuffle).permutation(len(items))]
    for position, (member, value) in enumerate(items):
        run_id = f"{name}-{position:03d}"  # the store lists runs in this order
        run_dir = None
        if sizes is not None:
            run_dir = Path(store.path).parent / name / run_id
            run_dir.mkdir(parents=True)
            recorded = sizes(member) if callable(sizes) else sizes
            summary = {"test_acc": value, "data": {"sizes": recorded}}
            (run_dir / "summary.json").write_text(json.dumps(summary))
        store.start_run(run_id, name, config or {}, group_id=group, member=member, run_dir=run_dir)
        store.finish_run(run_id, "finished", {"test_acc": value})
    return group


def seeds(values, first=0):
    return {f"seed={first + i}": v for i, v in enumerate(values)}


def cv_members(values, folds, repeats):
    names = [f"repeat={r},fold={f}" for r in range(repeats) for f in range(folds)]
    return dict(zip(names, values, strict=True))


def test_compare_repeat_groups_uses_the_paired_t_test(tmp_path, capsys):
    store = Store(tmp_path / "mlenv.db")
    add_group(store, "drug2", "repeat", seeds(SLEEP_2), shuffle=1)  # paired by name, not order
    add_group(store, "drug1", "repeat", seeds(SLEEP_1), shuffle=2)
    (r,) = compare_groups(store, ["drug2", "drug1"], "test_acc")
    out = capsys.readouterr().out
    assert r["primary"].test == "paired t-test" and r["paired"]
    assert r["primary"].p_value == pytest.approx(0.002833, rel=1e-3)  # Student's sleep data
    assert "test: paired t-test, because each seed gives one independent pair of runs" in out
    assert "paired t-test: t(9) = 4.0621, p = 0.002833" in out
    assert "paired by seed (n=10)" in out
    assert "the difference is significant (paired t-test, p = 0.002833): drug2 has a higher" in out
    assert r["interval"] == ("bootstrap", stats.bootstrap_diff_ci(SLEEP_2, SLEEP_1, paired=True))


def test_compare_cv_groups_uses_the_corrected_resampled_t_test(tmp_path, capsys):
    store = Store(tmp_path / "mlenv.db")
    base = [0.80 + 0.01 * (i % 5) for i in range(10)]  # fold scores vary; differences do not
    differences = [0.0, 0.03] * 5  # mean 0.015, each off by 0.015
    plan = {"folds": 5, "repeats": 2}
    # 625 rows in 5 folds: each run tests on 125 and fits on 400 of the other 500, because its
    # 100 validation rows come out of them: n_test/n_train = 125/400, not 1/(k-1) = 1/4
    sizes = [400, 100, 125]
    add_group(store, "new", "cv", cv_members(np.add(base, differences), 5, 2), plan, sizes=sizes)
    add_group(store, "old", "cv", cv_members(base, 5, 2), plan, sizes=sizes)
    (r,) = compare_groups(store, ["new", "old"], "test_acc", 0.05)
    out = capsys.readouterr().out
    var = 10 * 0.015**2 / 9
    corrected_t = 0.015 / math.sqrt((1 / 10 + 125 / 400) * var)
    p = t_two_sided_p(corrected_t, 9)
    plain_p = t_two_sided_p(0.015 / math.sqrt(var / 10), 9)  # t = 3.0
    assert r["primary"].test == "corrected resampled t-test"
    assert r["primary"].statistic == pytest.approx(corrected_t, rel=1e-9)
    assert r["primary"].p_value == pytest.approx(p, rel=1e-9)
    assert "test: corrected resampled t-test (Nadeau & Bengio 2003), because the folds" in out
    assert r["test_train_ratio"] == pytest.approx(0.3125, rel=1e-12)
    assert "n_test/n_train = 125/400 = 0.3125" in out
    assert f"corrected resampled t-test: t(9) = {corrected_t:.4f}, p = {p:.4g}" in out
    assert "paired by repeat and fold (J=10: 2 repeats x 5 folds)" in out
    half = 2.262 * math.sqrt((1 / 10 + 125 / 400) * var)  # t_{0.975,9} = 2.262 (t table)
    assert r["interval"][0] == "corrected-t"
    low, high = r["interval"][1]
    assert ((low + high) / 2, (high - low) / 2) == pytest.approx((0.015, half), rel=2e-4)
    # the plain paired t-test would call this significant; the corrected one does not
    assert plain_p < 0.05 < p
    assert "difference is not significant" in out
    assert "paired t-test:" not in out.replace("corrected resampled t-test:", "")


def test_compare_5x2cv_groups_uses_dietterichs_test_and_shows_the_corrected_one(tmp_path, capsys):
    store = Store(tmp_path / "mlenv.db")
    p = [[0.02, 0.04], [0.01, 0.03], [0.03, 0.03], [0.00, 0.02], [0.05, 0.01]]
    plan = {"folds": 2, "repeats": 5}
    sizes = {"train": 80, "val": 20, "test": 100}  # as the tabular data sets record them
    a = cv_members([s + d for row in p for s, d in zip((0.9, 0.8), row, strict=True)], 2, 5)
    add_group(store, "a", "cv", a, plan, sizes=sizes)
    # b's scores differ by fold, so pairing fold 0 of one with fold 1 of the other would show
    add_group(store, "b", "cv", cv_members([0.9, 0.8] * 5, 2, 5), plan, sizes=sizes)
    (r,) = compare_groups(store, ["a", "b"], "test_acc")
    out = capsys.readouterr().out
    t = 0.02 / math.sqrt((0.0002 + 0.0002 + 0 + 0.0002 + 0.0008) / 5)  # as in the test above
    assert r["primary"].test == "5x2cv paired t-test"
    assert r["primary"].p_value == pytest.approx(t_two_sided_p(t, 5), rel=1e-6)
    assert [x.test for x in r["tests"]] == ["5x2cv paired t-test", "corrected resampled t-test"]
    # the ten differences: mean 0.024, squared deviations (1e-6) 16, 256, 196, 36, 36, 36, 576,
    # 16, 676, 196 = 2040 -> var 0.00204 / 9; n_test/n_train = 100/80
    corrected = 0.024 / math.sqrt((1 / 10 + 100 / 80) * 0.00204 / 9)
    assert r["tests"][1].statistic == pytest.approx(corrected, rel=1e-9)
    assert "test: 5x2cv paired t-test (Dietterich 1998)" in out


def test_compare_cv_reads_n_test_and_n_train_from_the_runs_and_refuses_without_them(
    tmp_path, capsys
):
    """Review finding: compare took n_test/n_train = 1/(k-1) though each run's validation rows
    come out of its training folds (921/3219 = 0.286 on spambase with 5 folds, not 0.25)."""
    store = Store(tmp_path / "mlenv.db")
    plan = {"folds": 5, "repeats": 1}
    narrow = cv_members([0.80, 0.83, 0.81, 0.84, 0.82], 5, 1)
    wide = cv_members([0.79, 0.80, 0.80, 0.81, 0.80], 5, 1)

    def carved(member):  # 626 rows: fold 0 tests 126, the others 125; 100 validation rows
        return [400 - (member.endswith("=0")), 100, 125 + (member.endswith("=0"))]

    add_group(store, "narrow", "cv", narrow, plan, sizes=carved)
    add_group(store, "wide", "cv", wide, plan, sizes=[501, 0, 125])  # no validation rows
    # means over the folds: 125.2 tested, 399.8 fitted; of the two groups, the larger ratio
    for first, second in (("narrow", "wide"), ("wide", "narrow")):
        (r,) = compare_groups(store, [first, second], "test_acc")
        assert r["test_train_ratio"] == pytest.approx(125.2 / 399.8, rel=1e-12)
        assert "n_test/n_train = 125.2/399.8 = 0.3132" in capsys.readouterr().out
    d = np.subtract(list(narrow.values()), list(wide.values()))  # 0.01, 0.03, 0.01, 0.03, 0.02
    expected = 0.02 / math.sqrt((1 / 5 + 125.2 / 399.8) * (4 * 0.01**2 / 4))
    assert d.var(ddof=1) == pytest.approx(0.01**2, rel=1e-9)
    assert r["primary"].statistic == pytest.approx(-expected, rel=1e-9)  # wide - narrow

    add_group(store, "lost", "cv", wide, plan)  # no run folders: nothing records the rows
    add_group(  # one run's summary.json lacks data.sizes
        store, "half", "cv", wide, plan, sizes=lambda m: None if m.endswith("=3") else [400, 0, 1]
    )
    for group, missing in (("lost", "repeat=0,fold=0, repeat=0,fold=1, "), ("half", "fold=3 of")):
        with pytest.raises(ConfigError) as err:
            compare_groups(store, ["narrow", group], "test_acc")
        message = str(err.value)
        assert message.startswith("compare: the runs repeat=0,") and missing in message
        assert f"of cv group {group!r} have no record of their train and test rows" in message
        assert "\n" not in message


def test_compare_refuses_a_group_of_one_run(tmp_path):
    store = Store(tmp_path / "mlenv.db")
    add_group(store, "full", "repeat", seeds([0.8, 0.9]))
    group = add_group(store, "solo", "repeat", seeds([0.8]))
    store.start_run("solo-failed", "solo", {}, group_id=group, member="seed=1")
    store.finish_run("solo-failed", "failed")
    store.start_run("solo-running", "solo", {}, group_id=group, member="seed=2")  # not finished
    with pytest.raises(ConfigError) as err:
        compare_groups(store, ["full", "solo"], "test_acc")
    message = str(err.value)
    assert message == (
        "compare: group 'solo' has n=1 finished runs with 'test_acc'; a comparison needs at "
        "least 2 per group"
    )
    group = add_group(store, "partial", "repeat", seeds([0.8, 0.9]))
    store.start_run("partial-x", "partial", {}, group_id=group, member="seed=2")
    store.finish_run("partial-x", "finished", {"test_loss": 0.5})  # finished without test_acc
    with pytest.raises(ConfigError) as err:
        compare_groups(store, ["full", "partial"], "test_acc")
    assert str(err.value) == (
        "compare: group 'partial' has no metric 'test_acc' in its runs seed=2; "
        "metrics: test_acc, test_loss"
    )


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ("three", "members seed=3, seed=4 only in 'five'"),
        ("folds", "'five' is a repeat group and 'folds' a cv group"),
    ],
)
def test_compare_refuses_groups_that_cannot_be_paired(tmp_path, second, message):
    store = Store(tmp_path / "mlenv.db")
    add_group(store, "five", "repeat", seeds([0.80, 0.82, 0.81, 0.83, 0.84]))
    add_group(store, "three", "repeat", seeds([0.78, 0.79, 0.80]))
    add_group(store, "folds", "cv", cv_members([0.8, 0.81, 0.82], 3, 1), {"folds": 3, "repeats": 1})
    with pytest.raises(ConfigError) as err:
        compare_groups(store, ["five", second], "test_acc")
    assert message in str(err.value) and "pass --unpaired" in str(err.value)
    assert "\n" not in str(err.value)


def test_compare_refuses_cv_groups_with_other_folds_or_other_split_seeds(tmp_path):
    store = Store(tmp_path / "mlenv.db")
    plan3, plan5 = {"folds": 3, "repeats": 1}, {"folds": 5, "repeats": 1}
    add_group(store, "k3", "cv", cv_members([0.8, 0.81, 0.82], 3, 1), plan3, {"seed": 0})
    add_group(store, "k5", "cv", cv_members([0.8, 0.81, 0.82, 0.8, 0.8], 5, 1), plan5)
    add_group(store, "k3s1", "cv", cv_members([0.7, 0.71, 0.72], 3, 1), plan3, {"seed": 1})
    add_group(store, "k4", "cv", cv_members([0.8, 0.81, 0.82, 0.8], 4, 1))  # folds from names
    with pytest.raises(ConfigError, match="'k3' has 3 folds x 1 repeats and 'k5' 5 folds x 1"):
        compare_groups(store, ["k3", "k5"], "test_acc")
    with pytest.raises(ConfigError, match="drawn with --seed 0 and those of 'k3s1' with --seed 1"):
        compare_groups(store, ["k3", "k3s1"], "test_acc")
    with pytest.raises(ConfigError, match="'k3' has 3 folds x 1 repeats and 'k4' 4 folds x None"):
        compare_groups(store, ["k3", "k4"], "test_acc")


def test_compare_unpaired_uses_welch_and_mann_whitney(tmp_path, capsys):
    store = Store(tmp_path / "mlenv.db")
    add_group(store, "drug1", "repeat", seeds(SLEEP_1))
    add_group(store, "drug2", "repeat", seeds(SLEEP_2))
    add_group(store, "drug2-few", "repeat", seeds(SLEEP_2[:7]))
    (r,) = compare_groups(store, ["drug1", "drug2"], "test_acc", unpaired=True)
    out = capsys.readouterr().out
    assert not r["paired"]
    assert [t.test for t in r["tests"]] == ["Welch's t-test", "Mann-Whitney U"]
    assert r["primary"].p_value == pytest.approx(0.07939, rel=1e-3)  # R's sleep Welch test
    assert "Welch's t-test: t(17.78) = -1.8608, p = 0.07939" in out
    assert "test: Welch's t-test, because an unpaired comparison was asked for" in out
    assert "unpaired (n=10 and n=10)" in out
    assert r["interval"] == ("bootstrap", stats.bootstrap_diff_ci(SLEEP_1, SLEEP_2, paired=False))
    (r,) = compare_groups(store, ["drug1", "drug2-few"], "test_acc", unpaired=True)
    assert r["primary"].test == "Welch's t-test"
    assert "unpaired (n=10 and n=7)" in capsys.readouterr().out


def test_compare_prints_and_decides_on_the_holm_adjusted_p_values(tmp_path, capsys):
    store = Store(tmp_path / "mlenv.db")
    # drug2 - drug1: Student's sleep differences, t by hand as above; drug2 - near: differences
    # 1, -1, 2, 0, 1, 3, -1, 1, 2, 2 (mean 1, squared deviations sum to 16, sd 4/3), so
    # t = 1 / ((4/3) / sqrt(10)) = 3 sqrt(10) / 4
    near = np.subtract(SLEEP_2, [1, -1, 2, 0, 1, 3, -1, 1, 2, 2])
    add_group(store, "drug2", "repeat", seeds(SLEEP_2))
    add_group(store, "drug1", "repeat", seeds(SLEEP_1))
    add_group(store, "near", "repeat", seeds(near))
    p_sleep = t_two_sided_p(1.58 / (math.sqrt(13.616 / 9) / math.sqrt(10)), 9)  # 0.002833
    p_near = t_two_sided_p(3 * math.sqrt(10) / 4, 9)  # 0.0418
    # Holm on (p_sleep, p_near): the smaller times 2, the larger times 1 (never below the first)
    holm_sleep, holm_near = 2 * p_sleep, max(2 * p_sleep, p_near)
    assert (p_sleep, p_near) == pytest.approx((0.002833, 0.04177), rel=1e-3)
    first, second = compare_groups(store, ["drug2", "drug1", "near"], "test_acc", alpha=0.005)
    out = capsys.readouterr().out
    assert first["primary"].p_value == pytest.approx(p_sleep, rel=1e-9)
    assert second["primary"].p_value == pytest.approx(p_near, rel=1e-9)
    assert first["p_adjusted"] == pytest.approx(holm_sleep, rel=1e-9)
    assert second["p_adjusted"] == pytest.approx(holm_near, rel=1e-9)
    sections = out.split("\ndrug2 - ")
    assert len(sections) == 3
    assert f"Holm-adjusted p (2 comparisons): {holm_sleep:.4g}\n" in sections[1]
    assert f"Holm-adjusted p (2 comparisons): {holm_near:.4g}\n" in sections[2]
    # raw p 0.0028 < alpha 0.005 < adjusted 0.0057: the verdict follows the adjusted one
    assert (
        f"=> at alpha 0.005, the difference is not significant (paired t-test, p = "
        f"{holm_sleep:.4g}): the data do not show that drug2 and drug1 differ" in sections[1]
    )
    assert f"paired t-test: t(9) = 4.0621, p = {p_sleep:.4g}\n" in sections[1]
    # the command passes --alpha and prints the same
    argv = ["compare", "drug2", "drug1", "near", "--store", str(tmp_path / "mlenv.db")]
    assert main([*argv, "--alpha", "0.005"]) == 0
    assert capsys.readouterr().out == out


def test_compare_runs_mcnemar_on_the_test_rows_both_groups_predicted(tmp_path, capsys):
    store = Store(tmp_path / "mlenv.db")
    add_group(store, "a", "repeat", seeds(SLEEP_2), sizes=[1, 1, 46])
    add_group(store, "b", "repeat", seeds(SLEEP_1), sizes=[1, 1, 46])
    # the table of the McNemar test above: 30 both right, 9 only a, 2 only b, 5 both wrong
    labels = [1] * 46
    right_a = [True] * 39 + [False] * 7
    right_b = [True] * 30 + [False] * 9 + [True] * 2 + [False] * 5
    for name, right in (("a", right_a), ("b", right_b)):
        for folder in (tmp_path / name).iterdir():
            rows = [f"{y},{y if ok else 1 - y}" for y, ok in zip(labels, right, strict=True)]
            (folder / "test_predictions.csv").write_text("label,predicted\n" + "\n".join(rows))
    (r,) = compare_groups(store, ["a", "b"], "test_acc")
    p = 2 * (1 + 11 + 55) / 2048
    assert r["mcnemar"].p_value == pytest.approx(p, rel=1e-12)
    assert r["mcnemar"].effect == pytest.approx(9 / 2, rel=1e-12)  # a-only / b-only, a first
    assert f"McNemar (exact) on the same test rows: p = {p:.4g}\n" in capsys.readouterr().out


def test_group_table_shows_each_metric_with_its_t_interval():
    from mlenv.bench.experiments import group_table

    values = [0.81, 0.84, 0.83, 0.80, 0.82]  # as in test_mean_ci_by_hand: mean 0.82
    half = 2.776 * math.sqrt(0.001 / 4) / math.sqrt(5)  # 0.01963
    results = [(f"seed={i}", {"test_acc": v, "val_loss": 1 - v}) for i, v in enumerate(values)]
    lines = group_table(results).splitlines()
    assert lines[0].split() == ["member", "test_acc", "val_loss"]
    assert lines[1].split() == ["seed=0", "0.8100", "0.1900"]
    table = {line[:22].strip(): line[22:].split() for line in lines[6:]}
    assert table["mean"] == ["0.8200", "0.1800"]
    assert table["95% CI low"][0] == f"{0.82 - half:.4f}" == "0.8004"
    assert table["95% CI high"][0] == f"{0.82 + half:.4f}" == "0.8396"


def test_cross_validate_refuses_fewer_than_two_folds_before_running():
    from mlenv.bench.experiments import cross_validate
    from mlenv.config import load_recipe

    with pytest.raises(ConfigError, match=r"cv: needs --folds >= 2 and --repeats >= 1, got 1, 1"):
        cross_validate(load_recipe("digits-mlp"), 1, 1, [], None)
    with pytest.raises(ConfigError, match=r"got 3, 0"):
        cross_validate(load_recipe("digits-mlp"), 3, 0, [], None)
