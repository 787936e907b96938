"""The judge of generated digits: a trained MNIST classifier that reads samples as digits.

Step 10 asks a diffusion model for digit ``d`` and counts how often the judge reads ``d``. The judge
is recipe ``mnist-cnn`` trained once by the mlenv Trainer (a normal run) and cached as two files:

- ``<cache>/judges/mnist-cnn.safetensors``: the weights (safetensors: no pickle, no code);
- ``<cache>/judges/mnist-cnn.json``: its record: the model and its arguments, the pixel scale it
  was trained on, its accuracy on the 10,000 MNIST test digits (measured when it was saved),
  the recipe values it was trained with, and the weights' SHA-256.

``<cache>`` is ``~/.cache/mlenv`` (``$MLENV_CACHE`` moves it); ``$MLENV_JUDGE`` names a ready
weights file instead (its record lies beside it). A judge below 99% test accuracy is refused.
To train it elsewhere (a GPU) and bring the run folder back::

    mlenv train mnist-cnn --device cuda
    python -m mlenv.book.judge runs/mnist-cnn/<run-id>          # writes the cache
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from mlenv.book._common import BookOptions, cache_dir, train_recipe
from mlenv.errors import CheckpointError, ConfigError, DataError, MlenvError

JUDGE_RECIPE = "mnist-cnn"
MIN_TEST_ACCURACY = 0.99
IMAGE_SHAPE = (1, 28, 28)


def judges_dir() -> Path:
    """Where judges are cached: ``~/.cache/mlenv/judges`` (``$MLENV_CACHE/judges``)."""
    return cache_dir().parent / "judges"


def judge_path() -> Path:
    """The judge's weights file: ``$MLENV_JUDGE``, else the cached one."""
    given = os.environ.get("MLENV_JUDGE")
    return Path(given) if given else judges_dir() / f"{JUDGE_RECIPE}.safetensors"


def record_path(weights: str | Path) -> Path:
    """The judge's record beside its weights: ``mnist-cnn.safetensors`` -> ``mnist-cnn.json``."""
    return Path(weights).with_suffix(".json")


def _mnist_location(data_dir: str | Path | None, trained_data: dict[str, Any]) -> dict[str, Any]:
    """``root``/``source`` of MNIST for ``load_mnist_uint8``: ``data_dir`` (a data root, or the
    folder of the official gz files), else where the run read it, else the defaults."""
    if data_dir is not None:
        given = Path(data_dir)
        if not given.is_dir():
            raise DataError(f"--data {given}: no such folder (give the MNIST folder)")
        if (given / "train-images-idx3-ubyte.gz").is_file():
            return {"root": None, "source": given}
        return {"root": given, "source": None}
    found = {k: trained_data.get(k) for k in ("root", "source")}
    return {k: v if v and Path(v).is_dir() else None for k, v in found.items()}


