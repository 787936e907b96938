"""Tabular CSV for binary classification: read, validate, map labels, split, scale.

Every problem in the file is an error naming the file, the row (as the line number in the file)
and the column, unless the user chose a policy (``missing="drop"|"mean"``). The rows are split
three ways: test, and a validation split carved out of the rest for checkpoint selection and
early stopping (``val_size``, default 0.1 of all rows; 0 means no validation), so selection never
sees a test row. The scaler (``standard``, ``robust`` or ``quantile``) is fitted on the training
rows only; everything prediction needs to repeat the preprocessing (columns, label mapping,
missing-value markers, imputation means, scaler centre and scale or quantiles, the data file's path and SHA-256) is kept in ``DataBundle.state`` and saved in
every checkpoint.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from mlenv.data import DataBundle, register_dataset
from mlenv.data.splits import check_fraction
from mlenv.data.text import read_utf8
from mlenv.errors import ConfigError, DataError

MissingPolicy = Literal["error", "drop", "mean"]
ScalerName = Literal["standard", "robust", "quantile"]
SCALERS = ("standard", "robust", "quantile")
# A feature is squashed when more than SQUASH_FRACTION of its scaled test values lie within
# +-SQUASH_BAND: a few extreme training rows set the scale, and the rest collapse towards 0
# (a standard normal feature has 4% of its values there).
SQUASH_BAND = 0.05
SQUASH_FRACTION = 0.5
# Test rows that repeat a training row inflate the test metrics; real files hold a few exact
# duplicates (magic04: 0.9% of its test rows), so training warns from this share on.
LEAK_FRACTION = 0.02
# strings that mean "missing" (case-insensitive) besides an empty cell; --na-values replaces them
DEFAULT_NA_VALUES = "na,nan,null,none,?,n/a"
# the files write_split makes; replacing a split removes all of them first
SPLIT_FILES = (
    *(f"{name}{suffix}.csv" for name in ("train", "val", "test") for suffix in ("", "_scaled")),
    "split.json",
)
QUANTILES = 1000  # the quantile scaler's reference points (scikit-learn's default)


def na_markers(na_values: str) -> set[str]:
    """The lower-cased strings that mean missing: an empty cell, and each of ``na_values``
    (comma-separated). ``na_markers("")`` is ``{""}``: only empty cells are missing."""
    return {""} | {v.strip().lower() for v in na_values.split(",") if v.strip()}


@dataclass
class TabularTable:
    """A validated CSV: features as float64, labels mapped to 0/1, file line numbers kept."""

    path: Path
    features: np.ndarray  # (N, F) float64, may hold NaN where missing (policy "mean")
    labels: np.ndarray  # (N,) int64 in {0, 1}
    lines: np.ndarray  # (N,) the line number of each row in the file (1-based)
    columns: list[str]  # feature names
    target: str
    label_values: list[str]  # label_values[i] is the original value mapped to i
    dropped_rows: list[int]  # line numbers dropped by policy "drop"
    missing: str = "error"  # the policy, kept so prediction applies the same one
    na_values: str = DEFAULT_NA_VALUES  # kept so prediction reads missing values the same way
    sha256: str = ""  # of the file's bytes: a later run can tell whether it reads the same file

    def label_mapping(self) -> dict[str, int]:
        return {value: i for i, value in enumerate(self.label_values)}


def _sort_labels(values: list[str]) -> list[str]:
    """Numeric labels in numeric order (-1 < 1, 0 < 1), others in text order (DOWN < UP)."""
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


def read_table(
    path: str | Path,
    target: str = "",
    no_header: bool = False,
    missing: MissingPolicy = "error",
    drop_constant: bool = False,
    na_values: str = DEFAULT_NA_VALUES,
) -> TabularTable:
    """Read and validate a CSV for binary classification (see the module docstring).

    >>> table = read_table("spambase.data", no_header=True)  # doctest: +SKIP
    """
    frame, path, sha256 = _read_csv(path, no_header)
    first_line = 1 if no_header else 2
    if len(frame) == 0:
        raise DataError(f"{path}: no data rows")
    if len(frame) == 1:
        raise DataError(f"{path}: only one data row (line {first_line}); a split needs more")
    if frame.shape[1] < 2:
        raise DataError(f"{path}: needs at least one feature column and a target column")
    target_name = _target_column(frame, target, path)
    lines = np.arange(first_line, first_line + len(frame))
    markers = na_markers(na_values)

    raw_labels = frame[target_name].str.strip()
    empty = raw_labels.str.lower().isin(markers).to_numpy()
    if empty.any():
        i = int(empty.argmax())
        value = raw_labels.iloc[i]
        hint = (
            f" ({value!r} is a missing-value marker; --na-values sets them, e.g. "
            "--na-values '' so that only empty cells are missing)"
            if value
            else ""
        )
        raise DataError(f"{path}: row {lines[i]}, column {target_name!r}: missing label{hint}")
    distinct = _sort_labels(sorted(set(raw_labels)))
    if len(distinct) != 2:
        shown = ", ".join(distinct[:10]) + (", ..." if len(distinct) > 10 else "")
        raise DataError(
            f"{path}: column {target_name!r} has {len(distinct)} distinct label"
            f"{'s' if len(distinct) != 1 else ''} ({shown}); binary classification needs exactly 2"
        )

    columns = [c for c in frame.columns if c != target_name]
    features, missing_mask = _numeric_columns(frame, columns, lines, path, markers)

    dropped: list[int] = []
    if missing_mask.any():
        if missing == "error":
            i, j = np.argwhere(missing_mask)[0]
            raise DataError(
                f"{path}: row {lines[i]}, column {columns[j]!r}: missing value "
                f"({int(missing_mask.sum())} in all; choose a policy with --missing drop|mean)"
            )
        if missing == "drop":
            keep = ~missing_mask.any(axis=1)
            dropped = [int(v) for v in lines[~keep]]
            features, lines, raw_labels = features[keep], lines[keep], raw_labels[keep]
            if len(features) < 2:
                raise DataError(f"{path}: fewer than two rows are left after dropping missing")
        # "mean": the NaNs stay; the split imputes them with the training rows' means

    constant = [
        j for j in range(len(columns)) if np.nanmin(features[:, j]) == np.nanmax(features[:, j])
    ]
    if constant and not drop_constant:
        j = constant[0]
        raise DataError(
            f"{path}: column {columns[j]!r} is constant (every row is {np.nanmin(features[:, j]):g});"
            " it carries no information and breaks scaling (--drop_constant true drops it)"
        )
    if constant:
        keep_cols = [j for j in range(len(columns)) if j not in constant]
        features = features[:, keep_cols]
        columns = [columns[j] for j in keep_cols]

    mapping = {value: i for i, value in enumerate(distinct)}
    labels = np.array([mapping[v] for v in raw_labels], dtype=np.int64)
    return TabularTable(
        path,
        features,
        labels,
        lines,
        columns,
        target_name,
        distinct,
        dropped,
        missing,
        na_values,
        sha256,
    )


def _numeric_columns(
    frame: pd.DataFrame, columns: list[str], lines: np.ndarray, path: Path, markers: set[str]
) -> tuple[np.ndarray, np.ndarray]:
    """The named text columns as float64 (NaN where missing) and the mask of missing cells;
    a non-numeric or infinite cell is an error naming its row and column."""
    features = np.empty((len(frame), len(columns)), dtype=np.float64)
    missing_mask = np.zeros_like(features, dtype=bool)
    for j, column in enumerate(columns):
        text = frame[column].str.strip()
        is_missing = text.str.lower().isin(markers).to_numpy()
        numbers = pd.to_numeric(text.where(~is_missing, None), errors="coerce").to_numpy(float)
        bad = np.isnan(numbers) & ~is_missing
        if bad.any():
            i = int(bad.argmax())
            raise DataError(
                f"{path}: row {lines[i]}, column {column!r}: non-numeric value {text.iloc[i]!r}"
            )
        infinite = np.isinf(numbers)
        if infinite.any():
            i = int(infinite.argmax())
            raise DataError(f"{path}: row {lines[i]}, column {column!r}: infinite value")
        features[:, j] = numbers
        missing_mask[:, j] = is_missing
    return features, missing_mask


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(path: str | Path, no_header: bool) -> tuple[pd.DataFrame, Path, str]:
    """(every cell as text, the path, the SHA-256 of the file's bytes). The header is read by
    hand so that duplicate names are seen (pandas would rename them ``a.1``) and a first line of
    numbers is caught (a file without a header, read without --no-header, would lose a row)."""
    if not str(path).strip():
        raise DataError("give the CSV with --data FILE")
    path = Path(path)
    text, raw = read_utf8(path, "--data")
    _check_field_counts(text, path)
    try:
        frame = pd.read_csv(
            io.StringIO(text), header=None, dtype=str, keep_default_na=False, skipinitialspace=True
        )
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty (no rows)") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: not a valid CSV ({str(exc).strip()})") from None
    if no_header:
        names = [f"x{i}" for i in range(frame.shape[1])]
    else:
        names = [str(c).strip() for c in frame.iloc[0]]
        frame = frame.iloc[1:].reset_index(drop=True)
        _check_header(names, frame, path)
    frame.columns = names
    return frame, path, hashlib.sha256(raw).hexdigest()


def _check_field_counts(text: str, path: Path) -> None:
    """Every row has as many fields as the first line (pandas would fill a short row with
    empty cells, or stop with a message that does not name the line in the file)."""
    import csv

    reader = csv.reader(io.StringIO(text), skipinitialspace=True)
    width = None
    for record in reader:
        if not record:  # a blank line, which pandas skips too
            continue
        if width is None:
            width = len(record)
        elif len(record) != width:
            raise DataError(
                f"{path}: row {reader.line_num} has {len(record)} fields; the first line has "
                f"{width}"
            )


def _check_header(names: list[str], frame: pd.DataFrame, path: Path) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(
                f"{path}: the header names column {name!r} twice; column names must be distinct"
            )
        seen.add(name)
    # the first line is a data row when each field is a number or a value its column holds
    # below (a label such as 'g'), and at least one is a number; the column positions
    # 0, 1, 2, ... (or 1, 2, 3, ...) are names: what pandas writes for a frame made from an array
    numbers = [_is_number(n) for n in names]
    positions = [[str(i + start) for i in range(len(names))] for start in (0, 1)]
    if (
        names not in positions
        and any(numbers)
        and all(
            number or name in set(frame.iloc[:, j].str.strip())
            for j, (name, number) in enumerate(zip(names, numbers, strict=True))
        )
    ):
        shown = ",".join(names[:6]) + (",..." if len(names) > 6 else "")
        raise DataError(
            f"{path}: the first line ({shown}) looks like a data row, not column names; if the "
            "file has no header, give --no-header"
        )


def read_for_prediction(
    path: str | Path, state: dict[str, Any], no_header: bool
) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """New rows for a trained model: the training columns (by name when there is a header),
    imputed and scaled exactly as in training. Returns (scaled features, line numbers, the
    original labels if the file has the target column). A label the model never saw is an
    error naming it and the known labels."""
    frame, path, _ = _read_csv(path, no_header)
    if len(frame) == 0:
        raise DataError(f"{path}: no data rows")
    columns, target = list(state["columns"]), state["target"]
    if no_header:
        n = len(frame.columns)
        if n not in (len(columns), len(columns) + 1):
            raise DataError(
                f"{path}: has {n} columns; the model was trained on {len(columns)} features "
                f"(plus the label column {target!r}, which may be absent)"
            )
        if n == len(columns):  # no label column: name the features as in training
            frame.columns = columns
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing feature columns: {', '.join(missing)}")
    extra = [c for c in frame.columns if c not in columns and c != target]
    if extra:
        raise DataError(
            f"{path}: columns the model was not trained on: {', '.join(extra)} "
            f"(training columns: {', '.join(columns)})"
        )
    first_line = 1 if no_header else 2
    lines = np.arange(first_line, first_line + len(frame))
    markers = na_markers(state.get("na_values", DEFAULT_NA_VALUES))
    features, missing_mask = _numeric_columns(frame, columns, lines, path, markers)
    if missing_mask.any() and state.get("missing") != "mean":
        i, j = np.argwhere(missing_mask)[0]
        raise DataError(f"{path}: row {lines[i]}, column {columns[j]!r}: missing value")
    scaled = scale_features(
        features,
        state["impute_mean"].numpy(),
        state["scale_mean"].numpy(),
        state["scale_scale"].numpy(),
        lines,
        columns,
        path,
        state["quantiles"].numpy() if "quantiles" in state else None,
    )
    labels = None
    if target in frame.columns:
        labels = frame[target].str.strip().tolist()
        known = list(state["label_values"])
        unknown = [i for i, value in enumerate(labels) if value not in known]
        if unknown:
            i = unknown[0]
            raise DataError(
                f"{path}: row {lines[i]}, column {target!r}: label {labels[i]!r} was not seen in "
                f"training (known labels: {', '.join(map(repr, known))}; {len(unknown)} such "
                "rows); drop the label column to predict without accuracy"
            )
    return scaled, lines, labels


def scale_features(
    features: np.ndarray,
    impute_mean: np.ndarray,
    scale_mean: np.ndarray,
    scale_scale: np.ndarray,
    lines: np.ndarray,
    columns: list[str],
    path: Path,
    quantiles: np.ndarray | None = None,
) -> np.ndarray:
    """``(features - mean) / scale`` with missing cells imputed, in float64; a result that is not
    finite as the model's float32 is an error naming the row and column. With ``quantiles``
    (the quantile scaler's (QUANTILES, F) training quantiles) each feature is first mapped
    through its training quantiles to a standard normal (mean 0 and scale 1 then)."""
    filled = np.where(np.isnan(features), impute_mean, features)
    if quantiles is not None:
        filled = quantile_transformer(quantiles).transform(filled)
    with np.errstate(all="ignore"):
        scaled = (filled - scale_mean) / scale_scale
        bad = ~np.isfinite(scaled.astype(np.float32))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise DataError(
            f"{path}: row {lines[i]}, column {columns[j]!r}: value {filled[i, j]:g} is "
            f"{scaled[i, j]:g} after scaling (training mean {scale_mean[j]:g}, scale "
            f"{scale_scale[j]:g}), beyond float32; rescale the column"
        )
    return scaled


def quantile_transformer(quantiles: np.ndarray) -> Any:
    """scikit-learn's ``QuantileTransformer`` (normal output) with the given training quantiles,
    (QUANTILES, F): what the quantile scaler fitted, rebuilt for new rows."""
    from sklearn.preprocessing import QuantileTransformer

    transformer = QuantileTransformer(n_quantiles=len(quantiles), output_distribution="normal")
    transformer.quantiles_ = quantiles
    transformer.references_ = np.linspace(0, 1, len(quantiles))
    transformer.n_features_in_ = quantiles.shape[1]
    return transformer


def near_zero_fraction(scaled: np.ndarray) -> np.ndarray:
    """(F,) the fraction of each scaled feature's values within +-SQUASH_BAND."""
    return (np.abs(scaled) <= SQUASH_BAND).mean(axis=0)


def shared_rows(a: np.ndarray, b: np.ndarray) -> list[tuple[int, int]]:
    """``(i, j)`` pairs of rows with ``a[i] == b[j]`` (identical features), one per row of ``b``:
    rows that leak from one split into another."""
    seen: dict[bytes, int] = {}
    for i, row in enumerate(np.ascontiguousarray(a)):
        seen.setdefault(row.tobytes(), i)
    return [
        (seen[row.tobytes()], j)
        for j, row in enumerate(np.ascontiguousarray(b))
        if row.tobytes() in seen
    ]


def _target_column(frame: pd.DataFrame, target: str, path: Path) -> str:
    if not target:
        return str(frame.columns[-1])
    if target in frame.columns:
        return target
    try:
        return str(frame.columns[int(target)])
    except (ValueError, IndexError):
        raise DataError(
            f"{path}: no column {target!r}; columns: {', '.join(map(str, frame.columns))}"
        ) from None


@dataclass
class TabularSplit:
    """Row indices of each split, and the preprocessing fitted on the training rows."""

    table: TabularTable
    train: np.ndarray
    val: np.ndarray  # empty with val_size 0 (no validation)
    test: np.ndarray
    impute_mean: np.ndarray  # (F,) training means used for missing values
    scale_mean: np.ndarray  # (F,) the scaler's centre (StandardScaler.mean_, RobustScaler.center_)
    scale_scale: np.ndarray  # (F,) and scale; 0 and 1 for the quantile scaler
    scaler: str = "standard"
    quantiles: np.ndarray | None = None  # (QUANTILES, F) training quantiles (quantile scaler)

    def scaled(self, rows: np.ndarray) -> np.ndarray:
        """The rows imputed and scaled, (len(rows), F) float64; checked finite as float32."""
        t = self.table
        return scale_features(
            t.features[rows],
            self.impute_mean,
            self.scale_mean,
            self.scale_scale,
            t.lines[rows],
            t.columns,
            t.path,
            self.quantiles,
        )

    def scaling_warning(self) -> str | None:
        """One line when the cheap data checks fire (features squashed by a few extreme training
        rows, training rows repeated in the test split), else None; training prints it."""
        found = []
        squashed = near_zero_fraction(self.scaled(self.test)) > SQUASH_FRACTION
        if squashed.any():
            names = [c for c, s in zip(self.table.columns, squashed, strict=True) if s]
            found.append(
                f"{len(names)} of {len(squashed)} features have most scaled test values within "
                f"+-{SQUASH_BAND:g} ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}): "
                f"outliers dominate the {self.scaler} scaling; try --scaler robust or quantile"
            )
        f = self.table.features
        shared = shared_rows(f[self.train], f[self.test])
        if len(shared) >= LEAK_FRACTION * len(self.test):
            found.append(
                f"{len(shared)} of {len(self.test)} test rows repeat a training row (leakage "
                "between the splits)"
            )
        if not found:
            return None
        return "; ".join(found) + "; `mlenv doctor` says more"

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def state(self) -> dict[str, Any]:
        """What prediction needs, as plain data and tensors (checkpoint-safe)."""
        t = self.table
        return {
            "kind": "tabular",
            "columns": list(t.columns),
            "target": t.target,
            "label_values": list(t.label_values),
            "impute_mean": torch.tensor(self.impute_mean),
            "scale_mean": torch.tensor(self.scale_mean),
            "scale_scale": torch.tensor(self.scale_scale),
            "scaler": self.scaler,
            **({} if self.quantiles is None else {"quantiles": torch.tensor(self.quantiles)}),
            "missing": t.missing,
            "na_values": t.na_values,
            "data_path": str(t.path.resolve()),
            "data_sha256": t.sha256,
            "model_kwargs": {"in_features": len(t.columns)},
        }


def split_table(
    table: TabularTable,
    test_size: float,
    val_size: float,
    seed: int,
    folds: int = 0,
    fold: int = 0,
    cv_repeat: int = 0,
    scaler: ScalerName = "standard",
) -> TabularSplit:
    """Stratified train/val/test split with ``seed`` (or, with ``folds``, fold ``fold`` as the
    test rows); ``val_size`` (a fraction of all rows, 0 for none) comes out of the non-test rows.
    Scaler and imputation from the training rows only: ``standard`` (mean and standard
    deviation), ``robust`` (median and interquartile range: a few extreme rows do not set the
    scale) or ``quantile`` (each feature through its training quantiles to a standard normal)."""
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    check_scaler(scaler)

    counts = np.bincount(table.labels, minlength=2)
    if counts.min() < 2:
        label = table.label_values[int(counts.argmin())]
        raise DataError(
            f"{table.path}: label {label!r} has {counts.min()} row; a stratified split needs 2"
        )
    index = np.arange(len(table.labels))
    try:
        if folds:
            from mlenv.data.splits import fold_indices

            train, test = fold_indices(table.labels, folds, fold, seed, cv_repeat)
            test_size = len(test) / len(index)
            check_fraction("val_size", val_size, 1 - test_size, zero=True, why=f"--folds {folds}")
        else:
            train, test = train_test_split(
                index, test_size=test_size, random_state=seed, stratify=table.labels
            )
        val = np.array([], dtype=np.int64)
        if val_size > 0:
            train, val = train_test_split(
                train,
                test_size=val_size / (1 - test_size),
                random_state=seed,
                stratify=table.labels[train],
            )
    except ValueError as exc:
        raise DataError(
            f"{table.path}: cannot split {len(index)} rows with --test-size {test_size:.4g} and "
            f"--val-size {val_size:.4g} ({exc})"
        ) from None
    train, val, test = np.sort(train), np.sort(val), np.sort(test)
    train_features = table.features[train]
    with np.errstate(all="ignore"):
        impute = np.nanmean(train_features, axis=0)
    if np.isnan(impute).any():
        j = int(np.isnan(impute).argmax())
        raise DataError(f"{table.path}: column {table.columns[j]!r} has no value in training rows")
    filled = np.where(np.isnan(train_features), impute, train_features)
    with np.errstate(all="ignore"):  # overflow is reported below, by column
        fitted = StandardScaler().fit(filled)  # the training rows only
        scale = np.where(fitted.scale_ == 0, 1.0, fitted.scale_)
        overflow = ~(np.isfinite(fitted.mean_) & np.isfinite(fitted.var_))
    if overflow.any():
        j = int(overflow.argmax())
        i = int(np.abs(filled[:, j]).argmax())
        raise DataError(
            f"{table.path}: row {table.lines[train[i]]}, column {table.columns[j]!r}: value "
            f"{filled[i, j]:g} makes the training rows' mean or variance overflow, so scaling "
            "gives no finite values; rescale the column"
        )
    if scaler == "standard":
        return TabularSplit(table, train, val, test, impute, fitted.mean_, scale)
    return _fit_other_scaler(table, train, val, test, impute, filled, scaler)


def check_scaler(scaler: str) -> None:
    if scaler not in SCALERS:
        raise ConfigError(f"--scaler: accepts {', '.join(SCALERS)}, got {scaler!r}")


def _fit_other_scaler(
    table: TabularTable,
    train: np.ndarray,
    val: np.ndarray,
    test: np.ndarray,
    impute: np.ndarray,
    filled: np.ndarray,
    scaler: str,
) -> TabularSplit:
    """The robust or quantile scaler fitted on the (imputed) training rows ``filled``."""
    from sklearn.preprocessing import QuantileTransformer, RobustScaler

    f = filled.shape[1]
    if scaler == "robust":  # a zero interquartile range gets scale 1, as scikit-learn does
        robust = RobustScaler().fit(filled)
        return TabularSplit(
            table, train, val, test, impute, robust.center_, robust.scale_, scaler="robust"
        )
    n = min(QUANTILES, len(filled))
    fitted = QuantileTransformer(
        n_quantiles=n, output_distribution="normal", subsample=len(filled), random_state=0
    ).fit(filled)
    return TabularSplit(
        table, train, val, test, impute, np.zeros(f), np.ones(f), "quantile", fitted.quantiles_
    )


def write_split(split: TabularSplit, directory: str | Path, force: bool = False) -> Path:
    """The exact rows and scaled matrices as CSV, so another implementation gets identical data.

    ``directory`` must be new or empty; a folder that holds a previous split (its
    ``split.json``) is replaced as a whole only with ``force`` (the old split's files are removed
    first, so no stale ``val.csv`` is left beside a new ``train.csv``); other files stay."""
    from mlenv.train.checkpoint import atomic_write_bytes

    directory = Path(directory)
    _prepare_split_folder(directory, force)
    t = split.table
    # scale every split first: a value that cannot be scaled stops before anything is written
    parts = [
        (name, rows, split.scaled(rows))
        for name, rows in (("train", split.train), ("val", split.val), ("test", split.test))
        if len(rows)
    ]
    for name, rows, scaled_rows in parts:
        raw = pd.DataFrame(t.features[rows], columns=t.columns)
        raw.insert(0, "line", t.lines[rows])
        raw["label"] = t.labels[rows]
        scaled = pd.DataFrame(scaled_rows, columns=t.columns)
        scaled["label"] = t.labels[rows]
        atomic_write_bytes(directory / f"{name}.csv", raw.to_csv(index=False).encode())
        scaled_csv = scaled.to_csv(index=False, float_format="%.9g").encode()
        atomic_write_bytes(directory / f"{name}_scaled.csv", scaled_csv)
    meta = {
        "source": str(t.path),
        "source_sha256": t.sha256,
        "target": t.target,
        "label_mapping": t.label_mapping(),
        "columns": t.columns,
        "scaler": split.scaler,
        "scaler_mean": split.scale_mean.tolist(),
        "scaler_scale": split.scale_scale.tolist(),
        "impute_mean": split.impute_mean.tolist(),
        "sizes": split.sizes(),
        "dropped_lines": t.dropped_rows,
    }
    atomic_write_bytes(directory / "split.json", (json.dumps(meta, indent=2) + "\n").encode())
    return directory


def _prepare_split_folder(directory: Path, force: bool) -> None:
    """Refuse a path that is not a folder and a non-empty folder that is not a previous split;
    with ``force``, remove a previous split's files."""
    if directory.exists() and not directory.is_dir():
        raise DataError(f"--save-split: {directory} exists and is not a folder")
    if not directory.is_dir() or not any(directory.iterdir()):
        return
    if not _is_split_folder(directory):
        raise DataError(
            f"--save-split: {directory} is not empty and holds no previous split (split.json); "
            "give a new or empty folder"
        )
    if not force:
        raise DataError(
            f"--save-split: {directory} holds a previous split; give --save-split-force true to "
            "replace it, or a new folder"
        )
    for name in SPLIT_FILES:
        (directory / name).unlink(missing_ok=True)


def _is_split_folder(directory: Path) -> bool:
    try:
        meta = json.loads((directory / "split.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and {"sizes", "label_mapping", "columns"} <= meta.keys()


def load_split(
    data: str,
    seed: int,
    target: str = "",
    no_header: bool = False,
    test_size: float = 0.2,
    val_size: float = 0.1,
    missing: MissingPolicy = "error",
    drop_constant: bool = False,
    na_values: str = DEFAULT_NA_VALUES,
    folds: int = 0,
    fold: int = 0,
    cv_repeat: int = 0,
    save_split: str = "",
    save_split_force: bool = False,
    scaler: ScalerName = "standard",
) -> TabularSplit:
    """Read, validate and split ``data`` (the arguments are ``tabular_csv``'s); with
    ``save_split``, also write the split there (see ``write_split``)."""
    check_scaler(scaler)
    check_fraction("test_size", test_size, 1.0)
    check_fraction("val_size", val_size, 1 - test_size, zero=True, why=f"--test-size {test_size}")
    if cv_repeat < 0:
        raise ConfigError(f"--cv-repeat: accepts an integer >= 0, got {cv_repeat}")
    table = read_table(data, target, no_header, missing, drop_constant, na_values)
    split = split_table(table, test_size, val_size, seed, folds, fold, cv_repeat, scaler)
    if save_split:
        write_split(split, save_split, force=save_split_force)
    return split


def check_same_data(path: str | Path, state: dict[str, Any]) -> str | None:
    """A warning when ``path`` is not the file a model was trained on (``state`` is the tabular
    bundle's state from its checkpoint), else None. Same bytes count as the same file, wherever
    it lies; a state from before the checksum was kept gives None."""
    expected = state.get("data_sha256")
    if not expected:
        return None
    path = Path(path)
    if not path.is_file():
        return f"{path}: no such file; the model was trained on {state.get('data_path')}"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest == expected:
        return None
    return (
        f"{path.resolve()} is not the file the model was trained on ({state.get('data_path')}, "
        f"sha256 {expected[:16]}..., now {digest[:16]}...); the split rebuilt from it is not "
        "the one of training"
    )


def check_same_columns(state: dict[str, Any], trained: dict[str, Any]) -> None:
    """A ``DataError`` when a rebuilt tabular bundle's ``state`` does not fit the ``trained``
    state (feature columns or label values differ), e.g. ``mlenv test --data OTHER.csv``."""
    path = state.get("data_path", "the data")
    columns, expected = list(state["columns"]), list(trained["columns"])
    if len(columns) != len(expected):
        raise DataError(
            f"{path}: has {len(columns)} feature columns; the model was trained on "
            f"{len(expected)} ({', '.join(expected[:8])}{', ...' if len(expected) > 8 else ''})"
        )
    if columns != expected:
        differ = next(i for i, (a, b) in enumerate(zip(columns, expected, strict=True)) if a != b)
        raise DataError(
            f"{path}: feature column {differ + 1} is {columns[differ]!r}; the model was trained "
            f"with {expected[differ]!r} there"
        )
    labels, known = list(state["label_values"]), list(trained["label_values"])
    if labels != known:
        raise DataError(
            f"{path}: labels {', '.join(map(repr, labels))}; the model was trained on "
            f"{', '.join(map(repr, known))}"
        )


@register_dataset("tabular-csv", provides=("in_features",))
def tabular_csv(
    seed: int,
    data: str = "",
    target: str = "",
    no_header: bool = False,
    test_size: float = 0.2,
    val_size: float = 0.1,
    missing: MissingPolicy = "error",
    drop_constant: bool = False,
    na_values: str = DEFAULT_NA_VALUES,
    save_split: str = "",
    save_split_force: bool = False,
    folds: int = 0,
    fold: int = 0,
    cv_repeat: int = 0,
    scaler: ScalerName = "standard",
) -> DataBundle:
    """A CSV of numeric features and a two-valued label (the last column unless --target).
    ``val_size`` of all rows (stratified, out of the non-test rows) is the validation split;
    with 0 there is none (``val`` is None): the test rows are never used for selection.
    ``folds``/``fold``/``cv_repeat`` select a cross-validation fold as the test rows.
    ``scaler`` (standard, robust, quantile) is fitted on the training rows only."""
    split = load_split(
        data,
        seed,
        target,
        no_header,
        test_size,
        val_size,
        missing,
        drop_constant,
        na_values,
        folds,
        fold,
        cv_repeat,
        save_split,
        save_split_force,
        scaler,
    )
    t = split.table

    def pack(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.tensor(split.scaled(rows), dtype=torch.float32)
        return x, torch.tensor(t.labels[rows], dtype=torch.float32)

    mapping = ", ".join(f"{v!r} -> {i}" for i, v in enumerate(t.label_values))
    state = split.state()
    warning = split.scaling_warning()  # printed with the other info lines when training starts
    return DataBundle(
        train=pack(split.train),
        val=pack(split.val) if len(split.val) else None,
        test=pack(split.test),
        model_kwargs={"in_features": len(t.columns)},
        info={
            "name": t.path.name,
            "sizes": split.sizes(),
            "labels": mapping,
            "dropped_lines": len(t.dropped_rows),
            "data_path": state["data_path"],
            "data_sha256": state["data_sha256"],
            **({"scaler": scaler} if scaler != "standard" else {}),
            **({"warning": warning} if warning else {}),
        },
        state=state,
    )
