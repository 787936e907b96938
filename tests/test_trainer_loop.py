"""What the Trainer's loop claims, each held to a hand-computed number on a tiny linear model.

Schedule steps per optimizer step (warm-up and decay at known steps, under accumulation), the
logged rows (the lr each step used, the mean loss of its group), clipping of accumulated gradients
(fp32 and fp16), the division by the group size (the last partial group too), model selection and
early stopping in max mode, the EMA's decay through the loop, a non-finite term named, and a resume
whose every piece of state (grad scaler, schedule, early stopping, top-k) must round-trip.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from conftest import StopAfterBatch
from mlenv import TrainConfig, Trainer
from mlenv.data.batching import epoch_permutation
from mlenv.errors import ConfigError, TrainingError
from mlenv.track.run import Run
from mlenv.train.checkpoint import load_checkpoint
from mlenv.train.trainer import TrainingInterrupted

QUIET = {"progress": False, "threads": 1, "device": "cpu"}


class Regression(Trainer):
    """MSE on a linear model; records every micro-batch's loss (``batch_losses``)."""

    def get_criterion(self):
        return nn.MSELoss()

    def forward_pass(self, batch):
        x, y = batch
        out = self.model(x)
        loss = self.criterion(out, y)
        if self.model.training:
            self.batch_losses = [*getattr(self, "batch_losses", []), loss.item()]
        return loss, out


class RecordingRun(Run):
    """A run folder whose per-step and per-epoch rows are kept in memory (no TensorBoard)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.steps: dict[str, list[tuple[int, float]]] = {}

    def log_steps(self, rows):
        for name, value, step in rows:
            self.steps.setdefault(name, []).append((step, value))

    def log_epoch(self, metrics, epoch, global_step):
        pass


def make_data(rows: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(rows, 1, generator=g)
    return x, y


def make_model(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(3, 1)


class StepWatcher:
    """The lr and the gradients every optimizer step receives (a global step pre-hook)."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.grads: list[list[torch.Tensor]] = []

    def __enter__(self) -> StepWatcher:
        def hook(optimizer, _args, _kwargs):
            self.lrs.append(optimizer.param_groups[0]["lr"])
            self.grads.append([p.grad.clone() for g in optimizer.param_groups for p in g["params"]])

        self.handle = register_optimizer_step_pre_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def norm(grads: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))


# ----------------------------------------------------------------------------------------------
# The schedule and the logged rows


def test_schedule_steps_once_per_optimizer_step_and_rows_log_what_each_step_used(tmp_path):
    # 40 rows in batches of 8: 5 micro-batches an epoch, groups of 2, 2 and 1: 3 steps an epoch
    x, y = make_data()
    run = RecordingRun(tmp_path / "run")
    config = TrainConfig(
        epochs=2,
        batch_size=8,
        accumulate=2,
        optimizer="sgd",
        momentum=0.0,
        lr=0.1,
        scheduler="linear",
        warmup_steps=2,
        save_every=100,
        save_top_k=0,
        monitor="train_loss",
        **QUIET,
    )
    trainer = Regression(config, model=make_model(), run=run)
    with StepWatcher() as watched:
        trainer.fit((x, y))
    # warm-up from 0.1 x lr over 2 steps, then linear to 0 over the 4 steps left
    expected = [0.01, 0.1 * (0.1 + 0.9 / 2), 0.1, 0.075, 0.05, 0.025]
    assert watched.lrs == pytest.approx(expected, rel=1e-12)
    assert trainer.global_step == 6 and trainer.scheduler.step_count == 6
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-15)
    # one row per optimizer step: the lr it trained with, the mean loss of its micro-batches
    assert run.steps["lr"] == [(i + 1, pytest.approx(lr)) for i, lr in enumerate(expected)]
    losses = trainer.batch_losses  # 10 micro-batches
    groups = [losses[0:2], losses[2:4], losses[4:5], losses[5:7], losses[7:9], losses[9:10]]
    means = [sum(g) / len(g) for g in groups]
    assert run.steps["loss"] == [(i + 1, pytest.approx(m, rel=1e-6)) for i, m in enumerate(means)]
    assert [s for s, _ in run.steps["grad_norm"]] == [1, 2, 3, 4, 5, 6]


# ----------------------------------------------------------------------------------------------
# Accumulation and clipping


