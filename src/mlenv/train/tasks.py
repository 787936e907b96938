"""Trainers for the common shapes of task, registered by name for recipes. Each overrides only
what differs from the default loop."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlenv.registry import Registry
from mlenv.train.trainer import Trainer

TRAINERS = Registry("trainer", ("mlenv.train.tasks",))
register_trainer = TRAINERS.register


@register_trainer("classification")
class ClassificationTrainer(Trainer):
    """Multi-class classification: cross-entropy on logits (B, C), accuracy per epoch."""

    def get_criterion(self) -> Any:
        return nn.CrossEntropyLoss()

    def batch_metrics(self, predictions: torch.Tensor, batch: Any) -> dict[str, torch.Tensor]:
        return {"acc": (predictions.argmax(dim=1) == batch[1]).float().mean()}

    def inference(self, batch: Any) -> torch.Tensor:
        return self.model(batch[0]).softmax(dim=1)


@register_trainer("vae")
class VAETrainer(Trainer):
    """VAE: two named terms, ``reconstruction`` (Bernoulli NLL per sample) and ``kl``."""

    def get_criterion(self) -> Any:
        def reconstruction(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / len(x)

        def kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
            from mlenv.models.vae import kl_to_standard_normal

            return kl_to_standard_normal(mu, logvar)

        return {"reconstruction": reconstruction, "kl": kl}

    def forward_pass(self, batch: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        x = batch[0]  # labels, if any, are ignored
        logits, mu, logvar = self.model(x)
        c = self.criterion
        return {"reconstruction": c["reconstruction"](logits, x), "kl": c["kl"](mu, logvar)}, logits

    def inference(self, batch: Any) -> torch.Tensor:
        return self.model(batch[0])[0].sigmoid()


@register_trainer("language-model")
class LanguageModelTrainer(Trainer):
    """Next-token prediction: cross-entropy over (B, T, V) logits; reports perplexity."""

    def get_criterion(self) -> Any:
        return nn.CrossEntropyLoss()

    def forward_pass(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, targets = batch
        logits = self.model(tokens)  # (B, T, V)
        loss = self.criterion(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return loss, logits

    def inference(self, batch: Any) -> torch.Tensor:
        return self.model(batch[0]).softmax(dim=-1)
