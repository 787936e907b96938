"""What every model check needs: a Trainer around a copy of the model (the checks train it, the
caller's model stays as it was), set up on one batch, and that batch."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from mlenv.config import TrainConfig


@dataclass
class Probe:
    """A set-up Trainer on a copy of the model, and one training batch on its device."""

    trainer: Any
    batch: Any

    @property
    def model(self) -> torch.nn.Module:
        return self.trainer.raw_model

    def loss(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
        """(total, named terms, predictions) of the batch, with the graph for backward."""
        return self.trainer.compute_loss(self.batch)

    def outputs(self) -> Any:
        """The model's own output for the batch's inputs (logits for a classifier), without
        a graph: what a task's predictions may have transformed."""
        from mlenv.train.tasks import split_batch

        x = split_batch(self.batch)[0]
        with torch.no_grad():  # uint8 images become the floats the model takes, as in training
            return self.model(self.trainer.task.model_inputs(x))

    def optimizer(self, lr: float) -> torch.optim.Optimizer:
        """The run's optimizer (its kind, momentum, weight decay) at ``lr``. The lr is set on
        the optimizer's groups, not on the config: a config with ``lr`` below the run's
        ``min_lr`` (the range test's 1e-7 start) is refused by its validation."""
        optimizer = self.trainer.configure_optimizer()
        for group in optimizer.param_groups:
            group["lr"] = lr
        return optimizer


def first_batch(data: Any, batch_size: int, seed: int) -> Any:
    """A shuffled batch of ``batch_size`` training examples (tensors, a Dataset or a loader)."""
    from mlenv.data.batching import make_batches

    return next(iter(make_batches(data, batch_size, shuffle=True, seed=seed)))


def make_probe(model: torch.nn.Module, task: Any, config: TrainConfig, batch: Any) -> Probe:
    """A Trainer (no run folder, no progress bars, not compiled) on a deep copy of ``model``."""
    from mlenv.train.trainer import Trainer

    config = dataclasses.replace(config, progress=False, compile=False, fast_dev_run=False)
    trainer = Trainer(config, copy.deepcopy(model), task=task)
    trainer.setup_model(trainer.to_device(batch))
    trainer.model.train()
    return Probe(trainer, trainer.to_device(batch))
