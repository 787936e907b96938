"""Small real data sets that ship inside scikit-learn (no download): digits, breast cancer."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from mlenv.data import DataBundle, register_dataset
from mlenv.data.splits import check_fraction
from mlenv.errors import ConfigError, DataError


def split_three(
    x: np.ndarray,
    y: np.ndarray,
    val_size: float,
    test_size: float,
    seed: int,
    folds: int = 0,
    fold: int = 0,
    cv_repeat: int = 0,
):
    """Stratified train/val/test split; ``val_size`` is a fraction of the whole. With ``folds``,
    fold ``fold`` is the test split. Fractions out of range are a ``ConfigError`` naming the flag."""
    check_fraction("test_size", test_size, 1.0)
    try:
        if folds:
            from mlenv.data.splits import fold_indices

            rest, test = fold_indices(y, folds, fold, seed, cv_repeat)
            x_rest, x_test, y_rest, y_test = x[rest], x[test], y[rest], y[test]
            test_size = len(test) / len(y)
            check_fraction("val_size", val_size, 1 - test_size, why=f"--folds {folds}")
        else:
            check_fraction("val_size", val_size, 1 - test_size, why=f"--test-size {test_size}")
            x_rest, x_test, y_rest, y_test = train_test_split(
                x, y, test_size=test_size, random_state=seed, stratify=y
            )
        x_train, x_val, y_train, y_val = train_test_split(
            x_rest, y_rest, test_size=val_size / (1 - test_size), random_state=seed, stratify=y_rest
        )
    except ValueError as exc:  # a split too small to hold every class
        raise DataError(
            f"cannot split {len(y)} rows with --val-size {val_size} and --test-size {test_size} "
            f"({exc})"
        ) from None
    return (x_train, y_train), (x_val, y_val), (x_test, y_test)


def _bundle(x, y, seed, val_size, test_size, normalize, name, folding) -> DataBundle:
    """Split (``folding`` = (folds, fold, cv_repeat)), normalise on the training rows, pack."""
    if normalize not in ("standard", "unit", "none"):
        raise ConfigError(f"--normalize: accepts standard, unit or none, got {normalize!r}")
    (xtr, ytr), (xva, yva), (xte, yte) = split_three(x, y, val_size, test_size, seed, *folding)
    if normalize == "standard":
        scaler = StandardScaler().fit(xtr)  # fitted on the training split only
        xtr, xva, xte = (scaler.transform(a) for a in (xtr, xva, xte))
    elif normalize == "unit":
        lo, hi = xtr.min(), xtr.max()
        xtr, xva, xte = ((a - lo) / (hi - lo) for a in (xtr, xva, xte))

    def pack(a, b):
        return torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.long)

    classes = len(np.unique(y))
    return DataBundle(
        train=pack(xtr, ytr),
        val=pack(xva, yva),
        test=pack(xte, yte),
        model_kwargs={"in_features": x.shape[1], "out_features": classes},
        info={"name": name, "sizes": [len(xtr), len(xva), len(xte)], "classes": classes},
    )


@register_dataset("digits", provides=("in_features", "out_features"))
def digits(
    seed: int,
    val_size: float = 0.1,
    test_size: float = 0.2,
    normalize: Literal["standard", "unit", "none"] = "standard",
    folds: int = 0,
    fold: int = 0,
    cv_repeat: int = 0,
) -> DataBundle:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), flattened to 64 features."""
    from sklearn.datasets import load_digits

    data = load_digits()
    folding = (folds, fold, cv_repeat)
    return _bundle(data.data, data.target, seed, val_size, test_size, normalize, "digits", folding)


@register_dataset("breast-cancer", provides=("in_features", "out_features"))
def breast_cancer(
    seed: int,
    val_size: float = 0.1,
    test_size: float = 0.2,
    normalize: Literal["standard", "unit", "none"] = "standard",
    folds: int = 0,
    fold: int = 0,
    cv_repeat: int = 0,
) -> DataBundle:
    """scikit-learn's Wisconsin breast cancer data (569 rows, 30 features, 2 classes)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    folding = (folds, fold, cv_repeat)
    return _bundle(
        data.data, data.target, seed, val_size, test_size, normalize, "breast-cancer", folding
    )
