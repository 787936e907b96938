"""What the steps share: the book's data files, results.json, and the plotting module."""

from __future__ import annotations

import hashlib
import json
import math
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlenv.errors import DataError
from mlenv.train.checkpoint import atomic_write_bytes

# The book's data (MIT licence), fetched once into a cache when no --data is given.
BOOK_URL = "https://raw.githubusercontent.com/oreilly-japan/deep-learning-from-scratch-5/main"
BOOK_FILES = {
    "height.txt": (
        "step02/height.txt",
        "ffd6d443e89b397f7d1282e81e699382de831ca9e1c1d65513afbb8123e9fed7",
    ),
    "height_weight.txt": (
        "step03/height_weight.txt",
        "a149dacbc33240e398020604e2d1f19b11fa9a5bfaccdde3f1c5df98458fe3a0",
    ),
    "old_faithful.txt": (
        "step04/old_faithful.txt",
        "524af5093c5b20e1e044591fd9a4d4202bd86cf5fb7228b66fbb837af98cf144",
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("MLENV_CACHE", Path.home() / ".cache" / "mlenv")) / "dlfs5"


def book_file(name: str, given: str | None = None, base_url: str | None = None) -> Path:
    """The data file a step reads: ``given`` (--data), else ``$MLENV_BOOK_DATA/name``, else the
    cached copy, else downloaded from the book's repository into the cache (checksum checked)."""
    if given:
        path = Path(given)
        if path.is_dir():
            raise DataError(f"{path}: is a folder, not a file; give a file with --data FILE")
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        return path
    folder = os.environ.get("MLENV_BOOK_DATA")
    if folder and (Path(folder) / name).is_file():
        return Path(folder) / name
    cached = cache_dir() / name
    if cached.is_file():
        return cached
    remote, sha256 = BOOK_FILES[name]
    url = f"{base_url or os.environ.get('MLENV_BOOK_URL', BOOK_URL)}/{remote}"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            payload = response.read()
    except OSError as exc:
        raise DataError(
            f"cannot download {name} from {url} ({exc}); pass the file with --data FILE or set "
            "MLENV_BOOK_DATA to a folder holding it"
        ) from None
    if hashlib.sha256(payload).hexdigest() != sha256:
        raise DataError(f"{url}: the download's checksum does not match the book's {name}")
    atomic_write_bytes(cached, payload)
    return cached


def load_matrix(path: Path, columns: int, what: str) -> np.ndarray:
    """The file's numbers, ``columns`` a line (``what`` says what they are, for the error):
    shape (N,) for one column, else (N, columns). A file of another shape, with fewer than two
    rows, or with a value that is not a finite number is a one-line ``DataError``.

    >>> load_matrix(Path("old_faithful.txt"), 2, "duration and waiting time")  # doctest: +SKIP
    """
    import io
    import warnings

    from mlenv.data.text import read_utf8

    text, _ = read_utf8(path, "--data")
    expected = f"{columns} number{'s' if columns > 1 else ''} a line ({what})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty file: reported below
            xs = np.loadtxt(io.StringIO(text), ndmin=2)  # (N, D)
    except ValueError as exc:
        raise DataError(f"{path}: not a file of numbers, expected {expected} ({exc})") from None
    if xs.shape[1] != columns:
        raise DataError(
            f"{path}: {xs.shape[1]} number{'s' if xs.shape[1] != 1 else ''} a line; expected "
            f"{expected}"
        )
    if len(xs) < 2:
        raise DataError(f"{path}: {len(xs)} line(s) of numbers; expected at least 2 of {expected}")
    bad = ~np.isfinite(xs).all(axis=1)
    if bad.any():
        raise DataError(
            f"{path}: data row {int(bad.argmax()) + 1} holds a value that is not finite"
        )
    return xs[:, 0] if columns == 1 else xs


def write_results(folder: Path, results: dict[str, Any]) -> Path:
    target = folder / "results.json"
    text = json.dumps(results, indent=2, default=lambda v: np.asarray(v).tolist()) + "\n"
    atomic_write_bytes(target, text.encode())
    return target


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> str:
    from mlenv.track.plots import save_figure

    save_figure(fig, path)
    return str(path)


@dataclass
class BookOptions:
    """What the training steps (06-10) take from the command line; ``None`` keeps the book's
    value. ``limit`` keeps the first N training digits (tests, quick looks)."""

    epochs: int | None = None
    device: str = "auto"
    sample_steps: int | None = None  # DDIM steps at sampling (None: the full DDPM chain)
    guidance: float | None = None  # classifier-free guidance scale (step10)
    limit: int | None = None
    runs_dir: str | None = None  # where the step's training run goes (default OUT/runs)
    data_dir: str | None = None  # where MNIST lives (see mlenv.data.vision.data_root)
    seed: int = 0
    precision: str | None = None
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        from mlenv.errors import ConfigError

        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"--epochs: accepts a positive integer, got {self.epochs}")
        if self.sample_steps is not None and not 1 <= self.sample_steps <= 1000:
            raise ConfigError(f"--sample-steps: accepts 1 .. 1000, got {self.sample_steps}")
        if self.guidance is not None and not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise ConfigError(f"--guidance: accepts a scale >= 0, got {self.guidance}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit: accepts a positive number of digits, got {self.limit}")


