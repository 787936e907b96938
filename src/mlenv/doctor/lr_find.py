"""Learning-rate range test (Leslie Smith's; the method fastai's and Lightning's lr finders
describe): train a copy of the model for a few batches while the learning rate grows
exponentially from ``start`` to ``end``, smooth the loss, stop once it blows up, and suggest the
learning rate where the smoothed loss falls fastest."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlenv.doctor.verdict import Verdict
from mlenv.errors import ConfigError

# Exponential moving average of the loss (with bias correction). Run forward only, it stops the
# sweep; for the plot and the suggestion it also runs backward over the forward pass, which
# cancels its lag (with 0.98 over 100 steps the causal average trails the loss by a decade of lr).
SMOOTHING = 0.9
DIVERGE = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum
TOO_HIGH = 10.0  # a learning rate above this multiple of the suggestion: warn


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]  # raw loss of each step
    smoothed: list[float]  # zero-phase (forward and backward) average of the losses
    suggestion: float  # steepest descent of the smoothed loss
    min_loss_lr: float  # where the smoothed loss is lowest
    stop_reason: str
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "suggestion": self.suggestion,
            "min_loss_lr": self.min_loss_lr,
            "stop_reason": self.stop_reason,
            "lrs": self.lrs,
            "losses": self.losses,
            "smoothed": self.smoothed,
        }


def check_range(start: float, end: float, steps: int) -> None:
    if not (math.isfinite(start) and start > 0):
        raise ConfigError(f"--start-lr: accepts a number > 0, got {start}")
    if not (math.isfinite(end) and end > start):
        raise ConfigError(f"--end-lr: accepts a number above --start-lr ({start:g}), got {end}")
    if steps < 10:
        raise ConfigError(f"--steps: accepts an integer >= 10, got {steps}")


def lr_range_test(
    probe: Any,
    data: Any,
    start: float = 1e-7,
    end: float = 10.0,
    steps: int = 100,
) -> LRFindResult:
    """Train the probe's model on batches of ``data`` (cycled) with the run's optimizer, the
    learning rate ``start * (end / start) ** (i / (steps - 1))`` at step i.

    >>> result = lr_range_test(make_probe(model, task, config, batch), (x, y))  # doctest: +SKIP
    >>> result.suggestion
    """
    from mlenv.data.batching import make_batches

    check_range(start, end, steps)
    trainer = probe.trainer
    batches = make_batches(data, trainer.config.batch_size, True, trainer.config.seed)
    optimizer = probe.optimizer(start)
    lrs: list[float] = []
    losses: list[float] = []
    average, best, best_at = 0.0, math.inf, 0
    stop_reason = f"reached --end-lr {end:g}"
    epoch, iterator = 0, iter(batches)
    for i in range(steps):
        lr = start * (end / start) ** (i / (steps - 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        try:
            batch = next(iterator)
        except StopIteration:
            epoch += 1
            batches.set_epoch(epoch)
            iterator = iter(batches)
            batch = next(iterator)
        total, _, _ = trainer.compute_loss(trainer.to_device(batch))
        loss = float(total.detach())
        if not math.isfinite(loss):
            stop_reason = f"the loss went non-finite at lr {lr:.3g}"
            break
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        smooth = average / (1 - SMOOTHING ** (i + 1))
        lrs.append(lr)
        losses.append(loss)
        if smooth < best:
            best, best_at = smooth, i
        if i > steps // 10 and smooth > DIVERGE * best:
            stop_reason = f"the smoothed loss passed {DIVERGE:g}x its minimum at lr {lr:.3g}"
            break
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
    if len(lrs) < 3:
        raise ConfigError(
            f"lr-find: the loss blew up within {len(lrs)} steps ({stop_reason}); give a lower "
            "--start-lr"
        )
    # the blow-up after the minimum would leak backwards into the smoothed curve: cap it first
    # (only after the minimum: a loss that falls more than DIVERGE-fold keeps its fall)
    cap = min(DIVERGE * best, max(losses[: best_at + 1]))
    capped = losses[: best_at + 1] + [min(v, cap) for v in losses[best_at + 1 :]]
    smoothed = zero_phase_average(capped)
    suggestion, min_lr = suggest_lr(lrs, smoothed)
    return LRFindResult(lrs, losses, smoothed, suggestion, min_lr, stop_reason)


def _average(values: np.ndarray) -> np.ndarray:
    """The bias-corrected exponential moving average of ``values``, front to back."""
    out, average = np.empty(len(values)), 0.0
    for i, v in enumerate(values):
        average = SMOOTHING * average + (1 - SMOOTHING) * v
        out[i] = average / (1 - SMOOTHING ** (i + 1))
    return out


def zero_phase_average(losses: list[float]) -> list[float]:
    """The moving average run forward, then backward over the result: smooth, and without the
    forward average's lag."""
    forward = _average(np.asarray(losses, dtype=float))
    return _average(forward[::-1])[::-1].tolist()


