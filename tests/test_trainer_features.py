"""Built-in Trainer features, each checked by its outcome."""

from __future__ import annotations

import pytest
import torch

from mlenv.config import TrainConfig
from mlenv.data import DATASETS
from mlenv.errors import TrainingError
from mlenv.models import create_model
from mlenv.registry import Registry
from mlenv.track.run import Run
from mlenv.train.tasks import ClassificationTask
from mlenv.train.trainer import Trainer


@pytest.fixture(scope="module")
def digits():
    return DATASETS.create("digits", seed=0)


def fit(digits, run=None, **overrides):
    model = create_model("mlp", seed=0, in_features=64, hidden=[32], out_features=10)
    config = TrainConfig(**{"epochs": 2, "progress": False, "threads": 1, **overrides})
    trainer = Trainer(config, model, task=ClassificationTask(), run=run)
    return trainer, trainer.fit(digits.train, digits.val)


def test_accumulation_equals_the_larger_batch(digits):
    big, _ = fit(digits, batch_size=32)
    small, _ = fit(digits, batch_size=16, accumulate=2)
    for a, b in zip(big.model.parameters(), small.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_limit_batches_and_overfit_batches(digits):
    trainer, result = fit(digits, limit_batches=3)
    assert trainer.global_step == 2 * 3
    _, result = fit(digits, overfit_batches=2, epochs=60, lr=1e-2)
    assert result.history[-1]["train_loss"] < 0.02  # 64 samples memorised
    assert result.history[-1]["train_acc"] == 1.0


@pytest.mark.parametrize("precision", ["bf16", "16"])
def test_mixed_precision_trains(digits, precision):
    _, full = fit(digits, precision="32", epochs=5)
    trainer, result = fit(digits, precision=precision, epochs=5)
    assert trainer.scaler.is_enabled() == (precision == "16")
    # the same run in fp32 reaches 0.911; reduced precision must land beside it
    assert abs(result.history[-1]["val_acc"] - full.history[-1]["val_acc"]) <= 0.02
    assert result.history[-1]["val_acc"] > 0.90


def test_clip_by_value(digits):
    _, result = fit(digits, grad_clip=0.01, grad_clip_mode="value")
    assert result.history[-1]["val_acc"] > 0.5


def test_threads_chosen_by_model_size(digits):
    trainer, _ = fit(digits, threads=None, epochs=1)
    assert trainer.threads == 1  # a 4k-parameter MLP: one thread wins (benchmarks/threads.py)


def test_nonfinite_loss_stops_with_step_term_and_layer(digits, tmp_path):
    class Poisoned(Trainer):
        def forward_pass(self, batch):
            if self.epoch == 1 and self.batch_in_epoch == 4:
                with torch.no_grad():
                    self.model.net[2].weight[0, 0] = float("nan")
            return super().forward_pass(batch)

    run = Run(tmp_path / "run")
    model = create_model("mlp", seed=0, in_features=64, hidden=[32], out_features=10)
    trainer = Poisoned(
        TrainConfig(epochs=3, progress=False), model, task=ClassificationTask(), run=run
    )
    with pytest.raises(TrainingError) as info:
        trainer.fit(digits.train, digits.val)
    message = str(info.value)
    assert "non-finite loss at epoch 2, step 45: term 'loss' = nan" in message
    assert "parameter net.2.weight is already non-finite" in message
    state = torch.load(run.checkpoints / "last.pt", weights_only=True)  # the good epoch-1 one
    position = {k: state["state"][k] for k in ("epoch", "batch_in_epoch", "global_step")}
    assert position == {"epoch": 1, "batch_in_epoch": 0, "global_step": 40}
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_nonfinite_input_names_first_layer(digits):
    x, y = digits.train
    x = x.clone()
    x[5, 3] = float("inf")
    model = create_model("mlp", seed=0, in_features=64, hidden=[32], out_features=10)
    trainer = Trainer(
        TrainConfig(epochs=1, progress=False, batch_size=2000), model, task=ClassificationTask()
    )
    with pytest.raises(TrainingError, match=r"first non-finite output: net\.0 \(Linear\)"):
        trainer.fit((x, y))


def test_profile_writes_a_trace(digits, tmp_path):
    run = Run(tmp_path / "run")
    fit(digits, run=run, profile=True, epochs=1)
    trace = run.path / "profile" / "trace.json"
    assert trace.is_file() and b"traceEvents" in trace.read_bytes()[:2000]
    assert "aten::" in (run.path / "profile" / "top_ops.txt").read_text()


def test_predict_returns_probabilities(digits):
    trainer, _ = fit(digits, epochs=3)
    probs = trainer.predict(digits.test)
    assert probs.shape == (len(digits.test[0]), 10)
    assert torch.allclose(probs.sum(dim=1), torch.ones(len(probs)), atol=1e-5)
    accuracy = (probs.argmax(1) == digits.test[1]).float().mean().item()
    assert abs(accuracy - trainer.evaluate(digits.test)["test_acc"]) < 1e-6


def test_registry_rejects_duplicates_and_suggests_names():
    registry = Registry("thing")
    registry.register("alpha")(lambda: 1)
    with pytest.raises(ValueError, match="thing 'alpha' is registered twice"):
        registry.register("alpha")(lambda: 2)
    with pytest.raises(Exception, match=r"unknown thing 'alpa' \(did you mean 'alpha'\?\)"):
        registry.get("alpa")


def test_divergence_stops_at_once_with_the_reason(digits, tmp_path):
    run = Run(tmp_path / "run")
    model = create_model("mlp", seed=0, in_features=64, hidden=[32], out_features=10)
    config = TrainConfig(
        epochs=5, lr=50.0, optimizer="sgd", divergence_threshold=10.0, progress=False
    )
    result = Trainer(config, model, task=ClassificationTask(), run=run).fit(
        digits.train, digits.val
    )
    assert result.stop_reason.startswith("diverged: training loss")
    assert "> divergence_threshold 10" in result.stop_reason
    assert len(result.history) < 5
