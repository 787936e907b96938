"""Tabular CSV for binary classification: read, validate, map labels, split, scale.

Every problem in the file is an error naming the file, the row (as the line number in the file)
and the column, unless the user chose a policy (``missing="drop"|"mean"``). The scaler is fitted on
the training rows only; everything prediction needs to repeat the preprocessing (columns, label
mapping, imputation means, scaler mean and scale) is kept in ``DataBundle.state`` and saved in
every checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from mlenv.data import DataBundle, register_dataset
from mlenv.errors import DataError

MissingPolicy = Literal["error", "drop", "mean"]
NA_MARKERS = {"", "na", "nan", "null", "none", "?", "n/a"}


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
) -> TabularTable:
    """Read and validate a CSV for binary classification (see the module docstring)."""
    path = Path(path)
    frame = _read_csv(path, no_header)
    first_line = 1 if no_header else 2
    if len(frame) == 0:
        raise DataError(f"{path}: no data rows")
    if len(frame) == 1:
        raise DataError(f"{path}: only one data row (line {first_line}); a split needs more")
    if frame.shape[1] < 2:
        raise DataError(f"{path}: needs at least one feature column and a target column")
    target_name = _target_column(frame, target, path)
    lines = np.arange(first_line, first_line + len(frame))

    raw_labels = frame[target_name].str.strip()
    empty = raw_labels.str.lower().isin(NA_MARKERS).to_numpy()
    if empty.any():
        line = int(lines[empty.argmax()])
        raise DataError(f"{path}: row {line}, column {target_name!r}: missing label")
    distinct = _sort_labels(sorted(set(raw_labels)))
    if len(distinct) != 2:
        shown = ", ".join(distinct[:10]) + (", ..." if len(distinct) > 10 else "")
        raise DataError(
            f"{path}: column {target_name!r} has {len(distinct)} distinct label"
            f"{'s' if len(distinct) != 1 else ''} ({shown}); binary classification needs exactly 2"
        )

    columns = [c for c in frame.columns if c != target_name]
    features, missing_mask = _numeric_columns(frame, columns, lines, path)

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
        path, features, labels, lines, columns, target_name, distinct, dropped, missing
    )


def _numeric_columns(
    frame: pd.DataFrame, columns: list[str], lines: np.ndarray, path: Path
) -> tuple[np.ndarray, np.ndarray]:
    """The named text columns as float64 (NaN where missing) and the mask of missing cells;
    a non-numeric or infinite cell is an error naming its row and column."""
    features = np.empty((len(frame), len(columns)), dtype=np.float64)
    missing_mask = np.zeros_like(features, dtype=bool)
    for j, column in enumerate(columns):
        text = frame[column].str.strip()
        is_missing = text.str.lower().isin(NA_MARKERS).to_numpy()
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


def _read_csv(path: Path, no_header: bool) -> pd.DataFrame:
    if not str(path) or not path.is_file():
        raise DataError(f"{path}: no such file" if str(path) else "give the CSV with --data FILE")
    try:
        frame = pd.read_csv(
            path,
            header=None if no_header else 0,
            dtype=str,
            keep_default_na=False,
            skipinitialspace=True,
        )
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty (no rows)") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: not a valid CSV ({str(exc).strip()})") from None
    if no_header:
        frame.columns = [f"x{i}" for i in range(frame.shape[1])]
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def read_for_prediction(
    path: str | Path, state: dict[str, Any], no_header: bool
) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """New rows for a trained model: the training columns (by name when there is a header),
    imputed and scaled exactly as in training. Returns (scaled features, line numbers, the
    original labels if the file has the target column)."""
    path = Path(path)
    frame = _read_csv(path, no_header)
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
    features, missing_mask = _numeric_columns(frame, columns, lines, path)
    if missing_mask.any() and state.get("missing") != "mean":
        i, j = np.argwhere(missing_mask)[0]
        raise DataError(f"{path}: row {lines[i]}, column {columns[j]!r}: missing value")
    impute = state["impute_mean"].numpy()
    filled = np.where(np.isnan(features), impute, features)
    scaled = (filled - state["scale_mean"].numpy()) / state["scale_scale"].numpy()
    labels = frame[target].str.strip().tolist() if target in frame.columns else None
    return scaled, lines, labels


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
    val: np.ndarray
    test: np.ndarray
    impute_mean: np.ndarray  # (F,) training means used for missing values
    scale_mean: np.ndarray  # (F,) StandardScaler.mean_
    scale_scale: np.ndarray  # (F,) StandardScaler.scale_

    def transform(self, features: np.ndarray) -> np.ndarray:
        filled = np.where(np.isnan(features), self.impute_mean, features)
        return (filled - self.scale_mean) / self.scale_scale

    def scaled(self, rows: np.ndarray) -> np.ndarray:
        return self.transform(self.table.features[rows])

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
            "missing": t.missing,
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
) -> TabularSplit:
    """Stratified train/(val)/test split with ``seed`` (or, with ``folds``, fold ``fold`` as the
    test rows); scaler and imputation from the training rows only."""
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

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
        raise DataError(f"{table.path}: cannot split {len(index)} rows: {exc}") from None
    train, val, test = np.sort(train), np.sort(val), np.sort(test)
    train_features = table.features[train]
    with np.errstate(all="ignore"):
        impute = np.nanmean(train_features, axis=0)
    if np.isnan(impute).any():
        j = int(np.isnan(impute).argmax())
        raise DataError(f"{table.path}: column {table.columns[j]!r} has no value in training rows")
    filled = np.where(np.isnan(train_features), impute, train_features)
    scaler = StandardScaler().fit(filled)  # the training rows only
    scale = np.where(scaler.scale_ == 0, 1.0, scaler.scale_)
    return TabularSplit(table, train, val, test, impute, scaler.mean_, scale)


def write_split(split: TabularSplit, directory: str | Path) -> Path:
    """The exact rows and scaled matrices as CSV, so another implementation gets identical data."""
    from mlenv.train.checkpoint import atomic_write_bytes

    directory = Path(directory)
    t = split.table
    for name, rows in (("train", split.train), ("val", split.val), ("test", split.test)):
        if len(rows) == 0:
            continue
        raw = pd.DataFrame(t.features[rows], columns=t.columns)
        raw.insert(0, "line", t.lines[rows])
        raw["label"] = t.labels[rows]
        scaled = pd.DataFrame(split.scaled(rows), columns=t.columns)
        scaled["label"] = t.labels[rows]
        atomic_write_bytes(directory / f"{name}.csv", raw.to_csv(index=False).encode())
        scaled_csv = scaled.to_csv(index=False, float_format="%.9g").encode()
        atomic_write_bytes(directory / f"{name}_scaled.csv", scaled_csv)
    meta = {
        "source": str(t.path),
        "target": t.target,
        "label_mapping": t.label_mapping(),
        "columns": t.columns,
        "scaler_mean": split.scale_mean.tolist(),
        "scaler_scale": split.scale_scale.tolist(),
        "impute_mean": split.impute_mean.tolist(),
        "sizes": {"train": len(split.train), "val": len(split.val), "test": len(split.test)},
        "dropped_lines": t.dropped_rows,
    }
    atomic_write_bytes(directory / "split.json", (json.dumps(meta, indent=2) + "\n").encode())
    return directory


def load_split(
    data: str,
    seed: int,
    target: str = "",
    no_header: bool = False,
    test_size: float = 0.2,
    val_size: float = 0.0,
    missing: MissingPolicy = "error",
    drop_constant: bool = False,
    folds: int = 0,
    fold: int = 0,
    cv_repeat: int = 0,
) -> TabularSplit:
    if not 0 < test_size < 1:
        raise DataError(f"test_size: accepts a fraction in (0, 1), got {test_size}")
    if not 0 <= val_size < 1 - test_size:
        raise DataError(f"val_size: accepts a fraction in [0, 1 - test_size), got {val_size}")
    table = read_table(data, target, no_header, missing, drop_constant)
    return split_table(table, test_size, val_size, seed, folds, fold, cv_repeat)


@register_dataset("tabular-csv", provides=("in_features",))
def tabular_csv(
    seed: int,
    data: str = "",
    target: str = "",
    no_header: bool = False,
    test_size: float = 0.2,
    val_size: float = 0.0,
    missing: MissingPolicy = "error",
    drop_constant: bool = False,
    save_split: str = "",
    folds: int = 0,
    fold: int = 0,
    cv_repeat: int = 0,
) -> DataBundle:
    """A CSV of numeric features and a two-valued label (the last column unless --target).
    ``folds``/``fold``/``cv_repeat`` select a cross-validation fold as the test rows."""
    split = load_split(
        data,
        seed,
        target,
        no_header,
        test_size,
        val_size,
        missing,
        drop_constant,
        folds,
        fold,
        cv_repeat,
    )
    t = split.table

    def pack(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.tensor(split.scaled(rows), dtype=torch.float32)
        return x, torch.tensor(t.labels[rows], dtype=torch.float32)

    if save_split:
        write_split(split, save_split)
    test = pack(split.test)
    mapping = ", ".join(f"{v!r} -> {i}" for i, v in enumerate(t.label_values))
    return DataBundle(
        train=pack(split.train),
        # with val_size 0 (the original's set-up) the test split is also the validation split
        val=pack(split.val) if len(split.val) else test,
        test=test,
        model_kwargs={"in_features": len(t.columns)},
        info={
            "name": t.path.name,
            "sizes": {"train": len(split.train), "val": len(split.val), "test": len(split.test)},
            "labels": mapping,
            "dropped_lines": len(t.dropped_rows),
        },
        state=split.state(),
    )