def suggest_lr(lrs: list[float], smoothed: list[float]) -> tuple[float, float]:
    """(the lr of the steepest fall of the smoothed loss against log lr, before its minimum;
    the lr of the minimum). The first tenth of the sweep is skipped: its average is young."""
    s = np.asarray(smoothed)
    low = int(s.argmin())
    skip = min(len(s) // 10, max(low - 2, 0))
    if low - skip < 2:  # no fall to measure: a tenth of the minimum's lr
        return lrs[low] / 10, lrs[low]
    slope = np.gradient(s[skip : low + 1], np.log10(lrs[skip : low + 1]))
    return lrs[skip + int(slope.argmin())], lrs[low]


def check_learning_rate(result: LRFindResult, lr: float) -> Verdict:
    """The run's ``lr`` against the range test: fail at or past the lowest smoothed loss
    (beyond it the loss rises), warn above ``TOO_HIGH`` x the suggestion or below 1/1000 of
    it, ok otherwise."""
    s = result.suggestion
    figures = {"lr": lr, "suggestion": s, "min_loss_lr": result.min_loss_lr}
    evidence = (
        f"--lr {lr:.3g}; the range test suggests {s:.3g} (steepest fall), its loss is lowest at "
        f"{result.min_loss_lr:.3g}"
    )
    if lr >= result.min_loss_lr:
        status = "fail"
        evidence += "; at this lr the loss already rises"
    elif lr > TOO_HIGH * s:
        status = "warn"
        evidence += f"; more than {TOO_HIGH:g}x the suggestion"
    elif lr < s / 1000:
        status = "warn"
        evidence += "; far below the suggestion: training will be slow"
    else:
        status = "ok"
    return Verdict("learning rate", status, evidence, f"--lr {s:.2g}", figures, result_plot(result))


def result_plot(result: LRFindResult) -> Path | None:
    return result.figures.get("plot")


def plot_lr_find(result: LRFindResult, path: str | Path) -> Path:
    """Raw and smoothed loss against the learning rate (log scale), the suggestion marked."""
    from mlenv.track.plots import _pyplot, save_figure

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(result.lrs, result.losses, color="tab:gray", alpha=0.4, linewidth=0.8, label="loss")
    ax.plot(result.lrs, result.smoothed, color="tab:blue", label="smoothed loss")
    ax.axvline(
        result.suggestion,
        color="tab:red",
        linestyle="--",
        label=f"suggested lr {result.suggestion:.2g}",
    )
    ax.axvline(
        result.min_loss_lr,
        color="tab:orange",
        linestyle=":",
        label=f"lowest loss at {result.min_loss_lr:.2g}",
    )
    ax.set_xscale("log")
    top = np.percentile(result.losses, 95) if result.losses else 1
    ax.set_ylim(min(result.smoothed) * 0.9 if min(result.smoothed) > 0 else None, top * 1.2)
    ax.set(xlabel="learning rate", ylabel="loss", title="learning-rate range test")
    ax.legend(fontsize=8)
    path = save_figure(fig, path)
    result.figures["plot"] = path
    return path
