"""Tasks: what is being learned, separate from the loop that learns it.

A ``Task`` holds the criterion, the forward pass that turns a batch into ``(loss, predictions)``,
the metrics, inference and the report drawn after the test evaluation. The ``Trainer`` owns the
loop (device, precision, accumulation, clipping, checkpoints) and asks its task for these. Recipes
name a task by registry name (the recipe key is ``trainer`` for historical reasons).

>>> task = Task(criterion=torch.nn.MSELoss())        # a supervised task without subclassing
>>> loss, prediction = task.forward_pass(torch.nn.Linear(2, 1), (torch.ones(3, 2), torch.ones(3, 1)),
...                                      task.get_criterion())
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mlenv.errors import ConfigError
from mlenv.registry import Registry
from mlenv.train import losses

TASKS = Registry(
    "task",
    (
        "mlenv.train.tasks",
        "mlenv.train.tasks_regression",
        "mlenv.train.tasks_diffusion",
        "mlenv.train.tasks_mlm",
    ),
)
register_task = TASKS.register
TRAINERS = TASKS  # the name recipes and `mlenv list trainers` have used from the start

INPUT_KEYS = ("x", "input", "inputs")
TARGET_KEYS = ("y", "target", "targets", "label", "labels")


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` of a tuple/list batch or a dict batch (``{"x": ..., "y": ...}``);
    targets are ``None`` when the batch has none."""
    if isinstance(batch, Mapping):
        x = next((batch[k] for k in INPUT_KEYS if k in batch), None)
        if x is None:
            raise ConfigError(
                f"a dict batch needs an input under one of {', '.join(INPUT_KEYS)}; "
                f"got keys {', '.join(map(str, batch))}"
            )
        return x, next((batch[k] for k in TARGET_KEYS if k in batch), None)
    if isinstance(batch, list | tuple):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


