"""Input checks shared by the estimators, with messages in the user's words."""

from __future__ import annotations

from typing import Any

import numpy as np


def as_2d(X: Any, name: str = "X") -> np.ndarray:
    """A finite float64 array of shape (n_samples, n_features)."""
    array = np.asarray(X, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(
            f"{name}: expected a 2-D array (n_samples, n_features), got {array.ndim}-D"
        )
    if array.shape[0] == 0:
        raise ValueError(f"{name}: no samples")
    if not np.isfinite(array).all():
        row = int(np.argwhere(~np.isfinite(array))[0, 0])
        raise ValueError(f"{name}: row {row} holds NaN or infinity")
    return array


def as_1d(x: Any, name: str = "x") -> np.ndarray:
    array = np.asarray(x, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError(f"{name}: no samples")
    if not np.isfinite(array).all():
        raise ValueError(
            f"{name}: index {int(np.argmin(np.isfinite(array)))} holds NaN or infinity"
        )
    return array


def check_fitted(estimator: Any, attribute: str) -> None:
    if not hasattr(estimator, attribute):
        raise AttributeError(f"{type(estimator).__name__} is not fitted yet; call fit first")


def cholesky(cov: np.ndarray, what: str) -> np.ndarray:
    """Lower Cholesky factor, or a clear error for a covariance that is not positive definite."""
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise ValueError(
            f"{what} is singular or not positive definite (e.g. a feature is constant, or a "
            "component collapsed onto too few points); raise reg_covar to add to its diagonal"
        ) from None
