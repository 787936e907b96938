"""Single, tuple and named-dict losses with weights: each term logged, the weighted sum optimised."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mlenv.config import TrainConfig
from mlenv.data import DATASETS
from mlenv.models import create_model
from mlenv.train import losses
from mlenv.train.trainer import Trainer


def test_combine_named_terms_with_weights():
    criterion = {"mse": (nn.MSELoss(), 2.0), "l1": nn.L1Loss()}
    weights = losses.criterion_weights(criterion)
    functions = losses.criterion_functions(criterion)
    out, target = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])
    terms = losses.apply_criterion(functions, out, target)
    total, named = losses.combine_terms(terms, weights, losses.term_names(criterion))
    assert named["mse"].item() == pytest.approx(2.5)
    assert named["l1"].item() == pytest.approx(1.5)
    assert total.item() == pytest.approx(2 * 2.5 + 1.5)


def test_tuple_terms_are_named_after_their_class():
    criterion = (nn.MSELoss(), nn.L1Loss(), nn.MSELoss())
    assert losses.term_names(criterion) == ["mse", "l1", "mse2"]


class TwoHeads(Trainer):
    """A tuple criterion on a classifier: cross-entropy plus a small weighted MSE on the logits."""

    def get_criterion(self):
        return {"ce": nn.CrossEntropyLoss(), "logit_l2": (lambda out, _y: out.pow(2).mean(), 0.01)}


def test_trainer_logs_each_term_and_optimises_the_weighted_sum():
    data = DATASETS.create("digits", seed=0)
    model = create_model("mlp", seed=0, in_features=64, hidden=[32], out_features=10)
    history = (
        TwoHeads(TrainConfig(epochs=3, progress=False), model).fit(data.train, data.val).history
    )
    for row in history:
        assert math.isclose(
            row["train_loss"], row["train_ce"] + 0.01 * row["train_logit_l2"], rel_tol=1e-5
        )
    assert history[-1]["val_ce"] < history[0]["val_ce"]
