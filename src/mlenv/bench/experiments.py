"""Groups of runs and their comparison: ``mlenv repeat`` (one recipe over several seeds), ``mlenv
cv`` (k-fold cross-validation, repeated), and ``mlenv compare`` (is the difference real?)."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlenv.bench import stats
from mlenv.errors import ConfigError


def parse_seeds(spec: str) -> list[int]:
    """``0-4`` -> [0, 1, 2, 3, 4]; ``1,5,9`` -> [1, 5, 9]. Seeds are integers >= 0, each given
    once, at least 2.

    >>> parse_seeds("0-2,7")
    [0, 1, 2, 7]
    """
    seeds: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        if part.startswith("-") and part[1:].split("-")[0].isdigit():
            raise ConfigError(f"--seeds: seeds are integers >= 0, got {part!r} in {spec!r}")
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if match is None:
            raise ConfigError(
                f"--seeds: accepts a range like 0-4 or a list like 0,3,7; got {spec!r}"
            )
        low = int(match[1])
        high = int(match[2]) if match[2] is not None else low
        if high < low:
            raise ConfigError(f"--seeds: the range {part!r} runs backwards; write {high}-{low}")
        seeds.extend(range(low, high + 1))
    check_seeds(seeds, spec)
    return seeds


def check_seeds(seeds: list[int], spec: str | None = None) -> None:
    """At least 2 seeds, each an integer >= 0 and given once (a repeated seed would repeat a
    run and count it twice)."""
    given = repr(spec) if spec is not None else str(seeds)
    negative = [s for s in seeds if s < 0]
    if negative:
        raise ConfigError(f"--seeds: seeds are integers >= 0, got {negative[0]} in {given}")
    twice = sorted(s for s, count in Counter(seeds).items() if count > 1)
    if twice:
        raise ConfigError(f"--seeds: seed {twice[0]} is given more than once in {given}")
    if len(seeds) < 2:
        raise ConfigError(f"--seeds: a group needs at least 2 seeds, got {given}")


def run_group(
    recipe: Any,
    overrides: list[str],
    kind: str,
    name: str | None,
    members: list[tuple[str, list[str]]],
    plan: dict[str, Any],
) -> tuple[int, list]:
    """Run every member of a group (each a normal run in the store) and return the group id."""
    from mlenv.config import resolve
    from mlenv.track.store import Store
    from mlenv.train.run import run_recipe

    name = name or f"{recipe.name}-{kind}"
    base = resolve(recipe, [*overrides, "--experiment", name], prog=f"mlenv {kind}")
    store = Store(base.train.store or Path(base.train.runs_dir) / "mlenv.db")
    group_id = store.create_group(name, kind, recipe.name, {"overrides": overrides, **plan})
    results = []
    for member, extra in members:
        print(f"== {name} [{member}]")
        cfg = resolve(
            recipe,
            [*overrides, *extra, "--experiment", name, "--progress", "false"],
            prog=f"mlenv {kind}",
        )
        results.append((member, run_recipe(cfg, group_id=group_id, member=member).summary))
    print(f"\ngroup {name!r} (id {group_id}): {len(results)} runs")
    print(group_table(results))
    return group_id, results


def group_table(results: list[tuple[str, dict[str, Any]]]) -> str:
    metrics = [
        k
        for k in ("test_acc", "test_loss", "test_auc", "val_acc", "val_loss")
        if all(k in summary for _, summary in results)
    ]
    lines = [f"{'member':22s} " + " ".join(f"{m:>10s}" for m in metrics)]
    for member, summary in results:
        lines.append(f"{member:22s} " + " ".join(f"{summary[m]:10.4f}" for m in metrics))
    for label, pick in (("mean", 0), ("95% CI low", 1), ("95% CI high", 2)):
        values = [stats.mean_ci([s[m] for _, s in results])[pick] for m in metrics]
        lines.append(f"{label:22s} " + " ".join(f"{v:10.4f}" for v in values))
    return "\n".join(lines)


def repeat(recipe: Any, seeds: list[int], overrides: list[str], name: str | None) -> int:
    """Run ``recipe`` once per seed as the group ``name``; returns the group id."""
    check_seeds(seeds)
    members = [(f"seed={s}", ["--seed", str(s)]) for s in seeds]
    return run_group(recipe, overrides, "repeat", name, members, {"seeds": seeds})[0]


def cross_validate(
    recipe: Any, folds: int, repeats: int, overrides: list[str], name: str | None
) -> int:
    """Run stratified ``folds``-fold cross-validation ``repeats`` times (a new shuffle per
    repeat) as the group ``name``, one run per (repeat, fold); returns the group id."""
    from mlenv.config import builder_arguments
    from mlenv.data import DATASETS

    if "folds" not in builder_arguments(DATASETS.get(recipe.dataset)):
        raise ConfigError(
            f"cv: data set {recipe.dataset!r} of recipe {recipe.name!r} does not support folds"
        )
    if folds < 2 or repeats < 1:
        raise ConfigError(f"cv: needs --folds >= 2 and --repeats >= 1, got {folds}, {repeats}")
    members = [
        (f"repeat={r},fold={f}", ["--folds", str(folds), "--fold", str(f), "--cv_repeat", str(r)])
        for r in range(repeats)
        for f in range(folds)
    ]
    plan = {"folds": folds, "repeats": repeats}
    return run_group(recipe, overrides, "cv", name, members, plan)[0]


# ----------------------------------------------------------------------------------------------
# Comparison


@dataclass
class Group:
    name: str
    id: int
    kind: str
    plan: dict[str, Any]
    values: dict[str, float]  # member -> metric value
    run_dirs: dict[str, str] = field(default_factory=dict)
    seeds: set[int] = field(default_factory=set)  # the seeds its runs' configurations name

    @property
    def array(self) -> np.ndarray:
        return np.array(list(self.values.values()))

    @property
    def folds(self) -> int:
        """k of a cv group: from its plan, else from its members' names (``fold=k-1``)."""
        if "folds" in self.plan:
            return int(self.plan["folds"])
        return 1 + max(int(m.rsplit("fold=", 1)[1]) for m in self.values)