def closed_form_grad(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    """d/dw, d/db of mean((x w^T + b - y)^2) for a (1, 3) weight: 2/n X^T r, 2/n sum r."""
    r = x @ w.T + b - y  # (n, 1)
    return 2 / len(x) * (r.T @ x), 2 / len(x) * r.sum(0)


def test_accumulated_steps_take_the_group_mean_the_last_partial_group_its_own():
    # 40 rows, batches of 8, groups of 2: steps on 16, 16 and then 8 rows. SGD with momentum and
    # weight decay, written out: g += wd * w; v = mu * v + g; w -= lr * v
    x, y = make_data()
    lr, mu, wd = 0.1, 0.5, 0.01
    config = TrainConfig(
        epochs=1,
        batch_size=8,
        accumulate=2,
        optimizer="sgd",
        lr=lr,
        momentum=mu,
        weight_decay=wd,
        seed=3,
        **QUIET,
    )
    model = make_model()
    w, b = model.weight.detach().clone().double(), model.bias.detach().clone().double()
    trainer = Regression(config, model=model)
    trainer.fit((x, y))
    order = epoch_permutation(len(x), 3, 0)
    xs, ys = x[order].double(), y[order].double()
    vw, vb = torch.zeros_like(w), torch.zeros_like(b)
    for start, end in ((0, 16), (16, 32), (32, 40)):
        gw, gb = closed_form_grad(w, b, xs[start:end], ys[start:end])
        vw, vb = mu * vw + gw + wd * w, mu * vb + gb + wd * b
        w, b = w - lr * vw, b - lr * vb
    assert trainer.global_step == 3
    torch.testing.assert_close(model.weight.detach().double(), w, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.bias.detach().double(), b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("precision", ["32", "16"])
def test_clip_by_norm_applies_to_accumulated_gradients(tmp_path, precision):
    # two micro-batches of 32 rows accumulated into one step. Small inputs: fp16's first backward
    # at the scaler's 65536 must not overflow (a skipped step would leave nothing to look at)
    x, y = make_data(rows=64)
    x, y = 0.3 * x, 0.3 * y
    model = make_model()
    w, b = model.weight.detach().clone().double(), model.bias.detach().clone().double()
    gw, gb = closed_form_grad(w, b, x.double(), y.double())  # the mean over both micro-batches
    true_norm = norm([gw, gb])
    run = RecordingRun(tmp_path / "run")
    config = TrainConfig(
        epochs=1,
        batch_size=32,
        accumulate=2,
        optimizer="sgd",
        grad_clip=0.02,
        precision=precision,
        save_top_k=0,
        monitor="train_loss",
        **QUIET,
    )
    with StepWatcher() as watched:
        Regression(config, model=model, run=run).fit((x, y))
    assert true_norm > 10 * 0.02  # clipping is active
    (at_step,) = watched.grads
    tolerance = 1e-5 if precision == "32" else 2e-3  # fp16 activations
    # the optimizer receives the unscaled, clipped mean gradient: norm 0.02, the same direction
    assert norm(at_step) == pytest.approx(0.02, rel=1e-5)
    factor = 0.02 / true_norm
    torch.testing.assert_close(at_step[0].double(), gw * factor, rtol=tolerance, atol=1e-6)
    torch.testing.assert_close(at_step[1].double(), gb * factor, rtol=tolerance, atol=1e-6)
    # and the logged norm is the one before clipping
    assert run.steps["grad_norm"] == [(1, pytest.approx(true_norm, rel=tolerance))]


# ----------------------------------------------------------------------------------------------
# Model selection, early stopping and the plateau schedule in max mode


class Scripted(Regression):
    """Validation reports ``val_acc`` from a script, one value per epoch (a metric where higher
    is better, with a known path)."""

    script: tuple[float, ...] = ()

    def validate_epoch(self, batches, prefix="val"):
        means = super().validate_epoch(batches, prefix)
        means[f"{prefix}_acc"] = self.script[min(self.epoch, len(self.script) - 1)]
        return means


def scripted(script, run=None, **overrides) -> tuple[Scripted, object]:
    x, y = make_data()
    config = TrainConfig(
        **{"epochs": len(script), "batch_size": 20, "monitor": "val_acc", **QUIET, **overrides}
    )
    trainer = Scripted(config, model=make_model(), run=run)
    trainer.script = tuple(script)
    return trainer, trainer.fit((x, y), make_data(rows=10, seed=1))


def test_top_k_and_best_keep_the_highest_val_acc(tmp_path):
    run = RecordingRun(tmp_path / "run")
    _, result = scripted([0.5, 0.9, 0.7, 0.8, 0.6], run=run, save_top_k=2)
    kept = {p.name for p in run.checkpoints.glob("epoch=*.pt")}
    assert kept == {"epoch=0002-val_acc=0.9.pt", "epoch=0004-val_acc=0.8.pt"}
    assert load_checkpoint(run.checkpoints / "best.pt")["state"]["epoch"] == 2
    assert result.best == {"val_acc": 0.9, "checkpoint": "epoch=0002-val_acc=0.9.pt"}


def test_early_stopping_in_max_mode_stops_after_exactly_patience_epochs():
    _, result = scripted(
        [0.5, 0.6, 0.7, 0.65, 0.64, 0.9], early_stopping=True, patience=2, min_delta=0.0
    )
    assert len(result.history) == 5
    assert result.stop_reason == "no improvement in val_acc for 2 epochs (best 0.7 at epoch 3)"


def test_plateau_in_max_mode_reduces_after_patience_epochs_without_a_rise():
    # best 0.5, 0.6 (a rise), then 0.6 and 0.6: the second flat epoch exceeds patience 1
    trainer, result = scripted(
        [0.5, 0.6, 0.6, 0.6, 0.7],
        scheduler="plateau",
        plateau_patience=1,
        gamma=0.5,
        lr=0.1,
        optimizer="sgd",
    )
    assert [row["lr"] for row in result.history] == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.05])
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


