"""The Python API as the README and the GUIDE show it: public names from ``mlenv``, a Trainer
subclass overriding only what differs, data as tensors, a Dataset or a DataLoader."""

from __future__ import annotations

import pytest
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mlenv
import mlenv.errors
from mlenv import BaseModel, TrainConfig, Trainer, create_model
from mlenv.data import DATASETS


class Classifier(Trainer):
    def get_criterion(self):
        return {"ce": nn.CrossEntropyLoss()}

    def forward_pass(self, batch):
        x, y = batch
        logits = self.model(x)
        return {"ce": self.criterion["ce"](logits, y)}, logits


@pytest.mark.parametrize("wrap", ["tensors", "dataset", "loader"])
def test_fit_evaluate_predict_with_any_data_form(wrap):
    data = DATASETS.create("digits", seed=0)
    forms = {
        "tensors": lambda t: t,
        "dataset": lambda t: TensorDataset(*t),
        "loader": lambda t: DataLoader(TensorDataset(*t), batch_size=32, shuffle=True),
    }
    model = create_model("mlp", seed=0, in_features=64, hidden=[64], out_features=10)
    assert isinstance(model, BaseModel) and model.dim == 10
    trainer = Classifier(TrainConfig(epochs=8, lr=3e-3, grad_clip=1.0, progress=False), model)
    result = trainer.fit(forms[wrap](data.train), forms[wrap](data.val))
    assert {"train_ce", "val_ce", "val_loss"} <= set(result.last)
    metrics = trainer.evaluate(data.test)
    assert metrics["test_loss"] < 0.3
    logits = trainer.predict(data.test)
    accuracy = (logits.argmax(1) == data.test[1]).float().mean().item()
    assert accuracy > 0.9


def _dict_loader(t):
    rows = [{"x": x, "y": y} for x, y in zip(*t, strict=True)]
    return DataLoader(rows, batch_size=32, shuffle=True)


@pytest.mark.parametrize("form", ["dict of tensors", "loader of dict batches"])
def test_criterion_without_subclassing_and_dict_batches(form):
    data = DATASETS.create("digits", seed=0)
    wrap = {
        "dict of tensors": lambda t: {"x": t[0], "y": t[1]},
        "loader of dict batches": _dict_loader,
    }[form]
    model = create_model("mlp", seed=0, in_features=64, hidden=[64], out_features=10)
    config = TrainConfig(epochs=8, lr=3e-3, progress=False, threads=1)
    trainer = Trainer(config, model, criterion=nn.CrossEntropyLoss())
    result = trainer.fit(wrap(data.train), wrap(data.val))
    assert result.last["val_loss"] < 0.3
    logits = trainer.predict(wrap(data.test) if form == "dict of tensors" else data.test)
    assert (logits.argmax(1) == data.test[1]).float().mean().item() > 0.9


def test_a_trainer_without_a_criterion_says_so():
    model = create_model("mlp", seed=0, in_features=4, out_features=2)
    trainer = Trainer(TrainConfig(epochs=1, progress=False), model)
    x = __import__("torch").randn(8, 4)
    with pytest.raises(mlenv.errors.ConfigError, match="has no criterion: pass criterion="):
        trainer.fit((x, x[:, 0].long().clamp(0, 1)))


def test_public_names_are_lazy_and_complete():
    assert mlenv.__version__
    for name in mlenv.__all__:
        assert getattr(mlenv, name) is not None
    with pytest.raises(AttributeError):
        mlenv.nothing_here  # noqa: B018
    assert mlenv.Trainer is Trainer


def test_overfit_batches_with_dict_batches_overfits():
    data = DATASETS.create("digits", seed=0)
    model = create_model("mlp", seed=0, in_features=64, hidden=[64], out_features=10)
    config = TrainConfig(epochs=60, lr=1e-2, overfit_batches=2, progress=False, threads=1)
    trainer = Trainer(config, model, criterion=nn.CrossEntropyLoss())
    result = trainer.fit({"x": data.train[0], "y": data.train[1]})
    assert result.last["train_loss"] < 0.01  # two batches learned by heart