def load_group(store: Any, spec: str, metric: str) -> Group:
    group = store.group(spec)
    if group is None:
        raise ConfigError(
            f"compare: no group {spec!r} in {store.path} (a repeat's or a cv's "
            "--experiment name, or its id)"
        )
    runs = [r for r in store.runs(group_id=group["id"]) if r["status"] == "finished"]
    with_metric = [r for r in runs if metric in r["summary"]]
    if runs and len(with_metric) < len(runs):
        known = sorted(set().union(*(r["summary"] for r in runs)))
        lacking = ", ".join(str(r["member"]) for r in runs if metric not in r["summary"])
        raise ConfigError(
            f"compare: group {spec!r} has no metric {metric!r} in its runs {lacking}; "
            f"metrics: {', '.join(known)}"
        )
    values = {r["member"]: r["summary"][metric] for r in with_metric}
    if len(values) < 2:
        raise ConfigError(
            f"compare: group {spec!r} has n={len(values)} finished runs with {metric!r}; "
            "a comparison needs at least 2 per group"
        )
    seeds = {json.loads(r["config"] or "{}").get("seed") for r in with_metric}
    return Group(
        group["name"],
        group["id"],
        group["kind"],
        group["config"],
        values,
        {r["member"]: r["run_dir"] for r in with_metric if r["run_dir"]},
        {s for s in seeds if isinstance(s, int)},
    )


def _rows(run_dir: str) -> tuple[int, int] | None:
    """(n_train, n_test) of a run: the rows its model was fitted on (after any validation split)
    and tested on, from ``data.sizes`` in its ``summary.json`` (``[train, val, test]`` or
    ``{"train": .., "val": .., "test": ..}``); None when the folder or the record is missing."""
    try:
        sizes = json.loads((Path(run_dir) / "summary.json").read_text()).get("data", {})["sizes"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if isinstance(sizes, dict):
        sizes = [sizes.get("train"), sizes.get("val"), sizes.get("test")]
    if not isinstance(sizes, list) or len(sizes) != 3:
        return None
    train, test = sizes[0], sizes[2]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in (train, test)):
        return None
    return train, test


def fold_rows(group: Group) -> tuple[float, float]:
    """Mean n_test and mean n_train over a cv group's runs, as the runs recorded them; a group
    with a run that did not record them is refused (the ratio is never guessed from k)."""
    rows = {m: _rows(group.run_dirs[m]) if m in group.run_dirs else None for m in group.values}
    unknown = {m for m, r in rows.items() if r is None}
    if unknown:
        raise ConfigError(
            f"compare: the runs {_members(unknown)} of cv group {group.name!r} have no record "
            "of their train and test rows (data.sizes in the run folder's summary.json), which "
            "the corrected resampled t-test needs for n_test/n_train"
        )
    known = [r for r in rows.values() if r is not None]
    return float(np.mean([t for _, t in known])), float(np.mean([n for n, _ in known]))


