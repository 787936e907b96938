"""The short fixed set of things that react to an epoch's metrics: early stopping and best-k
checkpoint retention. Both keep their state as plain data for the checkpoint."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def is_better(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


class EarlyStopping:
    """Stop after ``patience`` epochs without an improvement larger than ``min_delta``.

    Like Keras and Lightning: with ``patience=2`` the run stops at the second epoch in a row
    without an improvement.

    >>> es = EarlyStopping(patience=1, mode="min")
    >>> [es.update(v) for v in (1.0, 0.9, 0.95, 0.97)]
    [None, None, 'no improvement in val_loss for 1 epochs (best 0.9 at epoch 2)', None]
    """

    def __init__(
        self, patience: int, mode: str = "min", min_delta: float = 0.0, monitor: str = "val_loss"
    ) -> None:
        self.patience = patience
        self.mode = mode
        self.min_delta = min_delta
        self.monitor = monitor
        self.best: float | None = None
        self.best_epoch = 0
        self.bad_epochs = 0
        self.epochs_seen = 0

    def update(self, value: float) -> str | None:
        """Feed one epoch's metric; returns the reason to stop, or ``None``."""
        self.epochs_seen += 1
        if is_better(value, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.bad_epochs = value, self.epochs_seen, 0
            return None
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            return (
                f"no improvement in {self.monitor} for {self.patience} epochs "
                f"(best {self.best:.6g} at epoch {self.best_epoch})"
            )
        return None

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("best", "best_epoch", "bad_epochs", "epochs_seen")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class TopKCheckpoints:
    """Keep the ``k`` best checkpoints by the monitored metric; never delete the current best."""

    def __init__(self, directory: Path, k: int, monitor: str, mode: str) -> None:
        self.directory = directory
        self.k = k
        self.monitor = monitor
        self.mode = mode
        self.kept: list[tuple[float, str]] = []  # (metric, file name), best first

    def _sorted(self, items: list[tuple[float, str]]) -> list[tuple[float, str]]:
        return sorted(items, key=lambda item: item[0], reverse=self.mode == "max")

    def rank(self, epoch: int, value: float) -> tuple[str, list[str], bool] | None:
        """Enter ``value`` into the kept list when it ranks in the top k: returns the file name
        to write, the names to delete and whether it is the new best; ``None`` when it does not
        rank. Call ``write`` with the checkpoint's bytes afterwards."""
        if self.k == 0 or not math.isfinite(value):
            return None
        name = f"epoch={epoch:04d}-{self.monitor}={value:.6g}.pt"
        ranked = self._sorted([*self.kept, (value, name)])
        if (value, name) not in ranked[: self.k]:
            return None
        self.kept = ranked[: self.k]
        return name, [dropped for _, dropped in ranked[self.k :]], self.kept[0][1] == name

    def write(self, ranked: tuple[str, list[str], bool], data: bytes) -> None:
        from mlenv.train.checkpoint import atomic_write_bytes

        name, dropped, is_best = ranked
        atomic_write_bytes(self.directory / name, data)
        for old in dropped:
            (self.directory / old).unlink(missing_ok=True)
        if is_best:
            atomic_write_bytes(self.directory / "best.pt", data)

    def offer(self, epoch: int, value: float, data: bytes) -> bool:
        """Write ``data`` when ``value`` ranks in the top k; returns whether it is the new best."""
        ranked = self.rank(epoch, value)
        if ranked is not None:
            self.write(ranked, data)
        return ranked is not None and ranked[2]

    def state_dict(self) -> dict[str, Any]:
        return {"kept": [[v, n] for v, n in self.kept]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kept = [(float(v), str(n)) for v, n in state["kept"]]
