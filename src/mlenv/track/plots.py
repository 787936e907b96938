"""PNG plots a person opens: loss curves, learning-rate schedules. Written atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from mlenv.train.checkpoint import atomic_write_bytes


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def line_plot(
    series: dict[str, list[float]],
    path: str | Path,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    x: list[float] | None = None,
) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, values in series.items():
        ax.plot(x if x is not None else range(len(values)), values, label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    return save_figure(fig, path)


def plot_loss_curve(history: list[dict[str, Any]], path: str | Path) -> Path:
    """Train and validation loss (and every named term) per epoch."""
    epochs = [row["epoch"] for row in history]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    keys = [k for k in history[0] if k.endswith("loss") or "_loss_" in k] if history else []
    for key in keys:
        values = [row.get(key, float("nan")) for row in history]
        style = "-" if key.startswith("train") else "--"
        ax.plot(epochs, values, style, marker="o", markersize=3, label=key)
    ax.set(title="loss per epoch", xlabel="epoch", ylabel="loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_confusion(target: Any, predicted: Any, labels: list[str], path: str | Path) -> Path:
    """Counts of (true label, predicted label), with the original label values."""
    import numpy as np

    counts = np.zeros((2, 2), dtype=int)
    for t, p in zip(np.asarray(target).astype(int), np.asarray(predicted).astype(int), strict=True):
        counts[t, p] += 1
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(counts, cmap="Blues")
    for (i, j), value in np.ndenumerate(counts):
        ax.text(
            j,
            i,
            str(value),
            ha="center",
            va="center",
            color="white" if value > counts.max() / 2 else "black",
        )
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=labels,
        yticklabels=labels,
        xlabel="predicted",
        ylabel="true",
        title="confusion matrix (test)",
    )
    return save_figure(fig, path)


def plot_roc(target: Any, probability: Any, path: str | Path) -> Path:
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(target, probability)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot(fpr, tpr, label=f"AUC {roc_auc_score(target, probability):.4f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve (test)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
