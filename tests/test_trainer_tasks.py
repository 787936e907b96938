"""The same Trainer, unchanged, on three shapes of task (the foundation's proof of generality)."""

from __future__ import annotations

import math

from mlenv.config import TrainConfig
from mlenv.data import DATASETS
from mlenv.models import create_model
from mlenv.train.tasks import ClassificationTask, LanguageModelTask, VAETask
from mlenv.train.trainer import Trainer


def test_digits_classification_reaches_95_percent():
    data = DATASETS.create("digits", seed=0)
    model = create_model("mlp", seed=0, in_features=64, hidden=[128, 64], out_features=10)
    trainer = Trainer(
        TrainConfig(epochs=15, lr=1e-3, progress=False), model, task=ClassificationTask()
    )
    result = trainer.fit(data.train, data.val)
    test = trainer.evaluate(data.test)
    assert test["test_acc"] >= 0.95, test
    assert len(result.history) == 15
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_vae_logs_both_named_terms_and_total_falls_30_percent():
    data = DATASETS.create("digits", seed=0, normalize="unit")
    model = create_model("vae", seed=0, in_features=64, hidden=128, latent=8)
    trainer = Trainer(
        TrainConfig(epochs=6, lr=2e-3, batch_size=64, progress=False), model, task=VAETask()
    )
    before = trainer.evaluate(data.val, prefix="val")["val_loss"]  # the initial weights
    history = trainer.fit(data.train, data.val).history
    for row in history:
        assert {"train_reconstruction", "train_kl", "val_reconstruction", "val_kl"} <= set(row)
        # the total is the (weight 1) sum of the two named terms
        assert math.isclose(
            row["train_loss"], row["train_reconstruction"] + row["train_kl"], rel_tol=1e-5
        )
    after = history[-1]["val_loss"]
    assert after <= 0.7 * before, (before, after)


def test_char_lm_beats_uniform_guess_by_one_nat(shared_data):
    data = DATASETS.create(
        "char-text",
        path=str(shared_data / "text" / "tinyshakespeare.txt"),
        max_chars=20_000,
        block_size=64,
    )
    assert data.model_kwargs["vocab_size"] == 65
    model = create_model("rnn-lm", seed=0, vocab_size=65, embed=64, hidden=128)
    config = TrainConfig(epochs=12, lr=3e-3, batch_size=16, grad_clip=1.0, progress=False)
    history = Trainer(config, model, task=LanguageModelTask()).fit(data.train, data.val).history
    uniform = math.log(65)  # 4.17 nats
    assert history[-1]["val_loss"] < uniform - 1.0, history[-1]
