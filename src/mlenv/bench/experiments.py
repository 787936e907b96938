"""Groups of runs and their comparison: ``mlenv repeat`` (one recipe over several seeds), ``mlenv
cv`` (k-fold cross-validation, repeated), and ``mlenv compare`` (is the difference real?)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlenv.bench import stats
from mlenv.errors import ConfigError


def parse_seeds(spec: str) -> list[int]:
    """``0-4`` -> [0, 1, 2, 3, 4]; ``1,5,9`` -> [1, 5, 9].

    >>> parse_seeds("0-2,7")
    [0, 1, 2, 7]
    """
    seeds: list[int] = []
    try:
        for part in spec.split(","):
            if "-" in part.strip()[1:]:
                low, high = part.split("-", 1)
                seeds.extend(range(int(low), int(high) + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise ConfigError(
            f"--seeds: accepts a range like 0-4 or a list like 0,3,7; got {spec!r}"
        ) from None
    if len(seeds) < 2:
        raise ConfigError(f"--seeds: a group needs at least 2 seeds, got {spec!r}")
    return seeds


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
    members = [(f"seed={s}", ["--seed", str(s)]) for s in seeds]
    return run_group(recipe, overrides, "repeat", name, members, {"seeds": seeds})[0]


def cross_validate(
    recipe: Any, folds: int, repeats: int, overrides: list[str], name: str | None
) -> int:
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

    @property
    def array(self) -> np.ndarray:
        return np.array(list(self.values.values()))


def load_group(store: Any, spec: str, metric: str) -> Group:
    group = store.group(spec)
    if group is None:
        raise ConfigError(
            f"compare: no group {spec!r} in {store.path} (a repeat's or a cv's "
            "--experiment name, or its id)"
        )
    runs = [r for r in store.runs(group_id=group["id"]) if r["status"] == "finished"]
    missing = [r["id"] for r in runs if metric not in r["summary"]]
    if missing or not runs:
        known = sorted(runs[0]["summary"]) if runs else []
        raise ConfigError(
            f"compare: group {spec!r} has no metric {metric!r} in its runs; "
            f"metrics: {', '.join(known)}"
        )
    return Group(
        group["name"],
        group["id"],
        group["kind"],
        group["config"],
        {r["member"]: r["summary"][metric] for r in runs},
        {r["member"]: r["run_dir"] for r in runs if r["run_dir"]},
    )


def compare_two(a: Group, b: Group, alpha: float) -> dict[str, Any]:
    paired = set(a.values) == set(b.values) and len(a.values) >= 2
    keys = sorted(a.values) if paired else []
    x = np.array([a.values[k] for k in keys]) if paired else a.array
    y = np.array([b.values[k] for k in keys]) if paired else b.array
    result: dict[str, Any] = {"paired": paired, "difference": float(x.mean() - y.mean())}
    five_by_two = (
        paired
        and a.kind == b.kind == "cv"
        and a.plan.get("folds") == 2
        and a.plan.get("repeats") == 5
    )
    tests: list[stats.TestResult] = []
    if five_by_two:
        diffs = [
            [a.values[f"repeat={r},fold={f}"] - b.values[f"repeat={r},fold={f}"] for f in range(2)]
            for r in range(5)
        ]
        tests.append(stats.five_by_two_cv_t(diffs))
    if paired:
        tests.append(stats.paired_t(x, y))
        if np.any(x != y):
            tests.append(stats.wilcoxon(x, y))
    else:
        tests += [stats.welch_t(x, y), stats.mann_whitney(x, y)]
    result["tests"] = tests
    result["primary"] = tests[0]
    result["effect"] = next((t for t in tests if t.effect_name), tests[0])
    result["bootstrap_ci"] = stats.bootstrap_diff_ci(x, y, paired)
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


def compare_groups(
    store: Any, specs: list[str], metric: str, alpha: float = 0.05, plot: str | Path | None = None
) -> list[dict[str, Any]]:
    """Print the comparison of each group against the first; returns the results."""
    if len(specs) < 2:
        raise ConfigError("compare: give at least two groups")
    groups = [load_group(store, s, metric) for s in specs]
    for g in groups:
        print(f"{g.name} ({g.kind}, id {g.id}): {metric} {describe(g.array)}")
    results = [compare_two(groups[0], g, alpha) for g in groups[1:]]
    raw = [r["primary"].p_value for r in results]
    adjusted = stats.holm(raw) if len(results) > 1 else raw
    for g, r, p in zip(groups[1:], results, adjusted, strict=True):
        r["p_adjusted"] = p
        a = groups[0]
        print(
            f"\n{a.name} - {g.name}: difference {r['difference']:+.4f} "
            f"(bootstrap 95% CI [{r['bootstrap_ci'][0]:+.4f}, {r['bootstrap_ci'][1]:+.4f}]), "
            f"{'paired by ' + ('fold' if a.kind == 'cv' else 'seed') if r['paired'] else 'unpaired'}"
        )
        for t in r["tests"]:
            print(f"  {t.test}: statistic {t.statistic:.4f}, p = {t.p_value:.4g}")
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
