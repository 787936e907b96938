"""Tabular preprocessing, fitted on the training rows only: imputation, the three scalers, label
order, constant columns, the seeded validation carve, the leakage warning, short rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlenv.data.tabular import TabularSplit, load_split, read_for_prediction, read_table
from mlenv.errors import DataError


def write(tmp: Path, lines: list[str], name: str = "d.csv", header: str = "a,b,y") -> str:
    path = tmp / name
    path.write_text("\n".join([header, *lines]) + "\n")
    return str(path)


def skewed_rows(n: int = 60) -> list[str]:
    """``a`` = i (even spacing), ``b`` = i**2 / 10 (skewed: mean and median differ), every 7th
    ``b`` missing; label i % 2."""
    return [f"{i},{'' if i % 7 == 3 else f'{i * i / 10:g}'},{i % 2}" for i in range(n)]


def test_missing_cells_get_the_training_rows_mean_in_every_split(tmp_path: Path) -> None:
    path = write(tmp_path, skewed_rows())
    split = load_split(path, seed=0, missing="mean")
    t = split.table
    b_train = [t.features[r, 1] for r in split.train if not np.isnan(t.features[r, 1])]
    assert split.impute_mean[1] == pytest.approx(sum(b_train) / len(b_train), rel=1e-12)
    # the imputed training column keeps that mean, so an imputed cell scales to exactly 0
    for rows in (split.train, split.val, split.test):
        missing = rows[np.isnan(t.features[rows, 1])]
        assert len(missing) and np.abs(split.scaled(missing)[:, 1]).max() < 1e-12
    state = {**split.state(), "missing": "drop"}  # a model trained without imputation
    new = write(tmp_path, ["1,,0", "2,3,1"], "new.csv")
    with pytest.raises(DataError, match="row 2, column 'b': missing value"):
        read_for_prediction(new, state, no_header=False)
    scaled, _, _ = read_for_prediction(new, split.state(), no_header=False)
    assert abs(scaled[0, 1]) < 1e-12


def test_robust_and_quantile_scalers_come_from_the_training_rows(tmp_path: Path) -> None:
    path = write(tmp_path, skewed_rows(200))
    robust = load_split(path, seed=0, missing="mean", scaler="robust")
    filled = robust.table.features[robust.train].copy()
    filled[np.isnan(filled)] = np.take(robust.impute_mean, np.where(np.isnan(filled))[1])
    q25, q50, q75 = np.percentile(filled, [25, 50, 75], axis=0)
    np.testing.assert_allclose(robust.scale_mean, q50, rtol=1e-12)  # the median
    np.testing.assert_allclose(robust.scale_scale, q75 - q25, rtol=1e-12)  # the IQR
    quantile = load_split(path, seed=0, missing="mean", scaler="quantile")
    z = quantile.scaled(quantile.train)[:, 0]  # a: evenly spaced, through a standard normal
    assert abs(np.median(z)) < 0.02 and z.min() < -2.5 and z.max() > 2.5
    assert abs(z.std() - 1.0) < 0.25


def test_numeric_labels_in_numeric_order_and_a_single_row_label(tmp_path: Path) -> None:
    lines = [f"{i},{i * 3 % 7},{[2, 10][i % 2]}" for i in range(8)]
    table = read_table(write(tmp_path, lines))
    assert table.label_mapping() == {"2": 0, "10": 1}  # text order would put "10" first
    assert table.labels.tolist() == [0, 1] * 4
    lonely = write(tmp_path, [*lines[:6:2], "7,1,10"], "lonely.csv")
    with pytest.raises(DataError, match="label '10' has 1 row; a stratified split needs 2"):
        load_split(lonely, seed=0, test_size=0.25, val_size=0.0)


def test_a_column_constant_apart_from_missing_cells_is_constant(tmp_path: Path) -> None:
    path = write(tmp_path, ["1,5,yes", "2,,no", "3,5,yes", "4,5,no"])
    with pytest.raises(DataError, match="column 'b' is constant \\(every row is 5\\)"):
        read_table(path, missing="mean")
    kept = read_table(path, missing="mean", drop_constant=True)
    assert kept.columns == ["a"] and kept.features[:, 0].tolist() == [1, 2, 3, 4]


def test_a_short_row_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, ["1,2,yes", "3,no", "5,6,yes"])
    with pytest.raises(DataError, match="row 3 has 2 fields; the first line has 3"):
        read_table(path)


def test_folds_size_the_validation_split_from_the_other_rows(tmp_path: Path) -> None:
    lines = [f"{i},{i * 7 % 100},{i % 2}" for i in range(100)]
    split = load_split(write(tmp_path, lines), seed=0, folds=5, fold=0, val_size=0.1)
    # 20 test rows; 0.1 of all rows = 10 validation rows out of the other 80
    assert split.sizes() == {"train": 70, "val": 10, "test": 20}


def test_the_validation_carve_follows_the_seed(tmp_path: Path) -> None:
    """The folds' shuffle is seeded with seed * 7919 + repeat: seed 0, repeat 7919 and seed 1,
    repeat 0 test the same rows, and the validation rows must still follow the seed."""
    path = write(tmp_path, [f"{i},{i * 7 % 100},{i % 2}" for i in range(100)])
    a = load_split(path, seed=0, folds=5, fold=1, cv_repeat=7919, val_size=0.2)
    b = load_split(path, seed=1, folds=5, fold=1, cv_repeat=0, val_size=0.2)
    assert np.array_equal(a.test, b.test) and not np.array_equal(a.val, b.val)
    assert np.bincount(a.table.labels[a.val]).tolist() == [10, 10]  # stratified


def test_the_leakage_warning_counts_against_the_test_rows(tmp_path: Path) -> None:
    """One of 20 test rows repeats a training row (5%, above the 2% threshold of the test
    rows; below 2% of the 80 training rows)."""
    lines = [f"{i},{i * 7 % 100},{i % 2}" for i in range(100)]
    lines[99] = lines[1]  # the same features (and label) as row 1
    table = read_table(write(tmp_path, lines))
    ones, zeros = np.ones(2), np.zeros(2)
    train, test = np.arange(80), np.arange(80, 100)
    leaky = TabularSplit(table, train, np.arange(0), test, zeros, zeros, ones)
    warning = leaky.scaling_warning()
    assert warning is not None and "1 of 20 test rows repeat a training row" in warning
    clean = TabularSplit(table, np.arange(2, 80), np.arange(0), test, zeros, zeros, ones)
    assert clean.scaling_warning() is None or "repeat" not in clean.scaling_warning()


def test_a_header_of_positions_from_1_is_a_header(tmp_path: Path) -> None:
    """1,2,3 (R's and spreadsheets' column numbers) names the columns, as 0,1,2 does."""
    # each name is also a value of its column below (1, 2 and the label 3): only the
    # positions tell it from a data row
    lines = [f"{i},{i * 7 % 11},{3 + i % 2}" for i in range(10)]
    table = read_table(write(tmp_path, lines, header="1,2,3"))
    assert table.columns == ["1", "2"] and table.target == "3" and len(table.labels) == 10