# ----------------------------------------------------------------------------------------------
# EMA through the loop


class WeightsAfterEachStep(Regression):
    def after_optimizer_step(self):
        self.weights = [*getattr(self, "weights", []), self.model.weight.detach().clone()]
        super().after_optimizer_step()


def test_ema_decay_per_step_and_validation_on_the_average():
    # one step an epoch, two epochs; decay 0.5 warms up as min(0.5, (1 + t) / (10 + t))
    x, y = make_data(rows=16)
    xv, yv = make_data(rows=8, seed=1)
    model = make_model()
    w0 = model.weight.detach().clone()
    config = TrainConfig(
        epochs=2, batch_size=16, optimizer="sgd", lr=0.1, momentum=0.0, ema=0.5, **QUIET
    )
    trainer = WeightsAfterEachStep(config, model=model)
    result = trainer.fit((x, y), (xv, yv))
    w1, w2 = trainer.weights
    ema1 = 2 / 11 * w0 + 9 / 11 * w1
    ema2 = 0.25 * ema1 + 0.75 * w2
    torch.testing.assert_close(model.weight.detach(), ema2, rtol=0, atol=1e-7)
    # epoch 2 trained on from the training weights, not from the average validated after epoch 1
    torch.testing.assert_close(trainer._training_weights["weight"], w2, rtol=0, atol=0)
    # validation measured the average: MSE by hand with the averaged weight and bias
    bias = model.bias.detach()
    assert result.history[-1]["val_loss"] == pytest.approx(
        float(((xv @ ema2.T + bias - yv) ** 2).mean()), rel=1e-6
    )


# ----------------------------------------------------------------------------------------------
# A non-finite term is named


def test_a_nonfinite_named_term_is_named_with_its_step():
    class TwoTerms(Regression):
        def get_criterion(self):
            return {"mse": nn.MSELoss(), "bad": nn.L1Loss()}

        def forward_pass(self, batch):
            x, y = batch
            out = self.model(x)
            bad = self.criterion["bad"](out, y)
            if self.batch_in_epoch == 2:
                bad = bad * float("nan")
            return {"mse": self.criterion["mse"](out, y), "bad": bad}, out

    x, y = make_data()
    config = TrainConfig(epochs=1, batch_size=8, **QUIET)
    with pytest.raises(TrainingError) as info:
        TwoTerms(config, model=make_model()).fit((x, y))
    message = str(info.value)
    assert "non-finite loss at epoch 1, step 3: term 'bad' = nan" in message
    assert "no layer output is non-finite (the loss computation is)" in message


# ----------------------------------------------------------------------------------------------
# Resume: every piece of the loop's state round-trips


