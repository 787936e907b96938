"""Splits: k-fold test rows disjoint, covering and stratified; the scikit-learn data sets split
three ways (sizes, class proportions, seed) and scaled on their training rows only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlenv.data import DATASETS
from mlenv.data.splits import check_fraction, fold_indices
from mlenv.errors import ConfigError, DataError


def test_folds_are_disjoint_covering_stratified_and_set_by_seed_and_repeat() -> None:
    labels = np.array([0] * 30 + [1] * 20)
    tests = []
    for k in range(5):
        train, test = fold_indices(labels, 5, k, seed=0)
        assert not set(train) & set(test) and len(train) + len(test) == 50
        assert np.bincount(labels[test]).tolist() == [6, 4]  # 30 / 5 and 20 / 5
        tests.append(test)
    assert np.array_equal(np.sort(np.concatenate(tests)), np.arange(50))  # each row tested once
    assert np.array_equal(fold_indices(labels, 5, 2, seed=0)[1], tests[2])
    assert not np.array_equal(fold_indices(labels, 5, 2, seed=0, repeat=1)[1], tests[2])
    assert not np.array_equal(fold_indices(labels, 5, 2, seed=1)[1], tests[2])
    plain = [fold_indices(labels, 5, k, seed=0, stratify=False)[1] for k in range(5)]
    assert [len(t) for t in plain] == [10] * 5
    assert fold_indices(np.array([0, 1]), 2, 1, seed=0, stratify=False)[1].tolist() in ([0], [1])


def test_fold_and_fraction_errors_name_the_flag() -> None:
    labels = np.array([0, 1] * 5)
    with pytest.raises(ConfigError, match="--folds: accepts an integer >= 2, got 1"):
        fold_indices(labels, 1, 0, seed=0)
    with pytest.raises(ConfigError, match=r"--fold: accepts 0 \.\. 4, got 5"):
        fold_indices(labels, 5, 5, seed=0)
    with pytest.raises(DataError, match="11 folds need at least 11 rows; the data has 10"):
        fold_indices(labels, 11, 0, seed=0)
    with pytest.raises(ConfigError, match=r"--test-size: accepts a fraction in \(0, 1\), got 1.0"):
        check_fraction("test_size", 1.0, 1.0)
    with pytest.raises(ConfigError, match=r"--val-size: accepts a fraction in \(0, 0.5\)"):
        check_fraction("val_size", 0.0, 0.5)
    check_fraction("val_size", 0.0, 0.5, zero=True)  # zero allowed: no validation
    check_fraction("val_size", 0.499, 0.5)


def row_ids(x: torch.Tensor, lookup: dict[bytes, int]) -> list[int]:
    return [lookup[row.numpy().astype(np.float64).tobytes()] for row in x]


def test_digits_split_three_ways_stratified_and_seeded() -> None:
    from sklearn.datasets import load_digits

    data = load_digits()  # 1,797 distinct rows
    lookup = {row.tobytes(): i for i, row in enumerate(data.data)}
    b = DATASETS.create("digits", seed=0, normalize="none")
    # test: ceil(0.2 * 1797) = 360; validation: ceil(0.1 / 0.8 * 1437) = 180 of the other 1437
    assert b.info["sizes"] == [1257, 180, 360]
    ids = [row_ids(part[0], lookup) for part in (b.train, b.val, b.test)]
    assert sorted(i for part in ids for i in part) == list(range(1797))  # disjoint, covering
    counts = np.bincount(data.target)
    for part, size in zip(ids[1:], (180, 360), strict=True):
        got = np.bincount(data.target[part], minlength=10)
        assert np.abs(got - counts * size / 1797).max() <= 1.0  # each class's share kept
    again = DATASETS.create("digits", seed=0, normalize="none")
    assert row_ids(again.test[0], lookup) == ids[2]
    other = DATASETS.create("digits", seed=1, normalize="none")
    assert row_ids(other.test[0], lookup) != ids[2] and row_ids(other.val[0], lookup) != ids[1]


def test_scaling_is_fitted_on_the_training_rows_only() -> None:
    b = DATASETS.create("breast-cancer", seed=0)
    x = b.train[0].double()
    assert x.mean(0).abs().max() < 1e-5 and (x.std(0, unbiased=False) - 1).abs().max() < 1e-5
    assert b.test[0].double().mean(0).abs().max() > 0.05  # other rows: the training centre
    unit = DATASETS.create("digits", seed=0, normalize="unit")
    assert float(unit.train[0].min()) == 0.0 and float(unit.train[0].max()) == 1.0
    with pytest.raises(ConfigError, match="--normalize"):
        DATASETS.create("digits", seed=0, normalize="minmax")
