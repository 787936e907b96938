"""Splits shared by the data sets: stratified k-fold for cross-validation."""

from __future__ import annotations

import numpy as np

from mlenv.errors import ConfigError


def fold_indices(
    labels: np.ndarray, folds: int, fold: int, seed: int, repeat: int = 0, stratify: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices of ``fold`` of a shuffled (stratified) ``folds``-fold split.
    The shuffle depends on ``seed`` and ``repeat``, so two groups with the same seed, folds and
    repeats see the same rows: their results pair up."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if folds < 2:
        raise ConfigError(f"folds: accepts an integer >= 2, got {folds}")
    if not 0 <= fold < folds:
        raise ConfigError(f"fold: accepts 0 .. {folds - 1}, got {fold}")
    splitter_cls = StratifiedKFold if stratify else KFold
    splitter = splitter_cls(n_splits=folds, shuffle=True, random_state=seed * 7919 + repeat)
    train, test = list(splitter.split(np.zeros(len(labels)), labels))[fold]
    return np.sort(train), np.sort(test)