class Stopping(StopAfterBatch, Regression):
    """Stops as SIGTERM would after batch ``stop_at = (epoch, batch_in_epoch)``; records the
    global step of every optimizer step and counts the steps the optimizer really took."""


def resumable(run_dir: Path, model_seed: int, **overrides) -> Stopping:
    config = TrainConfig(
        **{
            "epochs": 3,
            "batch_size": 8,
            "accumulate": 2,
            "optimizer": "sgd",
            "lr": 1e-4,
            "precision": "16",
            "scheduler": "cosine",
            "warmup_steps": 2,
            "min_lr": 1e-6,
            "early_stopping": True,
            "patience": 10,
            "save_top_k": 2,
            **QUIET,
            **overrides,
        }
    )
    return Stopping(config, model=make_model(model_seed), run=RecordingRun(run_dir))


def test_resume_round_trips_scaler_schedule_callbacks_and_starts_at_the_checkpoint(tmp_path):
    # targets of 300: the first backward overflows fp16 at the scaler's 65536, so the scaler has
    # skipped steps and halved its scale, and its growth tracker counts the good steps since
    x, y = make_data(rows=48)
    y = 300 * y
    data = ((x, y), make_data(rows=16, seed=1))
    with StepWatcher() as watched:
        whole = resumable(tmp_path / "whole", 0)
        whole.fit(*data)
    optimizer_steps = len(watched.lrs)
    total = whole.global_step  # 3 epochs of 6 micro-batches in groups of 2
    assert total == 9
    skipped = total - optimizer_steps
    scaler = whole.scaler.state_dict()
    assert skipped >= 1 and scaler["scale"] == 65536.0 / 2**skipped
    assert scaler["_growth_tracker"] == total - skipped  # every skip came before a good step

    stopped = resumable(tmp_path / "stopped", 0)
    stopped.stop_at = (1, 3)  # inside epoch 2, inside an accumulation group
    with pytest.raises(TrainingInterrupted):
        stopped.fit(*data)
    checkpoint = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.pt")
    position = checkpoint["state"]
    assert (position["epoch"], position["batch_in_epoch"], position["global_step"]) == (1, 3, 4)
    assert checkpoint["grads"]  # a group's first micro-batch was pending

    resumed = resumable(tmp_path / "stopped", 1234, resume="last")
    resumed.fit(*data)
    # it started where the checkpoint stood and took only the steps that were left
    assert resumed.steps_taken == list(range(5, total + 1))
    assert torch.equal(resumed.model.weight, whole.model.weight)
    assert torch.equal(resumed.model.bias, whole.model.bias)
    assert resumed.scaler.state_dict() == scaler
    assert resumed.scheduler.state_dict() == whole.scheduler.state_dict()
    assert resumed.optimizer.param_groups[0]["lr"] == whole.optimizer.param_groups[0]["lr"]
    assert resumed.early_stopping.state_dict() == whole.early_stopping.state_dict()
    assert resumed.top_k.kept == whole.top_k.kept
    assert [r["val_loss"] for r in resumed.history] == [r["val_loss"] for r in whole.history]


def test_a_resume_that_would_change_the_schedules_curve_is_refused(tmp_path):
    # a cosine over 2 epochs of 5 steps, 0.05 (1 + cos(pi k / 10)) at step k: resumed with
    # --epochs 3 its rates would be 0.05 (1 + cos(pi k / 15)) (the sixth step, k = 5, at 0.075
    # where it trained at 0.05), so the resume is refused
    x, y = make_data()

    def trainer(run_dir, epochs, scheduler):
        config = TrainConfig(
            epochs=epochs,
            batch_size=8,
            optimizer="sgd",
            lr=0.1,
            scheduler=scheduler,
            monitor="train_loss",
            resume="last" if epochs > 2 else None,
            **QUIET,
        )
        return Regression(config, model=make_model(), run=RecordingRun(run_dir))

    trainer(tmp_path / "cosine", 2, "cosine").fit((x, y))
    with pytest.raises(ConfigError) as info:
        trainer(tmp_path / "cosine", 3, "cosine").fit((x, y))
    assert str(info.value) == (
        "resume: the cosine schedule was laid out over 10 optimizer steps (5 an epoch) and would "
        "now be over 15 (5 an epoch): the rate of step 2 would change from 0.0975528 to "
        "0.0989074; resume with the epochs and limit_batches it started with, or start a new run"
    )
    # a constant schedule's rates do not depend on the run's length: it continues
    trainer(tmp_path / "constant", 2, "constant").fit((x, y))
    resumed = trainer(tmp_path / "constant", 3, "constant")
    resumed.fit((x, y))
    assert resumed.resumed_at["global_step"] == 10 and resumed.global_step == 15


