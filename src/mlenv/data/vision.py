"""Image data sets by name (MNIST), read once through torchvision into uint8 tensors and cached.

torchvision downloads and checks the official files; offline, the four gz files placed under
``ROOT/MNIST/raw`` (or named by ``source=DIR`` / ``$MLENV_MNIST_SOURCE``, copied there for you) are
found, checked against their MD5 and extracted with no network. The decoded tensors are cached as
``ROOT/MNIST/mlenv-<split>.pt`` so later runs read one file (``weights_only`` load).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Literal

import torch

from mlenv.data import DataBundle, register_dataset
from mlenv.data.splits import check_fraction
from mlenv.errors import ConfigError, DataError

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def data_root(root: str | Path | None = None) -> Path:
    """Where data sets live: ``root``, else ``$MLENV_DATA_DIR``, else ``~/.cache/mlenv/data``."""
    if root:
        return Path(root)
    env = os.environ.get("MLENV_DATA_DIR")
    return Path(env) if env else Path.home() / ".cache" / "mlenv" / "data"


def _place_offline_files(raw: Path, source: str | Path | None) -> None:
    """Copy the official gz files from ``source`` into ``raw`` where torchvision looks first."""
    source = source or os.environ.get("MLENV_MNIST_SOURCE")
    if not source:
        return
    src = Path(source)
    if not src.is_dir():
        raise DataError(
            f"MNIST source {src}: no such folder (it should hold {MNIST_FILES[0]}, ...)"
        )
    raw.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        if (raw / name).is_file() or (raw / name[:-3]).is_file():
            continue
        if not (src / name).is_file():
            raise DataError(f"MNIST source {src}: {name} is missing")
        shutil.copyfile(src / name, raw / name)


def load_mnist_uint8(
    root: str | Path | None = None,
    split: Literal["train", "test"] = "train",
    source: str | Path | None = None,
    download: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST's ``split`` as (images (N, 28, 28) uint8, labels (N,) int64)."""
    from mlenv.train.checkpoint import atomic_write_bytes

    if split not in ("train", "test"):
        raise ConfigError(f"split: accepts train or test, got {split!r}")
    base = data_root(root)
    cache = base / "MNIST" / f"mlenv-{split}.pt"
    if cache.is_file():
        try:
            stored = torch.load(cache, weights_only=True)
            return stored["images"], stored["labels"]
        except Exception as exc:  # a damaged cache is rebuilt from the official files
            print(f"warning: {cache} is unreadable ({exc}); reading MNIST again")
    _place_offline_files(base / "MNIST" / "raw", source)
    from torchvision.datasets import MNIST

    try:
        ds = MNIST(str(base), train=split == "train", download=download)
    except (RuntimeError, OSError) as exc:
        why = " ".join(str(exc).split())
        raise DataError(
            f"MNIST under {base}: {why}. Offline, put the four official gz files in "
            f"{base / 'MNIST' / 'raw'} or pass their folder with source=DIR "
            "(MLENV_MNIST_SOURCE)"
        ) from None
    images, labels = ds.data.clone(), ds.targets.clone().long()
    import io

    buffer = io.BytesIO()
    torch.save({"images": images, "labels": labels}, buffer)
    atomic_write_bytes(cache, buffer.getvalue())
    return images, labels


def scale_images(images: torch.Tensor, scale: str) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1] (``unit``) or [-1, 1] (``signed``)."""
    x = images.float() / 255.0
    if scale == "signed":
        return x * 2.0 - 1.0
    if scale == "unit":
        return x
    raise ConfigError(f"--scale: accepts unit or signed, got {scale!r}")


@register_dataset("mnist", provides=("in_features", "in_channels", "image_size", "out_features"))
def mnist(
    root: str | None = None,
    source: str | None = None,
    layout: Literal["image", "flat"] = "image",
    scale: Literal["unit", "signed"] = "unit",
    val_size: float = 0.0,
    limit: int | None = None,
    seed: int = 0,
    download: bool = True,
) -> DataBundle:
    """MNIST: 60,000 training and 10,000 test digits. ``layout`` image gives (N, 1, 28, 28),
    flat (N, 784); ``scale`` unit is [0, 1], signed [-1, 1] (diffusion). ``val_size`` carves a
    validation split (a fraction) from the training digits, never from the test ones; ``limit``
    keeps the first N training digits (a debug subset)."""
    if layout not in ("image", "flat"):
        raise ConfigError(f"--layout: accepts image or flat, got {layout!r}")
    check_fraction("val_size", val_size, 1.0, zero=True)
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit: accepts a positive number of digits, got {limit}")
    train_x, train_y = load_mnist_uint8(root, "train", source, download)
    test_x, test_y = load_mnist_uint8(root, "test", source, download)
    if limit is not None:
        train_x, train_y = train_x[:limit], train_y[:limit]
        test_x, test_y = test_x[: max(limit // 6, 1)], test_y[: max(limit // 6, 1)]
    val = None
    if val_size > 0:
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(train_x), generator=g)
        n_val = max(1, round(val_size * len(train_x)))
        val_idx, train_idx = order[:n_val], order[n_val:]
        val = (train_x[val_idx], train_y[val_idx])
        train_x, train_y = train_x[train_idx], train_y[train_idx]

    def pack(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = scale_images(images, scale)
        x = x.reshape(len(x), -1) if layout == "flat" else x.unsqueeze(1)
        return x, labels

    return DataBundle(
        train=pack(train_x, train_y),
        val=pack(*val) if val is not None else None,
        test=pack(test_x, test_y),
        model_kwargs={
            "in_features": 28 * 28,
            "in_channels": 1,
            "image_size": 28,
            "out_features": 10,
        },
        info={
            "name": "mnist",
            "sizes": [len(train_x), len(val[0]) if val is not None else 0, len(test_x)],
            "classes": 10,
        },
    )
