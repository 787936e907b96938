"""What the data looks like after mlenv's split and scaling, so two pipelines can be compared:
sizes, per-feature statistics, the first scaled rows, label balance, and warnings for train/test
drift, rows shared by train and test, and extreme outliers; and the doctor's data verdicts
(leakage, scaling dominated by outliers, class balance, constant columns)."""

from __future__ import annotations

from typing import Any

import numpy as np

from mlenv.data.tabular import (
    LEAK_FRACTION,
    SQUASH_BAND,
    SQUASH_FRACTION,
    TabularSplit,
    near_zero_fraction,
    shared_rows,
)
from mlenv.doctor.verdict import Verdict

DRIFT_KS = 0.1  # Kolmogorov-Smirnov statistic above which a feature's train/test differ sharply
DRIFT_P = 1e-3
OUTLIER_Z = 6.0  # |scaled value| above this, in training-standard-deviation units


def data_report(split: TabularSplit) -> str:
    from scipy.stats import ks_2samp

    t = split.table
    train, test = split.scaled(split.train), split.scaled(split.test)
    out = [
        f"file: {t.path}",
        f"target: {t.target!r}  labels: "
        + ", ".join(f"{v!r} -> {i}" for i, v in enumerate(t.label_values)),
    ]
    out.append(
        f"rows: train {len(split.train)}, val {len(split.val)}, test {len(split.test)}"
        + (f"; dropped {len(t.dropped_rows)} with missing values" if t.dropped_rows else "")
    )
    out.append("")
    out.append(f"features after scaling ({split.scaler} scaler fitted on the training rows only):")
    header = f"{'feature':>14s} | {'train mean':>10s} {'std':>8s} {'min':>9s} {'max':>9s} | "
    header += f"{'test mean':>10s} {'std':>8s} {'min':>9s} {'max':>9s}"
    out.append(header)
    warnings = []
    for j, column in enumerate(t.columns):
        a, b = train[:, j], test[:, j]
        out.append(
            f"{column[:14]:>14s} | {a.mean():10.4f} {a.std():8.4f} {a.min():9.3f} "
            f"{a.max():9.3f} | {b.mean():10.4f} {b.std():8.4f} {b.min():9.3f} {b.max():9.3f}"
        )
        ks = ks_2samp(a, b)
        if ks.statistic > DRIFT_KS and ks.pvalue < DRIFT_P:
            warnings.append(
                f"feature {column!r}: train and test distributions differ "
                f"(KS {ks.statistic:.3f}, p {ks.pvalue:.1e})"
            )
    out.append("")
    out.append("first 3 training rows, scaled (line in file: values):")
    for row, line in zip(train[:3], t.lines[split.train[:3]], strict=False):
        out.append(f"  {line}: " + ", ".join(f"{v:.6f}" for v in row))
    for name, rows in (("validation", split.val), ("test", split.test)):
        shared = _shared_rows(split, rows)
        if shared:
            shown = ", ".join(f"{a}={b}" for a, b in shared[:10])
            warnings.append(
                f"{len(shared)} training rows also appear in the {name} split "
                f"(train line={name} line: {shown}{', ...' if len(shared) > 10 else ''})"
            )
    for name, rows, scaled in (("train", split.train, train), ("test", split.test, test)):
        extreme = np.abs(scaled) > OUTLIER_Z
        if extreme.any():
            lines = sorted({int(t.lines[rows[i]]) for i in np.argwhere(extreme)[:, 0]})
            shown = ", ".join(map(str, lines[:10])) + (", ..." if len(lines) > 10 else "")
            warnings.append(
                f"{len(lines)} {name} rows have a value beyond {OUTLIER_Z:g} "
                f"training standard deviations (lines {shown})"
            )
    out.append("")
    out += [f"warning: {w}" for w in warnings] or ["no warnings"]
    return "\n".join(out)


def _shared_rows(split: TabularSplit, rows: np.ndarray) -> list[tuple[int, int]]:
    """(train line, line in ``rows``) of the rows of ``rows`` whose features equal a training
    row's."""
    t = split.table
    seen = {t.features[i].tobytes(): int(t.lines[i]) for i in split.train}
    pairs = []
    for i in rows:
        key = t.features[i].tobytes()
        if key in seen:
            pairs.append((seen[key], int(t.lines[i])))
    return pairs


def label_report(split: TabularSplit) -> str:
    t = split.table
    out = [f"{'split':6s} {'label':>10s} {'count':>8s} {'percent':>8s}"]
    for name, rows in (("train", split.train), ("val", split.val), ("test", split.test)):
        if len(rows) == 0:
            continue
        counts = np.bincount(t.labels[rows], minlength=2)
        for i, value in enumerate(t.label_values):
            out.append(f"{name:6s} {value:>10s} {counts[i]:8d} {100 * counts[i] / len(rows):7.2f}%")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# Doctor verdicts: each takes arrays (features (N, F), labels (N,)) and returns a Verdict.

IMBALANCE_WARN = 0.2  # smallest class / largest class below this: warn
IMBALANCE_FAIL = 0.02