def _natural(member: str) -> list[Any]:
    """Sort key that puts seed=2 before seed=10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", member)]


def _members(names: set[str]) -> str:
    shown = sorted(names, key=_natural)
    return ", ".join(shown[:4]) + (f" and {len(shown) - 4} more" if len(shown) > 4 else "")


def pairing_problem(a: Group, b: Group) -> str | None:
    """Why the runs of ``a`` and ``b`` cannot be paired member by member, or None if they can."""
    if a.kind != b.kind:
        return f"{a.name!r} is a {a.kind} group and {b.name!r} a {b.kind} group"
    if a.kind == "cv":
        plans = [(g.folds, g.plan.get("repeats")) for g in (a, b)]
        if plans[0] != plans[1]:
            return (
                f"{a.name!r} has {plans[0][0]} folds x {plans[0][1]} repeats and "
                f"{b.name!r} {plans[1][0]} folds x {plans[1][1]} repeats"
            )
        if a.seeds and b.seeds and a.seeds != b.seeds:
            seeds_a, seeds_b = (", ".join(map(str, sorted(g.seeds))) for g in (a, b))
            return (
                f"the folds of {a.name!r} were drawn with --seed {seeds_a} and those of "
                f"{b.name!r} with --seed {seeds_b}, so the same fold holds different test rows"
            )
    only_a, only_b = set(a.values) - set(b.values), set(b.values) - set(a.values)
    if only_a or only_b:
        where = [f"{_members(s)} only in {g.name!r}" for s, g in ((only_a, a), (only_b, b)) if s]
        return "members " + "; ".join(where)
    return None


def compare_two(a: Group, b: Group, alpha: float, unpaired: bool = False) -> dict[str, Any]:
    """Compare the metric of ``a`` with that of ``b``: the tests, the effect size, an interval
    of the difference and the reason for the primary test (``why``). Runs are paired by member
    (seed, or repeat and fold); groups that cannot be paired are refused unless ``unpaired``.
    """
    if not unpaired:
        problem = pairing_problem(a, b)
        if problem is not None:
            raise ConfigError(
                f"compare: cannot pair {a.name!r} (n={len(a.values)}) with {b.name!r} "
                f"(n={len(b.values)}): {problem}; pass --unpaired to compare them as "
                "independent samples (Welch's t-test, Mann-Whitney U)"
            )
    keys = sorted(a.values, key=_natural)
    x = a.array if unpaired else np.array([a.values[k] for k in keys])
    y = b.array if unpaired else np.array([b.values[k] for k in keys])
    result: dict[str, Any] = {"paired": not unpaired, "difference": float(x.mean() - y.mean())}
    tests: list[stats.TestResult] = []
    if unpaired:
        tests += [stats.welch_t(x, y), stats.mann_whitney(x, y)]
        result["pairing"] = f"unpaired (n={len(x)} and n={len(y)})"
        result["why"] = (
            "Welch's t-test, because an unpaired comparison was asked for: the runs are "
            "treated as two independent samples with possibly unequal variances"
        )
        result["interval"] = ("bootstrap", stats.bootstrap_diff_ci(x, y, paired=False))
    elif a.kind == "cv":
        # n_test / n_train from the rows the runs really used: a validation split carved out of
        # the k-1 training folds makes it larger than 1/(k-1) (921/3219, not 1/4, on spambase
        # with 5 folds). Of two groups that differ, the larger ratio (the more cautious test).
        sizes = max((fold_rows(g) for g in (a, b)), key=lambda s: s[0] / s[1])
        ratio = sizes[0] / sizes[1]
        result["test_train_ratio"] = ratio
        corrected = stats.corrected_resampled_t(x, y, ratio)
        plan = f"{a.plan.get('repeats', '?')} repeats x {a.folds} folds"
        result["pairing"] = f"paired by repeat and fold (J={len(x)}: {plan})"
        five_by_two = a.folds == 2 and a.plan.get("repeats") == 5 and len(keys) == 10
        if five_by_two:
            diffs = [
                [
                    a.values[f"repeat={r},fold={f}"] - b.values[f"repeat={r},fold={f}"]
                    for f in (0, 1)
                ]
                for r in range(5)
            ]
            tests.append(stats.five_by_two_cv_t(diffs))
            result["why"] = (
                "5x2cv paired t-test (Dietterich 1998), the test made for 5 repeats of 2-fold "
                "cv; the corrected resampled t-test (Nadeau & Bengio 2003) is shown too"
            )
        else:
            result["why"] = (
                "corrected resampled t-test (Nadeau & Bengio 2003), because the folds share "
                "training rows, so their scores are correlated and a plain paired t-test would "
                f"find differences that are not there; n_test/n_train = "
                f"{sizes[0]:.6g}/{sizes[1]:.6g} = {ratio:.4g}"
            )
        tests.append(corrected)
        result["interval"] = ("corrected-t", stats.corrected_resampled_ci(x, y, ratio))
    else:
        tests.append(stats.paired_t(x, y))
        if np.any(x != y):
            tests.append(stats.wilcoxon(x, y))
        result["pairing"] = f"paired by seed (n={len(x)})"
        result["why"] = "paired t-test, because each seed gives one independent pair of runs"
        result["interval"] = ("bootstrap", stats.bootstrap_diff_ci(x, y, paired=True))
    result["tests"] = tests
    result["primary"] = tests[0]
    result["effect"] = next((t for t in tests if t.effect_name), tests[0])
    result["mcnemar"] = _mcnemar(a, b)
    return result


def _mcnemar(a: Group, b: Group) -> stats.TestResult | None:
    """Both groups' test predictions on the same rows (the first member they share)."""
    import pandas as pd

    for member in sorted(set(a.run_dirs) & set(b.run_dirs)):
        files = [Path(g.run_dirs[member]) / "test_predictions.csv" for g in (a, b)]
        if all(f.is_file() for f in files):
            left, right = (pd.read_csv(f) for f in files)
            same_rows = len(left) == len(right) and (left["label"].values == right["label"].values)
            if np.all(same_rows):
                return stats.mcnemar(
                    left["predicted"] == left["label"], right["predicted"] == right["label"]
                )
    return None


