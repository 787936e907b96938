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


@register_trainer("binary")
class BinaryTrainer(Trainer):
    """Binary classification for ``binary-mlp``'s three output heads (logits, sigmoid,
    two-class). Predictions are the probability of label 1; epoch metrics are accuracy at
    ``threshold``, precision, recall, F1, ROC AUC and log loss."""

    collect_predictions = True

    def __init__(
        self, *args: Any, baselines: bool = False, threshold: float = 0.5, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.baselines = baselines
        self.threshold = threshold

    @property
    def output(self) -> str:
        return getattr(self.model, "output", getattr(self.model, "_orig_mod", self.model).output)

    def get_criterion(self) -> Any:
        if self.output == "two-class":
            return nn.CrossEntropyLoss()
        if self.output == "sigmoid":
            return nn.BCELoss()  # PyTorch clamps each log term at -100: never NaN or inf
        return nn.BCEWithLogitsLoss()

    def forward_pass(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        out = self.model(x)
        if self.output == "two-class":
            return self.criterion(out, y.long()), out.float().softmax(dim=1)[:, 1]
        probability = out if self.output == "sigmoid" else torch.sigmoid(out)
        return self.criterion(out, y), probability

    def inference(self, batch: Any) -> torch.Tensor:
        out = self.model(batch[0])
        if self.output == "two-class":
            return out.softmax(dim=1)[:, 1]
        return out if self.output == "sigmoid" else torch.sigmoid(out)

    def batch_metrics(self, predictions: torch.Tensor, batch: Any) -> dict[str, torch.Tensor]:
        return {}  # accuracy and the rest come from epoch_metrics over the whole pass

    def epoch_metrics(self, predictions: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        from mlenv.train.metrics import binary_metrics

        return binary_metrics(predictions.numpy(), targets.numpy(), self.threshold)

    def report(self, bundle: Any, run: Any) -> dict[str, Any]:
        """After the test evaluation: confusion matrix and ROC plots, and the baselines."""
        from mlenv.track.plots import plot_confusion, plot_roc

        extra: dict[str, Any] = {}
        y_test = bundle.test[1]
        probability = self.predict(bundle.test).numpy()
        labels = bundle.state.get("label_values", ["0", "1"])
        if run is not None:
            import pandas as pd

            from mlenv.train.checkpoint import atomic_write_bytes

            table = pd.DataFrame(
                {
                    "row": range(len(y_test)),
                    "label": y_test.numpy().astype(int),
                    "probability": probability,
                    "predicted": (probability > self.threshold).astype(int),
                }
            )
            csv = table.to_csv(index=False, float_format="%.8g").encode()
            atomic_write_bytes(run.path / "test_predictions.csv", csv)
            plot_confusion(
                y_test.numpy(),
                probability > self.threshold,
                labels,
                run.plots / "confusion_matrix.png",
            )
            plot_roc(y_test.numpy(), probability, run.plots / "roc_curve.png")
        if self.baselines:
            extra.update(fit_baselines(bundle))
        return extra


def fit_baselines(bundle: Any) -> dict[str, float]:
    """scikit-learn's LogisticRegression and HistGradientBoosting on the same split."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    (x, y), (x_test, y_test) = bundle.train, bundle.test
    out: dict[str, float] = {}
    for name, model in (
        ("logreg", LogisticRegression(max_iter=2000)),
        ("hgb", HistGradientBoostingClassifier(random_state=0)),
    ):
        model.fit(x.numpy(), y.numpy())
        probability = model.predict_proba(x_test.numpy())[:, 1]
        out[f"baseline_{name}_test_acc"] = float(((probability > 0.5) == y_test.numpy()).mean())
        out[f"baseline_{name}_test_auc"] = float(roc_auc_score(y_test.numpy(), probability))
    return out
