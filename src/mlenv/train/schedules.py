"""Learning-rate schedules with linear warmup, as closed forms of the optimizer-step count.

lr(step) = base_lr * warmup(step) * decay(step - warmup_steps) * plateau_factor

Every schedule is a pure function of the step, so a resumed run gets the same rates, and
``lr_at`` can draw the whole curve before training. Epoch-wise schedules (step, exponential) change
at epoch boundaries exactly like torch's StepLR/ExponentialLR stepped once per epoch; cosine, linear
and onecycle change every step. ``plateau`` reads the monitored metric at each epoch's end with
torch's ReduceLROnPlateau rules (relative threshold 1e-4, no cooldown).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from mlenv.config import TrainConfig
from mlenv.errors import ConfigError

DEFAULT_GAMMA = {"step": 0.1, "exponential": 0.95, "plateau": 0.1}
# torch's OneCycleLR defaults: 30% of the steps rising from lr/25, then down to lr/25/1e4.
ONECYCLE_PCT, ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 0.3, 25.0, 1e4


class LRSchedule:
    """Sets the optimizer's learning rate every optimizer step; see the module docstring."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        config: TrainConfig,
        steps_per_epoch: int,
    ) -> None:
        self.optimizer = optimizer
        self.kind = config.scheduler
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.total_steps = config.epochs * self.steps_per_epoch
        self.warmup_steps = config.warmup_steps or config.warmup_epochs * self.steps_per_epoch
        if self.kind == "onecycle" and self.warmup_steps:
            raise ConfigError("warmup_steps/warmup_epochs: onecycle has its own warmup phase")
        if self.warmup_steps >= self.total_steps and self.warmup_steps:
            raise ConfigError(
                f"warmup: {self.warmup_steps} warmup steps leave no training steps "
                f"(the run has {self.total_steps})"
            )
        self.start_factor = config.warmup_start_factor
        self.step_size = config.step_size
        self.gamma = config.gamma if config.gamma is not None else DEFAULT_GAMMA.get(self.kind, 0.1)
        self.min_lr = config.min_lr
        from mlenv.config import resolve_mode

        self.mode = resolve_mode(config.monitor, config.mode) if self.kind == "plateau" else "min"
        self.plateau_patience = config.plateau_patience
        self.base_lrs = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        for group, lr in zip(optimizer.param_groups, self.base_lrs, strict=True):
            group["initial_lr"] = lr
        self.step_count = 0
        self.plateau_factor = 1.0
        self.plateau_best: float | None = None
        self.plateau_bad_epochs = 0
        self._apply()

    # -- the closed form ------------------------------------------------------------------------
    def factor_at(self, step: int) -> float:
        """Multiplier of the base learning rate after ``step`` optimizer steps."""
        if self.kind == "onecycle":
            return self._onecycle(step)
        if step < self.warmup_steps:
            return self.start_factor + (1.0 - self.start_factor) * step / self.warmup_steps
        s = step - self.warmup_steps
        decay_steps = self.total_steps - self.warmup_steps
        if self.kind == "cosine":
            return _cosine(s, decay_steps)
        if self.kind == "linear":
            return 1.0 - min(s, decay_steps) / decay_steps
        if self.kind == "step":
            return self.gamma ** ((s // self.steps_per_epoch) // self.step_size)
        if self.kind == "exponential":
            return self.gamma ** (s // self.steps_per_epoch)
        return 1.0  # constant, plateau (its factor is applied separately)

    def lr_at(self, step: int, group: int = 0) -> float:
        base = self.base_lrs[group]
        factor = self.factor_at(step)
        if self.kind in ("cosine", "linear"):
            return (
                self.min_lr + (base - self.min_lr) * factor
                if step >= self.warmup_steps
                else (base * factor)
            )
        return base * factor * self.plateau_factor

    def _onecycle(self, step: int) -> float:
        # torch's OneCycleLR (cos annealing, two phases), written as a multiplier of max_lr.
        up_end = float(ONECYCLE_PCT * self.total_steps) - 1
        down_end = float(self.total_steps) - 1
        start, low = 1.0 / ONECYCLE_DIV, 1.0 / ONECYCLE_DIV / ONECYCLE_FINAL_DIV
        if step <= up_end:
            pct = step / up_end if up_end > 0 else 1.0
            return _cos_anneal(start, 1.0, pct)
        pct = (step - up_end) / (down_end - up_end)
        return _cos_anneal(1.0, low, min(pct, 1.0))

    # -- stepping -------------------------------------------------------------------------------
    def _apply(self) -> None:
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = self.lr_at(self.step_count, i)

    def step(self) -> None:
        """Call after every optimizer step."""
        self.step_count += 1
        self._apply()

    def epoch_end(self, metric: float | None) -> None:
        """Call after validation; only ``plateau`` reads the metric."""
        if self.kind != "plateau" or metric is None:
            return
        if self.plateau_best is None or self._improved(metric, self.plateau_best):
            self.plateau_best = metric
            self.plateau_bad_epochs = 0
        else:
            self.plateau_bad_epochs += 1
            if self.plateau_bad_epochs > self.plateau_patience:
                self.plateau_factor *= self.gamma
                self.plateau_bad_epochs = 0
        self._apply()

    def _improved(self, value: float, best: float) -> bool:
        if self.mode == "min":
            return value < best * (1 - 1e-4) if best >= 0 else value < best * (1 + 1e-4)
        return value > best * (1 + 1e-4) if best >= 0 else value > best * (1 - 1e-4)

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {
            "step_count": self.step_count,
            "plateau_factor": self.plateau_factor,
            "plateau_best": self.plateau_best,
            "plateau_bad_epochs": self.plateau_bad_epochs,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "warmup_steps": self.warmup_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved position; refused (ConfigError) when this schedule's rates differ from
        the saved one's on the steps both have (a resume with other ``epochs`` or
        ``limit_batches`` changes a cosine's, linear's or onecycle's whole curve)."""
        self._check_layout(state)
        self.step_count = state["step_count"]
        self.plateau_factor = state["plateau_factor"]
        self.plateau_best = state["plateau_best"]
        self.plateau_bad_epochs = state["plateau_bad_epochs"]
        self._apply()

    def _check_layout(self, state: dict[str, Any]) -> None:
        if "total_steps" not in state:  # saved before the layout was kept
            return
        saved = copy.copy(self)
        saved.total_steps = state["total_steps"]
        saved.steps_per_epoch = state["steps_per_epoch"]
        saved.warmup_steps = state["warmup_steps"]
        for step in range(min(saved.total_steps, self.total_steps)):
            before, now = saved.lr_at(step), self.lr_at(step)
            if not math.isclose(before, now, rel_tol=1e-12, abs_tol=1e-15):
                raise ConfigError(
                    f"resume: the {self.kind} schedule was laid out over {saved.total_steps} "
                    f"optimizer steps ({saved.steps_per_epoch} an epoch) and would now be over "
                    f"{self.total_steps} ({self.steps_per_epoch} an epoch): the rate of step "
                    f"{step + 1} would change from {before:.6g} to {now:.6g}; resume with the "
                    "epochs and limit_batches it started with, or start a new run"
                )


def _cosine(step: int, total: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def _cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def plot_schedule(config: TrainConfig, steps_per_epoch: int, path: str) -> list[float]:
    """Draw the whole learning-rate schedule of ``config`` to a PNG; returns the per-step rates."""
    from mlenv.track.plots import line_plot

    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    schedule = LRSchedule(dummy, config, steps_per_epoch)
    rates = [schedule.lr_at(s) for s in range(schedule.total_steps)]
    line_plot(
        {"learning rate": rates},
        path,
        title=f"{config.scheduler} schedule"
        + (f", {schedule.warmup_steps} warmup steps" if schedule.warmup_steps else ""),
        xlabel="optimizer step",
        ylabel="learning rate",
    )
    return rates
