"""The loop's state in one place: what a checkpoint saves and a resume restores.

Everything here is plain data (numbers, strings, lists, dicts and tensors), so
``torch.load(weights_only=True)`` reads it back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class EpochSums:
    """Sample-weighted running sums of per-batch means (Python floats: no tensor ops per step)."""

    totals: dict[str, float] = field(default_factory=dict)
    count: int = 0

    def add(self, values: dict[str, float], n: int) -> None:
        for key, value in values.items():
            self.totals[key] = self.totals.get(key, 0.0) + value * n
        self.count += n

    def means(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_{k}": v / max(self.count, 1) for k, v in self.totals.items()}


@dataclass
class TrainState:
    """Where the loop is and what it has accumulated.

    ``batch_in_epoch`` counts the batches of the current epoch already trained; inside an
    accumulation group (``batch_in_epoch % accumulate != 0``) the parameters hold pending
    gradients, which the checkpoint saves beside this state. ``group_loss``/``group_batches`` sum
    the micro-batch losses of the current group, so the logged loss of an optimizer step is the
    mean over its micro-batches. ``data_order`` is what a user's DataLoader needs to draw the same
    permutation again (the RNG states at the start of the epoch).
    """

    epoch: int = 0  # epochs completed
    global_step: int = 0  # optimizer steps taken
    batch_in_epoch: int = 0
    samples_in_epoch: int = 0
    train_seconds_in_epoch: float = 0.0
    group_loss: float = 0.0
    group_batches: int = 0
    sums: EpochSums = field(default_factory=EpochSums)
    history: list[dict[str, Any]] = field(default_factory=list)
    early_stopping: dict[str, Any] | None = None
    top_k: dict[str, Any] | None = None
    data_order: dict[str, Any] | None = None
    stop_reason: str = ""  # why the loop ended before its last epoch (early stopping)

    def state_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["history"] = [dict(row) for row in self.history]
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = {f.name for f in dataclasses.fields(self)}
        for key, value in state.items():
            if key not in names:
                continue
            if key == "sums":
                value = EpochSums(dict(value["totals"]), int(value["count"]))
            elif key == "history":
                value = [dict(row) for row in value]
            setattr(self, key, value)