def describe(values: np.ndarray) -> str:
    mean, low, high = stats.mean_ci(values)
    return f"mean {mean:.4f}, 95% CI [{low:.4f}, {high:.4f}], n={len(values)}"


def _statistic(t: stats.TestResult) -> str:
    if np.isnan(t.df):
        return f"statistic {t.statistic:.4f}"
    return f"t({t.df:.4g}) = {t.statistic:.4f}"


def compare_groups(
    store: Any,
    specs: list[str],
    metric: str,
    alpha: float = 0.05,
    plot: str | Path | None = None,
    *,
    unpaired: bool = False,
) -> list[dict[str, Any]]:
    """Print the comparison of each group against the first; returns the results. Groups are
    paired member by member (seed, or repeat and fold) and refused if they cannot be, unless
    ``unpaired``.

    >>> store = Store("runs/mlenv.db")  # doctest: +SKIP
    >>> compare_groups(store, ["mlp-64-32", "mlp-16"], "test_acc")  # doctest: +SKIP
    """
    if len(specs) < 2:
        raise ConfigError("compare: give at least two groups")
    groups = [load_group(store, s, metric) for s in specs]
    results = [compare_two(groups[0], g, alpha, unpaired) for g in groups[1:]]
    for g in groups:
        print(f"{g.name} ({g.kind}, id {g.id}): {metric} {describe(g.array)}")
    raw = [r["primary"].p_value for r in results]
    adjusted = stats.holm(raw) if len(results) > 1 else raw
    for g, r, p in zip(groups[1:], results, adjusted, strict=True):
        r["p_adjusted"] = p
        a = groups[0]
        kind, (low, high) = r["interval"]
        print(
            f"\n{a.name} - {g.name}: difference {r['difference']:+.4f} "
            f"({kind} 95% CI [{low:+.4f}, {high:+.4f}]), {r['pairing']}"
        )
        print(f"  test: {r['why']}")
        for t in r["tests"]:
            print(f"  {t.test}: {_statistic(t)}, p = {t.p_value:.4g}")
        e = r["effect"]
        print(f"  effect size: {e.effect_name} = {e.effect:.3f}")
        if r["mcnemar"] is not None:
            m = r["mcnemar"]
            print(f"  {m.test} on the same test rows: p = {m.p_value:.4g}")
        if len(results) > 1:
            print(f"  Holm-adjusted p ({len(results)} comparisons): {p:.4g}")
        verdict = "significant" if p < alpha else "not significant"
        direction = "higher" if r["difference"] > 0 else "lower"
        print(
            f"  => at alpha {alpha}, the difference is {verdict} "
            f"({r['primary'].test}, p = {p:.4g}): "
            + (
                f"{a.name} has a {direction} {metric} than {g.name}."
                if p < alpha
                else f"the data do not show that {a.name} and {g.name} differ in {metric}."
            )
        )
    if plot:
        _plot(groups, metric, Path(plot))
        print(f"\nplot: {plot}")
    return results


def _plot(groups: list[Group], metric: str, path: Path) -> None:
    from mlenv.track.plots import _pyplot, save_figure

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(groups), 4))
    data = [g.array for g in groups]
    ax.boxplot(data, showmeans=True, showfliers=False)  # every point is drawn below
    rng = np.random.default_rng(0)
    for i, values in enumerate(data, start=1):
        ax.scatter(
            i + rng.uniform(-0.08, 0.08, len(values)),
            values,
            s=14,
            alpha=0.7,
            color="black",
            zorder=3,
        )
    ax.set_xticks(range(1, len(groups) + 1), [g.name for g in groups], rotation=15)
    ax.set(ylabel=metric, title=f"{metric} per run")
    ax.grid(alpha=0.3, axis="y")
    save_figure(fig, path)