# ----------------------------------------------------------------------------------------------
# Whole-pass binary metrics


def test_binary_metrics_by_hand():
    import numpy as np

    from mlenv.train.metrics import binary_metrics

    p = np.array([0.9, 0.2, 0.6, 0.4, 0.5, 0.7, 0.1])
    t = np.array([1, 0, 0, 1, 0, 1, 1])
    m = binary_metrics(p, t)
    # at 0.5 (strictly above is positive): TP 0.9, 0.7; FP 0.6; FN 0.4, 0.1; TN 0.2, 0.5
    assert m["acc"] == pytest.approx(4 / 7)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 4)
    assert m["f1"] == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))
    # AUC: of the 4 x 3 (positive, negative) pairs, 7 rank the positive higher
    assert m["auc"] == pytest.approx(7 / 12)
    logs = [math.log(v) for v in (0.9, 0.4, 0.7, 0.1)] + [math.log(v) for v in (0.8, 0.4, 0.5)]
    assert m["log_loss"] == pytest.approx(-sum(logs) / 7)


# ----------------------------------------------------------------------------------------------
# Step checkpoints; the callbacks' own state


def test_step_checkpoints_fall_on_every_nth_optimizer_step(tmp_path):
    class Saves(Regression):
        def save(self, name="last"):
            self.saved_at = [*getattr(self, "saved_at", []), self.global_step]
            return super().save(name)

    x, y = make_data()  # 5 steps an epoch, 2 epochs
    config = TrainConfig(
        epochs=2, batch_size=8, save_every_steps=4, save_every=100, monitor="train_loss", **QUIET
    )
    trainer = Saves(config, model=make_model(), run=RecordingRun(tmp_path / "run"))
    trainer.fit((x, y))
    # steps 4 and 8, then the last epoch's end (10); top-k (val-less: train_loss) adds epoch 1
    assert [s for s in trainer.saved_at if s % 5] == [4, 8]
    assert trainer.saved_at[-1] == 10


def test_top_k_never_keeps_a_nonfinite_metric(tmp_path):
    from mlenv.train.callbacks import TopKCheckpoints

    top = TopKCheckpoints(tmp_path, k=2, monitor="val_auc", mode="max")
    assert top.offer(1, 0.7, b"1") is True
    assert top.offer(2, float("nan"), b"2") is False
    assert top.kept == [(0.7, "epoch=0001-val_auc=0.7.pt")]
    assert (tmp_path / "best.pt").read_bytes() == b"1"


def test_early_stopping_state_round_trips_its_bad_epochs():
    from mlenv.train.callbacks import EarlyStopping

    first = EarlyStopping(patience=2, mode="min")
    assert [first.update(v) for v in (1.0, 1.1)] == [None, None]  # one bad epoch so far
    second = EarlyStopping(patience=2, mode="min")
    second.load_state_dict(first.state_dict())
    assert second.update(1.2) == "no improvement in val_loss for 2 epochs (best 1 at epoch 1)"


def test_divergence_threshold_reads_the_training_loss_only():
    # validation targets 100x larger: a val loss near 1e4, far above the threshold, which no
    # training batch (losses of a few units) reaches, so the run completes
    x, y = make_data()
    xv, yv = make_data(rows=10, seed=1)
    config = TrainConfig(epochs=2, batch_size=8, divergence_threshold=100.0, **QUIET)
    result = Regression(config, model=make_model()).fit((x, y), (xv, 100 * yv))
    assert result.history[-1]["val_loss"] > 1000
    assert result.stop_reason == "completed 2 epochs"


def test_early_stopping_in_max_mode_needs_a_rise_above_min_delta():
    from mlenv.train.callbacks import EarlyStopping

    stopper = EarlyStopping(patience=1, mode="max", min_delta=0.05, monitor="val_acc")
    # 0.54 is higher than 0.5 but not by more than 0.05: no improvement, and patience 1 stops
    assert [stopper.update(v) for v in (0.5, 0.54)] == [
        None,
        "no improvement in val_acc for 1 epochs (best 0.5 at epoch 1)",
    ]