class Task:
    """Supervised learning with a given criterion: ``loss = criterion(model(x), y)``.

    Subclasses override what differs: ``get_criterion``, ``forward_pass``, ``inference``,
    ``batch_metrics`` / ``epoch_metrics`` (set ``collect_predictions = True`` for the latter),
    ``metric_modes`` and ``report``. Keyword-only ``__init__`` options with defaults become the
    recipe's "task" flags (``--baselines``, ``--threshold``).
    """

    collect_predictions = False  # True: epoch_metrics gets every prediction and target of a pass

    def __init__(self, criterion: Any = None) -> None:
        self.criterion = criterion

    def get_criterion(self, model: nn.Module | None = None) -> Any:
        """A loss, a tuple/list of losses, or ``{name: loss | (loss, weight)}`` (``model`` is the
        model being trained, for tasks whose loss depends on its output head)."""
        if self.criterion is None:
            raise ConfigError(
                f"{type(self).__name__} has no criterion: pass criterion= to the Trainer "
                "(or the Task), or override get_criterion()"
            )
        return self.criterion

    def forward_pass(self, model: nn.Module, batch: Any, criterion: Any) -> tuple[Any, Any]:
        """``(loss, predictions)``; the loss has the criterion's shape (tensor, list or dict)."""
        x, y = split_batch(batch)
        output = model(x)
        functions = losses.criterion_functions(criterion)
        return losses.apply_criterion(functions, output, y), output

    def inference(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """Predictions for a batch, as ``predict`` returns them."""
        return model(split_batch(batch)[0])

    def model_inputs(self, x: Any) -> Any:
        """The inputs as the model sees them at evaluation (the classification task turns uint8
        images into normalised floats); used to estimate a batch's FLOPs."""
        return x

    def batch_metrics(self, predictions: Any, batch: Any) -> dict[str, torch.Tensor]:
        """Per-batch metrics (means over the batch's ``batch_weight`` units), averaged over the
        epoch."""
        return {}

    def batch_weight(self, predictions: Any, batch: Any) -> torch.Tensor | None:
        """How many units the batch's loss and ``batch_metrics`` are means over: ``None`` for
        its rows (every task whose loss is a mean over samples), else a count (masked-lm: the
        masked tokens). The Trainer weights each batch by it in an epoch's means, and each
        process's share of a global batch by it under ``--devices N``, so that both are means
        over all the units, as one process over one whole batch has them."""
        return None

    def epoch_metrics(self, predictions: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Metrics over a whole pass (AUC, F1, ...), with ``collect_predictions = True``."""
        return {}

    def metric_modes(self) -> dict[str, str]:
        """Metric names (without prefix) this task produces beyond the loss terms, and whether a
        higher (``max``) or lower (``min``) value is better."""
        return {}

    def report(self, trainer: Any, bundle: Any, run: Any) -> dict[str, Any]:
        """After the test evaluation of a recipe run: extra plots and figures for the summary."""
        return {}


@register_task("classification")
class ClassificationTask(Task):
    """Multi-class classification: cross-entropy on logits (B, C), accuracy per epoch.

    Image batches are prepared on the device (``mlenv.data.augment``): uint8 images become
    floats in [0, 1], then, in the training forward pass only, ``augment`` (random crop with
    ``crop_padding``, horizontal flip) and ``mixup``/``cutmix`` (Beta(a, a) mixing of image pairs
    and of their labels, the same ``lam``); then ``(x - image_mean) / image_std`` per channel
    when given. ``label_smoothing`` eps trains towards ``(1 - eps) * onehot + eps / C``.
    """

    def __init__(
        self,
        criterion: Any = None,
        *,
        label_smoothing: float = 0.0,
        augment: Literal["none", "flip", "crop", "crop-flip"] = "none",
        crop_padding: int = 4,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
    ) -> None:
        from mlenv.data.augment import AUGMENTS

        super().__init__(criterion)
        if not 0 <= label_smoothing < 1:  # also refuses NaN
            raise ConfigError(
                f"--label_smoothing: accepts a number in [0, 1), got {label_smoothing}"
            )
        if augment not in AUGMENTS:
            raise ConfigError(f"--augment: accepts {', '.join(AUGMENTS)}, got {augment!r}")
        if isinstance(crop_padding, bool) or not isinstance(crop_padding, int) or crop_padding < 0:
            raise ConfigError(f"--crop_padding: accepts an integer >= 0, got {crop_padding!r}")
        for name, alpha in (("mixup", mixup), ("cutmix", cutmix)):
            if not alpha >= 0:
                raise ConfigError(
                    f"--{name}: accepts a Beta parameter >= 0 (0: off; 0.2 to 1 typical), "
                    f"got {alpha}"
                )
        if (image_mean is None) != (image_std is None) or (
            image_mean is not None and len(image_mean) != len(image_std)
        ):
            raise ConfigError(
                "--image_mean/--image_std: give both, one value per channel each "
                f"(got {image_mean} and {image_std})"
            )
        if image_std is not None and not all(s > 0 for s in image_std):
            raise ConfigError(f"--image_std: accepts numbers > 0, got {image_std}")
        self.label_smoothing = label_smoothing
        self.augment = augment
        self.crop_padding = crop_padding
        self.mixup = mixup
        self.cutmix = cutmix
        self.image_mean = image_mean
        self.image_std = image_std

    def get_criterion(self, model: nn.Module | None = None) -> Any:
        return self.criterion or nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)

    def prepare_images(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        """uint8 -> [0, 1] floats; crop/flip when ``training``; per-channel normalisation."""
        from mlenv.data.augment import augment_images, normalize, to_float

        if x.ndim != 4:  # not images: left as they are
            return x
        x = to_float(x)
        if training and self.augment != "none":
            x = augment_images(x, self.augment, self.crop_padding)
        if self.image_mean is not None:
            x = normalize(x, self.image_mean, self.image_std)
        return x

    def model_inputs(self, x: Any) -> Any:
        return self.prepare_images(x, training=False) if isinstance(x, torch.Tensor) else x

    def forward_pass(self, model: nn.Module, batch: Any, criterion: Any) -> tuple[Any, Any]:
        from mlenv.data.augment import mix_batch, mixed_targets

        x, y = split_batch(batch)
        x = self.prepare_images(x, model.training)
        if model.training and (self.mixup > 0 or self.cutmix > 0) and x.ndim == 4:
            x, perm, lam = mix_batch(x, self.mixup, self.cutmix)
            output = model(x)  # (B, C)
            targets = mixed_targets(y, perm, lam, output.shape[1])  # (B, C) probabilities
            return criterion(output.float(), targets), output
        output = model(x)
        return criterion(output, y), output

    def batch_metrics(self, predictions: torch.Tensor, batch: Any) -> dict[str, torch.Tensor]:
        return {"acc": (predictions.argmax(dim=1) == split_batch(batch)[1]).float().mean()}

    def metric_modes(self) -> dict[str, str]:
        return {"acc": "max"}

    def inference(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return model(self.model_inputs(split_batch(batch)[0])).softmax(dim=1)


RECONSTRUCTIONS = ("bernoulli", "squared-error")


@register_task("vae")
class VAETask(Task):
    """VAE: two named terms, ``reconstruction`` and ``kl`` (KL(q(z | x) || N(0, I)) in nats, per
    sample); the loss is ``reconstruction + kl_weight * kl``.

    ``reconstruction`` is ``bernoulli`` (the negative log-likelihood of the decoder's logits,
    summed over the features, per sample) or ``squared-error`` (the sum of squared errors of the
    mean image ``sigmoid(logits)``, per sample). The book's loss (step 7) is ``squared-error`` with
    ``kl_weight`` 2: its ``-sum(1 + logvar - mu^2 - exp(logvar))`` has no 0.5 factor, so it is
    twice the KL.
    """

    def __init__(
        self,
        criterion: Any = None,
        *,
        reconstruction: Literal["bernoulli", "squared-error"] = "bernoulli",
        kl_weight: float = 1.0,
    ) -> None:
        super().__init__(criterion)
        if reconstruction not in RECONSTRUCTIONS:
            raise ConfigError(
                f"--reconstruction: accepts {' or '.join(RECONSTRUCTIONS)}, got {reconstruction!r}"
            )
        if not kl_weight >= 0:  # also refuses NaN
            raise ConfigError(f"--kl_weight: accepts a number >= 0, got {kl_weight}")
        self.reconstruction = reconstruction
        self.kl_weight = kl_weight

    def reconstruction_loss(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The chosen reconstruction term for logits and targets (B, D), per sample."""
        if self.reconstruction == "squared-error":
            return F.mse_loss(logits.float().sigmoid(), x, reduction="sum") / len(x)
        return F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / len(x)

    def get_criterion(self, model: nn.Module | None = None) -> Any:
        from mlenv.models.vae import kl_to_standard_normal

        return {
            "reconstruction": self.reconstruction_loss,
            "kl": (kl_to_standard_normal, self.kl_weight),
        }

    def forward_pass(
        self, model: nn.Module, batch: Any, criterion: Any
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        x = split_batch(batch)[0]  # labels, if any, are ignored
        logits, mu, logvar = model(x)
        c = criterion
        return {"reconstruction": c["reconstruction"](logits, x), "kl": c["kl"](mu, logvar)}, logits

    def inference(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return model(split_batch(batch)[0])[0].sigmoid()


@register_task("hvae")
class HVAETask(VAETask):
    """Hierarchical VAE (``mlenv.models.hvae``): three named terms, ``reconstruction`` of x from
    z1, ``kl1`` = KL(q(z1 | x) || N(decoder2(z2), I)) with z2 one sample from q(z2 | z1), and
    ``kl2`` = KL(q(z2 | z1) || N(0, I)), each in nats per sample; the loss is
    ``reconstruction + kl_weight * (kl1 + kl2)`` (the book's: ``squared-error``, ``kl_weight`` 2).
    """

    def get_criterion(self, model: nn.Module | None = None) -> Any:
        from mlenv.models.hvae import kl_between_normals

        return {
            "reconstruction": self.reconstruction_loss,
            "kl1": (kl_between_normals, self.kl_weight),
            "kl2": (kl_between_normals, self.kl_weight),
        }

    def forward_pass(
        self, model: nn.Module, batch: Any, criterion: Any
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        x = split_batch(batch)[0]  # labels, if any, are ignored
        out = model(x)
        c = criterion
        terms = {
            "reconstruction": c["reconstruction"](out.logits, x),
            "kl1": c["kl1"](out.mu1, out.logvar1, out.z1_prior_mean),
            "kl2": c["kl2"](out.mu2, out.logvar2),
        }
        return terms, out.logits

    def inference(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return model(split_batch(batch)[0]).logits.sigmoid()


@register_task("language-model")
class LanguageModelTask(Task):
    """Next-token prediction: cross-entropy over (B, T, V) logits, with optional label smoothing
    (``--label-smoothing``; the loss is then the smoothed one). Metrics: token accuracy
    (``acc``), and over a validation pass the plain negative log-likelihood in nats (``nll``),
    bits per token (``bits``: bits per character with a character tokenizer) and perplexity
    (``ppl``)."""

    collect_predictions = True  # predictions are (B, T, 2): each token's NLL and correctness

    def __init__(self, criterion: Any = None, *, label_smoothing: float = 0.0) -> None:
        super().__init__(criterion)
        if not 0 <= label_smoothing < 1:
            raise ConfigError(
                f"--label-smoothing: accepts a number in [0, 1), got {label_smoothing}"
            )
        self.label_smoothing = label_smoothing

    def get_criterion(self, model: nn.Module | None = None) -> Any:
        return self.criterion or nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)

    def forward_pass(
        self, model: nn.Module, batch: Any, criterion: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, targets = split_batch(batch)
        logits = model(tokens)  # (B, T, V)
        loss = criterion(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        with torch.no_grad():
            nll = F.cross_entropy(
                logits.detach().float().transpose(1, 2), targets, reduction="none"
            )
            correct = (logits.detach().argmax(-1) == targets).float()
        return loss, torch.stack([nll, correct], dim=-1)  # (B, T, 2)

    def batch_metrics(self, predictions: torch.Tensor, batch: Any) -> dict[str, torch.Tensor]:
        return {"acc": predictions[..., 1].mean()}

    def epoch_metrics(self, predictions: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        import math

        nll = float(predictions[..., 0].double().mean())
        return {"nll": nll, "bits": nll / math.log(2), "ppl": math.exp(min(nll, 700.0))}

    def metric_modes(self) -> dict[str, str]:
        return {"acc": "max", "nll": "min", "bits": "min", "ppl": "min"}

    def inference(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return model(split_batch(batch)[0]).softmax(dim=-1)


@register_task("binary")
class BinaryTask(Task):
    """Binary classification for ``binary-mlp``'s three output heads (logits, sigmoid,
    two-class). Predictions are the probability of label 1; epoch metrics are accuracy at
    ``threshold``, precision, recall, F1, ROC AUC and log loss."""

    collect_predictions = True

    def __init__(
        self, criterion: Any = None, *, baselines: bool = False, threshold: float = 0.5
    ) -> None:
        super().__init__(criterion)
        if not 0 < threshold < 1:
            raise ConfigError(f"threshold: accepts a probability in (0, 1), got {threshold}")
        self.baselines = baselines
        self.threshold = threshold

    @staticmethod
    def output_of(model: nn.Module) -> str:
        from mlenv.train.base import unwrap_model

        return getattr(unwrap_model(model), "output", "logits")

    def get_criterion(self, model: nn.Module | None = None) -> Any:
        output = self.output_of(model) if model is not None else "logits"
        if output == "two-class":
            return nn.CrossEntropyLoss()
        if output == "sigmoid":
            return nn.BCELoss()  # PyTorch clamps each log term at -100: never NaN or inf
        return nn.BCEWithLogitsLoss()

    def forward_pass(
        self, model: nn.Module, batch: Any, criterion: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = split_batch(batch)
        out = model(x)
        output = self.output_of(model)
        if output == "two-class":
            return criterion(out, y.long()), out.float().softmax(dim=1)[:, 1]
        probability = out if output == "sigmoid" else torch.sigmoid(out)
        return criterion(out, y), probability

    def inference(self, model: nn.Module, batch: Any) -> torch.Tensor:
        out = model(split_batch(batch)[0])
        output = self.output_of(model)
        if output == "two-class":
            return out.softmax(dim=1)[:, 1]
        return out if output == "sigmoid" else torch.sigmoid(out)

    def epoch_metrics(self, predictions: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        from mlenv.train.metrics import binary_metrics

        return binary_metrics(predictions.numpy(), targets.numpy(), self.threshold)

    def metric_modes(self) -> dict[str, str]:
        modes = dict.fromkeys(("acc", "precision", "recall", "f1", "auc"), "max")
        return {**modes, "log_loss": "min"}

    def report(self, trainer: Any, bundle: Any, run: Any) -> dict[str, Any]:
        """After the test evaluation: test predictions, confusion matrix and ROC plots, and the
        baselines."""
        from mlenv.track.plots import plot_confusion, plot_roc

        extra: dict[str, Any] = {}
        y_test = bundle.test[1]
        probability = trainer.predict(bundle.test).numpy()
        labels = bundle.state.get("label_values", ["0", "1"])
        if run is not None:
            import pandas as pd

            table = pd.DataFrame(
                {
                    "row": range(len(y_test)),
                    "label": y_test.numpy().astype(int),
                    "probability": probability,
                    "predicted": (probability > self.threshold).astype(int),
                }
            )
            run.write_text("test_predictions.csv", table.to_csv(index=False, float_format="%.8g"))
            plot_confusion(
                y_test.numpy(),
                probability > self.threshold,
                labels,
                run.plots / "confusion_matrix.png",
            )
            plot_roc(y_test.numpy(), probability, run.plots / "roc_curve.png")
        if self.baselines:
            extra.update(fit_baselines(bundle))
            from mlenv.train.baselines import baseline_warning

            accuracy = float(((probability > self.threshold) == y_test.numpy()).mean())
            line = baseline_warning(accuracy, extra)
            if line:
                extra["baseline_warning"] = line
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
