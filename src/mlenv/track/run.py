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
    """Where one training run writes. Every file is written to a temporary name then renamed.

    ``Run(path)`` only names the folder; ``RunSession`` (track/session.py) creates or reopens it,
    records the run in the store, and closes everything with the run's final status.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).absolute()
        self._writer: Any = None
        self.purge_step: int | None = None  # set on resume: TensorBoard drops later events
        self.store: Any = None  # the experiment store, when the run is recorded in one
        self.trackers: list[Any] = []  # optional W&B / MLflow writers

    @classmethod
    def plan(cls, runs_dir: str | Path, experiment: str) -> Run:
        """A new run's folder name (not created yet: the session creates it)."""
        return cls(Path(runs_dir) / experiment / new_run_id())

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    @property
    def id(self) -> str:
        return self.path.name

    # -- files ----------------------------------------------------------------------------------
    def write_text(self, name: str, text: str) -> Path:
        target = self.path / name
        atomic_write_bytes(target, text.encode())
        return target

    def write_config(self, yaml_text: str) -> Path:
        return self.write_text("config.yaml", yaml_text)

    def read_summary(self) -> dict[str, Any]:
        path = self.path / "summary.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def write_summary(self, summary: dict[str, Any]) -> Path:
        summary = {"run_id": self.id, **{k: v for k, v in summary.items() if k != "run_id"}}
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

    # -- TensorBoard, the store, trackers ---------------------------------------------------------
    @property
    def writer(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(
                log_dir=str(self.path / "tensorboard"), purge_step=self.purge_step
            )
        return self._writer

    def log_steps(self, rows: list[tuple[str, float, int]]) -> None:
        """Per-optimizer-step values ``(name, value, step)``: TensorBoard ``step/<name>`` and the
        store's ``step/<name>`` rows."""
        for name, value, step in rows:
            self.writer.add_scalar(f"step/{name}", value, step)
        if self.store is not None:
            self.store.log_step_metrics(self.id, [(step, f"step/{n}", v) for n, v, step in rows])

    def log_epoch(self, metrics: dict[str, Any], epoch: int, global_step: int) -> None:
        """An epoch's metrics: TensorBoard ``epoch/*`` at the optimizer step the epoch ended on
        (one x axis for step and epoch values, and one purge step on resume), the store's rows
        at step = epoch, and any tracker."""
        numbers = {
            k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and k != "epoch"
        }
        for name, value in numbers.items():
            self.writer.add_scalar(f"epoch/{name}", value, global_step)
        self.writer.flush()
        if self.store is not None:
            self.store.log_metrics(self.id, epoch, numbers)
        for tracker in self.trackers:
            tracker.log(numbers, epoch)

    def close(self) -> None:
        """Close trackers and TensorBoard; safe to call more than once."""
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            try:
                tracker.close()
            except Exception as exc:  # a tracker's failure must not hide the run's own status
                print(f"mlenv: warning: closing {type(tracker).__name__} failed: {exc}")
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
