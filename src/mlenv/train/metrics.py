"""Epoch-level metrics that need every prediction at once (AUC, log loss, F1)."""

from __future__ import annotations

import numpy as np


def binary_metrics(probability: np.ndarray, target: np.ndarray, threshold: float = 0.5) -> dict:
    """Accuracy at ``threshold``, precision, recall, F1, ROC AUC and log loss.

    >>> m = binary_metrics(np.array([0.9, 0.2, 0.6, 0.4]), np.array([1, 0, 0, 1]))
    >>> round(m["acc"], 2), round(m["auc"], 2)
    (0.5, 0.75)
    """
    from sklearn import metrics

    target = target.astype(int)
    predicted = (probability > threshold).astype(int)
    both = len(np.unique(target)) == 2
    return {
        "acc": float((predicted == target).mean()),
        "precision": float(metrics.precision_score(target, predicted, zero_division=0)),
        "recall": float(metrics.recall_score(target, predicted, zero_division=0)),
        "f1": float(metrics.f1_score(target, predicted, zero_division=0)),
        "auc": float(metrics.roc_auc_score(target, probability)) if both else float("nan"),
        "log_loss": float(
            metrics.log_loss(target, np.clip(probability, 1e-15, 1 - 1e-15), labels=[0, 1])
        ),
    }
