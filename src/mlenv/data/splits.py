"""Splits shared by the data sets: the check of a split fraction, stratified k-fold."""

from __future__ import annotations

import numpy as np

from mlenv.errors import ConfigError, DataError


def check_fraction(
    name: str, value: float, upper: float, zero: bool = False, why: str = ""
) -> None:
    """A ``ConfigError`` naming the flag (``--val-size`` for ``val_size``) unless ``value`` is in
    (0, upper), or [0, upper) with ``zero``; ``why`` says what sets ``upper``.

    >>> check_fraction("test_size", 1.5, 1.0)  # doctest: +SKIP
    ConfigError: --test-size: accepts a fraction in (0, 1), got 1.5
    """
    low = 0.0 if zero else np.nextafter(0.0, 1.0)
    if not low <= value < upper:
        flag = "--" + name.replace("_", "-")
        interval = f"{'[' if zero else '('}0, {upper:.4g})"
        because = f" with {why}" if why else ""
        none = "; 0: none" if zero else ""
        raise ConfigError(f"{flag}: accepts a fraction in {interval}{because}{none}, got {value}")


def fold_indices(
    labels: np.ndarray, folds: int, fold: int, seed: int, repeat: int = 0, stratify: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices of ``fold`` of a shuffled (stratified) ``folds``-fold split.
    The shuffle depends on ``seed`` and ``repeat``, so two groups with the same seed, folds and
    repeats see the same rows: their results pair up."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if folds < 2:
        raise ConfigError(f"--folds: accepts an integer >= 2, got {folds}")
    if not 0 <= fold < folds:
        raise ConfigError(f"--fold: accepts 0 .. {folds - 1}, got {fold}")
    if repeat < 0:
        raise ConfigError(f"--cv-repeat: accepts an integer >= 0, got {repeat}")
    if folds > len(labels):
        raise DataError(
            f"--folds: {folds} folds need at least {folds} rows; the data has {len(labels)}"
        )
    splitter_cls = StratifiedKFold if stratify else KFold
    splitter = splitter_cls(n_splits=folds, shuffle=True, random_state=seed * 7919 + repeat)
    train, test = list(splitter.split(np.zeros(len(labels)), labels))[fold]
    return np.sort(train), np.sort(test)