def check_leakage(train_x: np.ndarray, test_x: np.ndarray, split: str = "test") -> Verdict:
    """Test rows whose features equal a training row's: fail from LEAK_FRACTION of the test
    rows on (what training warns about), warn for fewer."""
    shared = shared_rows(train_x.reshape(len(train_x), -1), test_x.reshape(len(test_x), -1))
    share = len(shared) / max(len(test_x), 1)
    figures = {"shared_rows": len(shared), "test_rows": len(test_x), "share": share}
    if not shared:
        return Verdict("leakage", "ok", f"no {split} row repeats a training row", figures=figures)
    pairs = ", ".join(f"{a}={b}" for a, b in shared[:5])
    evidence = (
        f"{len(shared)} of {len(test_x)} {split} rows ({100 * share:.1f}%) repeat a training row "
        f"(train index={split} index: {pairs}{', ...' if len(shared) > 5 else ''})"
    )
    return Verdict(
        "leakage",
        "fail" if share >= LEAK_FRACTION else "warn",
        evidence,
        "remove duplicate rows before splitting (or split by group), so test rows are unseen",
        figures,
    )


def check_scaling(test_scaled: np.ndarray, columns: list[str], scaler: str = "standard") -> Verdict:
    """Features whose scaled test values mostly lie within +-SQUASH_BAND: a few extreme training
    rows set the scale and squash the rest towards 0, where the model cannot tell them apart."""
    near = near_zero_fraction(test_scaled)
    squashed = [j for j, f in enumerate(near) if f > SQUASH_FRACTION]
    figures = {
        "near_zero_fraction": {c: round(float(f), 4) for c, f in zip(columns, near, strict=True)}
    }
    if not squashed:
        return Verdict(
            "scaling",
            "ok",
            f"no feature has more than {SQUASH_FRACTION:.0%} of its scaled test values within "
            f"+-{SQUASH_BAND:g} (largest share {near.max():.2f})",
            figures=figures,
        )
    shown = ", ".join(
        f"{columns[j]} ({near[j]:.0%} near 0, interquartile range {_iqr(test_scaled[:, j]):.3g})"
        for j in squashed[:4]
    )
    return Verdict(
        "scaling",
        "fail",
        f"outliers dominate the {scaler} scaling: {len(squashed)} of {len(columns)} features have "
        f"most scaled test values within +-{SQUASH_BAND:g}: {shown}"
        + (", ..." if len(squashed) > 4 else ""),
        "--scaler robust (median and interquartile range) or --scaler quantile; or remove the "
        "outlier rows",
        figures,
    )


def _iqr(values: np.ndarray) -> float:
    high, low = np.percentile(values, [75, 25])
    return float(high - low)


def check_imbalance(labels: np.ndarray) -> Verdict:
    """The smallest class's count against the largest's."""
    values, counts = np.unique(labels, return_counts=True)
    ratio = counts.min() / counts.max()
    shares = ", ".join(
        f"{v:g}: {c / counts.sum():.1%}" for v, c in zip(values, counts, strict=True)
    )
    figures = {
        "counts": {f"{v:g}": int(c) for v, c in zip(values, counts, strict=True)},
        "ratio": ratio,
    }
    evidence = f"{len(values)} classes in training ({shares}); smallest/largest {ratio:.3f}"
    if len(values) < 2:
        return Verdict("class balance", "fail", evidence, "the training split needs 2 classes")
    status = "fail" if ratio < IMBALANCE_FAIL else "warn" if ratio < IMBALANCE_WARN else "ok"
    return Verdict(
        "class balance",
        status,
        evidence,
        f"accuracy of always predicting the majority is {counts.max() / counts.sum():.3f}: judge "
        "by AUC or F1, weight the loss or resample the rare class",
        figures,
    )


def check_constant(train_x: np.ndarray, columns: list[str]) -> Verdict:
    """Features with one value over all training rows: they carry nothing."""
    x = train_x.reshape(len(train_x), -1)
    constant = [columns[j] for j in np.flatnonzero(np.ptp(x, axis=0) == 0)]
    if not constant:
        return Verdict("constant columns", "ok", f"all {x.shape[1]} features vary in training")
    return Verdict(
        "constant columns",
        "warn",
        f"{len(constant)} of {x.shape[1]} features are constant in training: "
        + ", ".join(constant[:8])
        + (", ..." if len(constant) > 8 else ""),
        "drop them (--drop-constant for a CSV)",
        {"constant": constant},
    )


def data_verdicts(bundle: Any) -> list[Verdict]:
    """The data checks that apply to a bundle of tensors ``(x, y)``: leakage (any inputs),
    scaling (a scaled tabular CSV), class balance (integer labels of one per example), constant
    columns (a float feature matrix (N, F); not token ids)."""
    train, test = bundle.train, bundle.test if bundle.test is not None else bundle.val
    if not (isinstance(train, tuple | list) and all(hasattr(t, "numpy") for t in train)):
        return [Verdict("data", "skip", "the data set is not in-memory tensors (x, y)")]
    x = train[0].numpy()
    y = train[1].numpy() if len(train) > 1 else None
    columns = list(bundle.state.get("columns") or [f"x{j}" for j in range(x[0].size)])
    out = []
    if test is not None:
        split = "test" if bundle.test is not None else "validation"
        out.append(check_leakage(x, test[0].numpy(), split))
        if bundle.state.get("kind") == "tabular":
            out.append(
                check_scaling(test[0].numpy(), columns, bundle.state.get("scaler", "standard"))
            )
    if y is not None and y.ndim == 1 and np.all(np.mod(y, 1) == 0) and len(np.unique(y)) <= 100:
        out.append(check_imbalance(y))
    if x.ndim == 2 and np.issubdtype(x.dtype, np.floating):
        out.append(check_constant(x, columns))
    return out
