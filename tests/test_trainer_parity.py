"""The Trainer against a hand-written raw PyTorch loop: same model, data, seed and batch order."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

from mlenv.config import TrainConfig
from mlenv.data import DATASETS
from mlenv.data.batching import epoch_permutation
from mlenv.models import create_model
from mlenv.train.tasks import ClassificationTask
from mlenv.train.trainer import Trainer

SEED, EPOCHS, BATCH, LR = 3, 4, 32, 1e-3


def raw_loop(x, y, x_val, y_val):
    """What a researcher writes by hand, with the Trainer's documented data order."""
    model = create_model("mlp", seed=0, in_features=64, hidden=[32], out_features=10)
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, fused=True)  # the Trainer's choice
    criterion = nn.CrossEntropyLoss()
    losses = []
    for epoch in range(EPOCHS):
        order = epoch_permutation(len(x), SEED, epoch)
        xs, ys = x[order], y[order]
        total, count = 0.0, 0
        model.train()
        for i in range(0, len(x), BATCH):
            xb, yb = xs[i : i + BATCH], ys[i : i + BATCH]
            optimizer.zero_grad()
            loss = criterion(model(xb), yb)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            total += loss.item() * len(xb)
            count += len(xb)
        model.eval()
        with torch.no_grad():
            val = criterion(model(x_val), y_val).item()
        losses.append((total / count, val))
    return losses, model


def test_trainer_equals_raw_loop():
    torch.set_num_threads(1)
    data = DATASETS.create("digits", seed=0)
    (x, y), (xv, yv) = data.train, data.val
    raw_losses, raw_model = raw_loop(x, y, xv, yv)

    model = create_model("mlp", seed=0, in_features=64, hidden=[32], out_features=10)
    config = TrainConfig(
        epochs=EPOCHS,
        lr=LR,
        batch_size=BATCH,
        grad_clip=1.0,
        seed=SEED,
        threads=1,
        progress=False,
    )
    # validate on the whole val set as one batch, like the raw loop
    history = Trainer(config, model, task=ClassificationTask()).fit((x, y), (xv, yv)).history
    for row, (raw_train, _) in zip(history, raw_losses, strict=True):
        assert abs(row["train_loss"] - raw_train) < 1e-6
    # the val mean over batches of 32 equals the one-batch mean (sample-weighted means)
    for row, (_, raw_val) in zip(history, raw_losses, strict=True):
        assert abs(row["val_loss"] - raw_val) < 1e-6
    for (name, a), b in zip(
        model.state_dict().items(), raw_model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
