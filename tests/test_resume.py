"""Exact resume, in process: a run stopped at a chosen batch (as SIGTERM stops it) and resumed by a
new Trainer around a differently initialised model must start at the checkpoint's position and end
bit-identical to the uninterrupted run. Three stop points: inside an epoch, inside a gradient
accumulation group, and inside an epoch of a user's shuffling DataLoader.

A deterministic restart from scratch also ends identical, so each test also asserts where the
resumed run started: its first optimizer step is the checkpoint's step + 1, and it takes only the
steps that were left."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import StopAfterBatch
from mlenv.config import TrainConfig
from mlenv.data import DATASETS
from mlenv.models import create_model
from mlenv.track.run import Run
from mlenv.train.checkpoint import load_checkpoint
from mlenv.train.tasks import ClassificationTask
from mlenv.train.trainer import Trainer, TrainingInterrupted

EPOCHS = 3


@pytest.fixture(scope="module")
def digits():
    return DATASETS.create("digits", seed=0)


class Recording(StopAfterBatch, Trainer):
    """Records the global step of every optimizer step; stops (as SIGTERM would) after the
    batch ``stop_at = (epoch, batch_in_epoch)`` was trained."""


def make_trainer(run_dir, model_seed, **overrides) -> Recording:
    # dropout: the result depends on the restored RNG state, not only on the weights
    model = create_model(
        "mlp", seed=model_seed, in_features=64, hidden=[32], out_features=10, dropout=0.1
    )
    config = TrainConfig(
        **{"epochs": EPOCHS, "progress": False, "threads": 1, "batch_size": 32, **overrides}
    )
    return Recording(config, model, task=ClassificationTask(), run=Run(run_dir))


def comparable(history):
    return [
        {k: v for k, v in row.items() if k not in ("seconds", "samples_per_s")} for row in history
    ]


def scramble_global_rngs():
    """What a new process would have: nothing of the interrupted run's RNG state."""
    random.seed(999)
    np.random.seed(999)
    torch.manual_seed(999)


@pytest.mark.parametrize(
    ("case", "stop_at", "overrides"),
    [
        ("inside an epoch", (1, 5), {}),
        ("inside an accumulation group", (1, 7), {"accumulate": 3}),
        ("user DataLoader(shuffle=True)", (1, 9), {"loader": True}),
    ],
)
def test_resume_starts_at_the_checkpoint_and_ends_bit_identical(
    digits, tmp_path, case, stop_at, overrides
):
    overrides = dict(overrides)
    use_loader = overrides.pop("loader", False)

    def data():
        if use_loader:  # a fresh loader each time: its order comes from the global RNG
            train = DataLoader(TensorDataset(*digits.train), batch_size=32, shuffle=True)
            return train, digits.val
        return digits.train, digits.val

    whole = make_trainer(tmp_path / "whole", 0, **overrides)
    whole.fit(*data())
    total_steps = whole.global_step

    stopped = make_trainer(tmp_path / "stopped", 0, **overrides)
    stopped.stop_at = stop_at
    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM at epoch 2"):
        stopped.fit(*data())
    checkpoint = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.pt")
    position = checkpoint["state"]
    assert (position["epoch"], position["batch_in_epoch"]) == stop_at
    accumulate = overrides.get("accumulate", 1)
    if accumulate > 1:  # the stop really fell inside a group: gradients were pending
        assert stop_at[1] % accumulate != 0 and checkpoint["grads"]

    scramble_global_rngs()
    resumed = make_trainer(tmp_path / "stopped", 1234, resume="last", **overrides)
    resumed.fit(*data())
    # it started where the checkpoint stood and took only the steps that were left
    assert resumed.resumed_at["global_step"] == position["global_step"]
    assert resumed.steps_taken[0] == position["global_step"] + 1
    assert len(resumed.steps_taken) == total_steps - position["global_step"]
    # and it ended where the uninterrupted run ended, bit for bit
    assert resumed.global_step == total_steps
    for (name, a), b in zip(
        whole.raw_model.state_dict().items(),
        resumed.raw_model.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b), (case, name)
    assert comparable(resumed.history) == comparable(whole.history)


def test_a_second_fit_does_not_reset_the_model(digits):
    model = create_model("mlp", seed=0, in_features=64, hidden=[32], out_features=10)
    trainer = Trainer(
        TrainConfig(epochs=4, lr=3e-3, progress=False, threads=1), model, task=ClassificationTask()
    )
    trainer.fit(digits.train, digits.val)
    acc = trainer.evaluate(digits.test)["test_acc"]
    assert acc > 0.9
    with pytest.raises(Exception, match="already trained 4 of 4 epochs"):
        trainer.fit(digits.train, digits.val)
    assert trainer.evaluate(digits.test)["test_acc"] == acc  # the weights are untouched


def test_evaluate_and_predict_use_loaded_weights_as_they_are(digits):
    trained = create_model("mlp", seed=0, in_features=64, hidden=[32], out_features=10)
    config = TrainConfig(epochs=4, lr=3e-3, progress=False, threads=1)
    Trainer(config, trained, task=ClassificationTask()).fit(digits.train, digits.val)
    loaded = create_model("mlp", seed=7, in_features=64, hidden=[32], out_features=10)
    loaded.load_state_dict(trained.state_dict())
    fresh = Trainer(config, loaded, task=ClassificationTask())
    expected = trained(digits.test[0]).softmax(dim=1)
    assert torch.equal(fresh.predict(digits.test), expected)
    assert fresh.evaluate(digits.test)["test_acc"] > 0.9
    for a, b in zip(trained.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