def train_recipe(recipe: str, folder: Path, options: BookOptions, **values: Any) -> Any:
    """Train a packaged recipe with the mlenv Trainer as a normal run (run folder, store,
    checkpoints, resume all apply): ``values`` are the book's settings (recipe fields such as
    ``epochs=30``), then the options override them. Returns ``(RunResult, LoadedRun)``: the run
    and its trained model loaded back from the run folder (the weights ``test_on`` chose)."""
    from mlenv.config import load_recipe, resolve
    from mlenv.train.run import load_run, run_recipe

    if options.epochs is not None:
        values["epochs"] = options.epochs
    values.setdefault("device", options.device)
    values.setdefault("seed", options.seed)
    values.setdefault("runs_dir", options.runs_dir or str(folder / "runs"))
    values.setdefault("progress", options.progress)
    if options.precision is not None:
        values["precision"] = options.precision
    if options.threads is not None:
        values["threads"] = options.threads
    if options.limit is not None:
        values["limit"] = options.limit
    if options.data_dir is not None:  # the official gz files themselves, or a data root
        given = Path(options.data_dir)
        if not given.is_dir():
            raise DataError(f"--data {given}: no such folder (give the MNIST folder)")
        key = "source" if (given / "train-images-idx3-ubyte.gz").is_file() else "root"
        values[key] = str(given)
    argv = []
    for key, value in values.items():
        if isinstance(value, bool):
            argv += [f"--{key}", "true" if value else "false"]
        else:
            argv += [f"--{key}", str(value)]
    cfg = resolve(load_recipe(recipe), argv, prog=f"mlenv book ({recipe})")
    result = run_recipe(cfg)
    return result, load_run(result.run_dir)


def save_grid(images: Any, path: Path, nrow: int, title: str | None = None) -> str:
    """A grid PNG of ``images`` (N, 1, H, W) with values in [0, 1], ``nrow`` images a row."""
    import torch

    plt = pyplot()
    x = torch.as_tensor(images).detach().float().cpu().clamp(0, 1)
    n, _, h, w = x.shape
    rows = (n + nrow - 1) // nrow
    canvas = torch.ones(rows * (h + 2), nrow * (w + 2))
    for i in range(n):
        r, c = divmod(i, nrow)
        canvas[r * (h + 2) + 1 : r * (h + 2) + 1 + h, c * (w + 2) + 1 : c * (w + 2) + 1 + w] = x[
            i, 0
        ]
    fig, ax = plt.subplots(figsize=(nrow * 0.6 + 0.4, rows * 0.6 + (0.6 if title else 0.2)))
    ax.imshow(canvas.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
    if title:
        ax.set_title(title)
    return save(fig, path)


def plot_losses(losses: list[float], path: Path, title: str) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(range(1, len(losses) + 1), losses, marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    return save(fig, path)