@torch.no_grad()
def classify(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The digit ``model`` reads in each image: images (N, 1, 28, 28) on the model's scale ->
    labels (N,) int64, on the CPU."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = [
            model(images[i : i + batch_size].to(device)).argmax(dim=1).cpu()  # (b,)
            for i in range(0, len(images), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(out)


def to_judge_scale(images: torch.Tensor, scale: str) -> torch.Tensor:
    """Images in [0, 1] (pixels: what the book steps draw) -> the scale the judge learned."""
    x = images.float().clamp(0.0, 1.0)
    return x if scale == "unit" else x * 2.0 - 1.0


def measure_test_accuracy(
    model: torch.nn.Module, scale: str, root: Any = None, source: Any = None
) -> float:
    """``model``'s accuracy on the 10,000 MNIST test digits."""
    from mlenv.data.vision import load_mnist_uint8, scale_images

    images, labels = load_mnist_uint8(root, "test", source)  # (10000, 28, 28) uint8, (10000,)
    x = scale_images(images, scale).unsqueeze(1)  # (10000, 1, 28, 28)
    return float((classify(model, x) == labels).float().mean())


def save_judge(
    run_dir: str | Path, path: str | Path | None = None, data_dir: str | Path | None = None
) -> dict[str, Any]:
    """Make the judge from a finished ``mnist-cnn`` run (any MNIST classification run of image
    layout): its weights as safetensors at ``path`` (default: ``judge_path()``) and its record
    beside them, with the accuracy measured here on the MNIST test digits (``data_dir``: where
    MNIST lies, else where the run read it). Returns the record.

    >>> save_judge("runs/mnist-cnn/<run-id>")["test_accuracy"]  # doctest: +SKIP
    0.9941
    """
    from safetensors.torch import save

    from mlenv.models import MODELS
    from mlenv.train.checkpoint import atomic_write_bytes, file_sha256
    from mlenv.train.run import load_run

    loaded = load_run(run_dir, prog="mlenv judge")
    cfg = loaded.config
    if cfg.dataset != "mnist" or cfg.trainer != "classification":
        raise ConfigError(
            f"judge: {run_dir} is a {cfg.trainer} run on {cfg.dataset}; a judge is an MNIST "
            f"classifier (train one with `mlenv train {JUDGE_RECIPE}`)"
        )
    if cfg.data.get("layout") != "image":
        raise ConfigError(f"judge: {run_dir} was trained on flat digits; a judge reads images")
    scale = cfg.data.get("scale", "unit")
    model = loaded.model
    accuracy = measure_test_accuracy(model, scale, **_mnist_location(data_dir, cfg.data))
    params = inspect.signature(MODELS.get(cfg.model)).parameters
    from_data = loaded.preprocessing.get("model_kwargs", {})
    model_args = {k: v for k, v in from_data.items() if k in params} | dict(cfg.model_args)
    weights = Path(path) if path is not None else judge_path()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(weights, save(state))
    record = {
        "recipe": cfg.recipe,
        "model": cfg.model,
        "model_args": model_args,
        "scale": scale,
        "test_accuracy": accuracy,
        "test_digits": 10000,
        "run_dir": str(Path(run_dir).absolute()),
        "checkpoint": str(loaded.checkpoint_path),
        "trained_with": cfg.to_flat(),
        "weights_sha256": file_sha256(weights),
    }
    text = json.dumps(record, indent=2, default=str) + "\n"
    atomic_write_bytes(record_path(weights), text.encode())
    return record


def read_record(path: str | Path) -> dict[str, Any]:
    """The record of the judge at ``path``; a missing or unreadable one is a one-line error."""
    record_file = record_path(path)
    if not record_file.is_file():
        raise CheckpointError(
            f"{record_file}: missing, so the judge {path} has no recorded test accuracy; "
            "make it with `python -m mlenv.book.judge RUN_DIR`"
        )
    try:
        record = json.loads(record_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{record_file}: not a judge record ({exc})") from None
    if not isinstance(record, dict):
        raise CheckpointError(f"{record_file}: not a judge record (not a JSON object)")
    missing = [k for k in ("model", "model_args", "scale") if k not in record]
    if missing:
        raise CheckpointError(f"{record_file}: not a judge record (no {', '.join(missing)})")
    return record


def load_judge(
    path: str | Path | None = None, min_accuracy: float = MIN_TEST_ACCURACY, device: str = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``(model, record)`` of the judge at ``path`` (default ``judge_path()``), in eval mode on
    ``device``. Refused in one line: a missing file, weights that are not the ones recorded, a
    recorded test accuracy below ``min_accuracy``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from mlenv.models import create_model
    from mlenv.runtime.device import choose_device
    from mlenv.train.checkpoint import file_sha256

    weights = Path(path) if path is not None else judge_path()
    if not weights.is_file():
        raise CheckpointError(
            f"{weights}: no judge there; train one with `mlenv train {JUDGE_RECIPE}` and save "
            "it with `python -m mlenv.book.judge RUN_DIR`"
        )
    record = read_record(weights)
    if file_sha256(weights) != record.get("weights_sha256"):
        raise CheckpointError(
            f"{weights}: the weights are not the ones its record {record_path(weights)} "
            "describes (SHA-256 differs); save the judge again from its run"
        )
    accuracy = record.get("test_accuracy")
    if not isinstance(accuracy, int | float) or accuracy < min_accuracy:
        raise CheckpointError(
            f"{weights}: the judge's recorded test accuracy {accuracy} is below {min_accuracy}; "
            f"a judge must read real digits reliably (train `{JUDGE_RECIPE}` for its full epochs)"
        )
    try:
        state = load_file(weights)
        model = create_model(record["model"], **record["model_args"])
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError, MlenvError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{weights}: cannot load the judge ({first})") from None
    return model.to(choose_device(device)).eval(), record


def train_judge(
    options: BookOptions, path: str | Path | None = None, **values: Any
) -> dict[str, Any]:
    """Train ``mnist-cnn`` with the mlenv Trainer (a normal run, in ``options.runs_dir`` or the
    judges folder) and save it as the judge at ``path``. The recipe's epochs and all of its
    digits are used whatever the step's ``--epochs``/``--limit``; ``values`` override recipe
    fields (tests train a brief judge this way). Returns the judge's record."""
    # the judges folder is mlenv's own cache: made here (on a new machine it is not there yet)
    judges_dir().mkdir(parents=True, exist_ok=True)
    runs = options.runs_dir or str(judges_dir() / "runs")
    judge_options = dataclasses.replace(options, epochs=None, limit=None, runs_dir=runs)
    result, _ = train_recipe(JUDGE_RECIPE, judges_dir(), judge_options, **values)
    return save_judge(result.run_dir, path, options.data_dir)


def mnist_judge(
    options: BookOptions, min_accuracy: float = MIN_TEST_ACCURACY, path: str | Path | None = None
) -> torch.nn.Module:
    """The judge (eval mode, on ``options.device``): the file at ``path``/``$MLENV_JUDGE``/the
    cache; with neither a path nor ``$MLENV_JUDGE`` and no cached judge, one is trained first
    (the ``mnist-cnn`` recipe: some minutes on a CPU)."""
    return _judge(options, min_accuracy, path)[0]


def _judge(
    options: BookOptions, min_accuracy: float, path: str | Path | None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    weights = Path(path) if path is not None else judge_path()
    if path is None and "MLENV_JUDGE" not in os.environ and not weights.is_file():
        print(f"no judge at {weights}: training {JUDGE_RECIPE} once (cached for later runs)")
        train_judge(options, weights)
    return load_judge(weights, min_accuracy, options.device)


def judge_samples(
    images: torch.Tensor,
    labels: torch.Tensor,
    options: BookOptions,
    min_accuracy: float = MIN_TEST_ACCURACY,
    path: str | Path | None = None,
) -> dict[str, Any]:
    """How often the judge reads each generated image as the digit it was asked to be: images
    (N, 1, 28, 28) in [0, 1] (pixels), labels (N,) the digits asked for. Returns ``overall`` (fraction
    correct), ``per_digit`` (``{"0": fraction, ...}`` for each digit asked for) and
    ``judge_test_acc`` (the judge's own accuracy on real test digits).

    >>> judge_samples(samples, torch.arange(10).repeat(10), BookOptions())  # doctest: +SKIP
    {'overall': 0.93, 'per_digit': {'0': 1.0, ...}, 'judge_test_acc': 0.9942}
    """
    images = torch.as_tensor(images)
    labels = torch.as_tensor(labels)
    if images.ndim != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise DataError(f"judge: expects images (N, 1, 28, 28), got shape {tuple(images.shape)}")
    if labels.ndim != 1 or len(labels) != len(images) or len(images) == 0:
        raise DataError(
            f"judge: expects one label per image, got labels of shape {tuple(labels.shape)} "
            f"for {len(images)} images"
        )
    if labels.is_floating_point() or labels.min() < 0 or labels.max() > 9:
        raise DataError("judge: labels must be the digits 0..9 (integers)")
    if not torch.isfinite(images).all():
        raise DataError("judge: some images hold values that are not finite")
    model, record = _judge(options, min_accuracy, path)
    predicted = classify(model, to_judge_scale(images, record["scale"]))  # (N,)
    labels = labels.long().cpu()
    correct = (predicted == labels).float()  # (N,)
    per_digit = {str(d): float(correct[labels == d].mean()) for d in sorted(set(labels.tolist()))}
    return {
        "overall": float(correct.mean()),
        "per_digit": per_digit,
        "judge_test_acc": float(record["test_accuracy"]),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m mlenv.book.judge RUN_DIR [--out FILE] [--data DIR]``: save a trained
    ``mnist-cnn`` run as the judge."""
    parser = argparse.ArgumentParser(
        prog="python -m mlenv.book.judge",
        description="Save a trained mnist-cnn run as the judge of generated digits.",
    )
    parser.add_argument("run_dir", help="the run folder (runs/mnist-cnn/<run-id>)")
    parser.add_argument("--out", help=f"the weights file (default {judge_path()})")
    parser.add_argument("--data", help="where MNIST lies (a data root or the gz files' folder)")
    args = parser.parse_args(argv)
    try:
        record = save_judge(args.run_dir, args.out, args.data)
    except MlenvError as exc:
        print(f"mlenv: error: {exc}", file=sys.stderr)
        return 2
    out = args.out or judge_path()
    print(f"judge saved: {out} (test accuracy {record['test_accuracy']:.4f})")
    if record["test_accuracy"] < MIN_TEST_ACCURACY:
        print(f"warning: below {MIN_TEST_ACCURACY}; this judge will be refused", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
