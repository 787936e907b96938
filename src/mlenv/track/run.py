"""A run folder: ``runs/<experiment>/<run-id>/`` with config, metrics, events, plots, checkpoints."""

from __future__ import annotations

import csv
import io
import json
import math
import secrets
import time
from pathlib import Path
from typing import Any

from mlenv.train.checkpoint import atomic_write_bytes


def new_run_id() -> str:
    """Sortable by start time; the random suffix keeps runs started in the same second (in one
    process or many) apart."""
    return time.strftime("%Y%m%d-%H%M%S") + f"-{secrets.token_hex(3)}"


class Run:
    """Where one training run writes. Every file is written to a temporary name then renamed."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.checkpoints = self.path / "checkpoints"
        self.plots = self.path / "plots"
        self._writer: Any = None
        self._step_buffer: list[tuple[str, float, int]] = []
        self.config_text: str | None = None  # written by start()
        self.store: Any = None  # the experiment store, when the run is recorded in one
        self.trackers: list[Any] = []  # optional W&B / MLflow writers

    @classmethod
    def create(cls, runs_dir: str | Path, experiment: str, run_id: str | None = None) -> Run:
        """A new, empty run folder (never an existing run's)."""
        while True:
            path = Path(runs_dir) / experiment / (run_id or new_run_id())
            try:
                path.mkdir(parents=True, exist_ok=False)
                return cls(path)
            except FileExistsError:
                if run_id is not None:
                    raise

    # -- files ----------------------------------------------------------------------------------
    def write_text(self, name: str, text: str) -> Path:
        target = self.path / name
        atomic_write_bytes(target, text.encode())
        return target

    def write_config(self, yaml_text: str) -> Path:
        return self.write_text("config.yaml", yaml_text)

    def start(self) -> None:
        """Called by the Trainer once set-up (and any resume) succeeded: only then is the folder
        changed, so a bad checkpoint or configuration leaves an existing run untouched."""
        if self.config_text is not None:
            self.write_config(self.config_text)

    def write_summary(self, summary: dict[str, Any]) -> Path:
        return self.write_text("summary.json", json.dumps(_plain(summary), indent=2) + "\n")

    def write_metrics(self, history: list[dict[str, Any]]) -> Path:
        """The whole per-epoch history as CSV (rewritten each epoch, so a resume stays true)."""
        columns: list[str] = []
        for row in history:
            columns.extend(k for k in row if k not in columns)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        for row in history:
            writer.writerow({k: _fmt(v) for k, v in row.items()})
        return self.write_text("metrics.csv", out.getvalue())

    # -- TensorBoard ----------------------------------------------------------------------------
    @property
    def writer(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.path / "tensorboard"))
        return self._writer

    def log_step(self, name: str, value: float, step: int) -> None:
        """Buffered: written at the epoch's end, so logging costs no time inside the loop."""
        self._step_buffer.append((name, value, step))

    def log_epoch(self, metrics: dict[str, Any], epoch: int) -> None:
        """The epoch's metrics and the buffered per-step values: to TensorBoard (``epoch/*``,
        ``step/*``), to the store (plain names at step = epoch; ``step/*`` at the optimizer
        step) and to any tracker."""
        for name, value, step in self._step_buffer:
            self.writer.add_scalar(f"step/{name}", value, step)
        if self.store is not None and self._step_buffer:
            self.store.log_step_metrics(
                self.id, [(step, f"step/{name}", value) for name, value, step in self._step_buffer]
            )
        self._step_buffer.clear()
        numbers = {
            k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and k != "epoch"
        }
        for name, value in numbers.items():
            self.writer.add_scalar(f"epoch/{name}", value, epoch)
        self.writer.flush()
        if self.store is not None:
            self.store.log_metrics(self.id, epoch, numbers)
        for tracker in self.trackers:
            tracker.log(numbers, epoch)

    @property
    def id(self) -> str:
        return self.path.name

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _fmt(value: Any) -> Any:
    return f"{value:.8g}" if isinstance(value, float) else value


def _plain(value: Any) -> Any:
    """JSON-safe: non-finite floats become strings rather than invalid JSON."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        return _plain(value.item())
    return value
