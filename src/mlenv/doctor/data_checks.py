"""What the data looks like after mlenv's split and scaling, so two pipelines can be compared:
sizes, per-feature statistics, the first scaled rows, label balance, and warnings for train/test
drift, rows shared by train and test, and extreme outliers."""

from __future__ import annotations

import numpy as np

from mlenv.data.tabular import TabularSplit

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
    out.append("features after scaling (StandardScaler fitted on the training rows only):")
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
