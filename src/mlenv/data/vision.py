"""Image data sets by name: MNIST, Fashion-MNIST and CIFAR-10, read once into uint8 tensors and
cached (``ROOT/<NAME>/mlenv-<split>.pt``, a ``weights_only`` load later).

MNIST: torchvision downloads and checks the official files; offline, the four gz files placed under
``ROOT/MNIST/raw`` (or named by ``source=DIR`` / ``$MLENV_MNIST_SOURCE``, copied there for you) are
found, checked against their MD5 and extracted with no network.

Fashion-MNIST (the same IDX format) and CIFAR-10 are read by the small readers below from the
official files: the four IDX gz files, and CIFAR-10's *binary* version (cifar-10-binary.tar.gz:
records of one label byte and 3,072 pixel bytes, red, green, blue planes of 32x32, row-major).
Its python version is a pickle, which can run code when read; mlenv never unpickles a data file.
Offline, ``source=`` names the gz files' folder (Fashion-MNIST) or the tar.gz (CIFAR-10), checked
against the official MD5s whenever it is given, cache or not; the cache remembers the MD5s of the
files it was built from and is rebuilt for a source with others. Online, torchvision's download
helpers fetch the files and check their MD5. These two data sets stay uint8 (N, C, H, W) tensors:
the classification task converts, augments and normalises each batch on the device.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tarfile
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


def check_mnist_source(source: str | Path) -> Path:
    """``source`` must hold the four official MNIST gz files (torchvision's MD5s): a folder of
    other files (Fashion-MNIST's have the same names) is refused in one line, whatever a cache
    already holds."""
    import hashlib

    from torchvision.datasets import MNIST

    src = Path(source)
    if not src.is_dir():
        raise DataError(
            f"MNIST source {src}: no such folder (it should hold {MNIST_FILES[0]}, ...)"
        )
    expected = {Path(url).name: md5 for url, md5 in MNIST.resources}
    for name in MNIST_FILES:
        if not (src / name).is_file():
            raise DataError(f"MNIST source {src}: {name} is missing")
        if hashlib.md5((src / name).read_bytes()).hexdigest() != expected[name]:
            raise DataError(
                f"MNIST source {src}: {name} is not the official MNIST file (MD5 differs)"
            )
    return src


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
    source = source or os.environ.get("MLENV_MNIST_SOURCE")
    if source:  # the files named are the ones read: checked even when a cache exists
        check_mnist_source(source)
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


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST and CIFAR-10: official files, own readers, uint8 tensors.

FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# the official MD5s of the four gz files (Zalando's; torchvision checks its downloads with them).
# MNIST's files have the same names, so the names alone cannot tell the two apart.
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1923b49d6b8d3c6e3b"  # of the archive: the only one published
CIFAR10_FOLDER = "cifar-10-batches-bin"
CIFAR10_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
CIFAR10_RECORD = 1 + 3 * 32 * 32  # one label byte, then the red, green and blue 32x32 planes
# per-channel mean and std of the training images in [0, 1] (recipes pass them to the task)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def read_idx(path: str | Path) -> torch.Tensor:
    """An IDX file of unsigned bytes (MNIST's format; gzip-compressed when named ``*.gz``) as a
    uint8 tensor of its dimensions. A damaged file is a one-line ``DataError`` naming it."""
    path = Path(path)
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise DataError(f"{path}: not an IDX file of unsigned bytes (wrong magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(torch.tensor(dims).prod()) if dims else header
    if len(data) != expected:
        raise DataError(
            f"{path}: {len(data)} bytes, but its header ({' x '.join(map(str, dims))}) needs "
            f"{expected}: the file is truncated or damaged"
        )
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(dims)


def file_md5(path: Path) -> str:
    """The MD5 of a file, read in 1 MiB pieces (CIFAR-10's archive is 162 MB)."""
    digest = hashlib.md5()
    with path.open("rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def _cached(
    cache: Path, build: object, key: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` from ``cache``, else from ``build()``, then cached (atomically).
    ``key`` (the MD5s of the source files, given with a source) must equal the one the cache
    was built with: a cache from other files (or from before keys) is rebuilt, never returned."""
    from mlenv.train.checkpoint import atomic_write_bytes

    if cache.is_file():
        try:
            stored = torch.load(cache, weights_only=True)
            if key is None or stored.get("source_md5") == key:
                return stored["images"], stored["labels"]
        except Exception as exc:  # a damaged cache is rebuilt from the official files
            print(f"warning: {cache} is unreadable ({exc}); reading the data set again")
    images, labels = build()  # type: ignore[operator]
    buffer = io.BytesIO()
    torch.save({"images": images, "labels": labels, "source_md5": key or ""}, buffer)
    atomic_write_bytes(cache, buffer.getvalue())
    return images, labels


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ConfigError(f"split: accepts train or test, got {split!r}")


def load_fashion_mnist_uint8(
    root: str | Path | None = None,
    split: Literal["train", "test"] = "train",
    source: str | Path | None = None,
    download: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST's ``split`` as (images (N, 28, 28) uint8, labels (N,) int64), from the
    four official IDX gz files in ``source`` or ``ROOT/FashionMNIST/raw`` (downloaded there by
    torchvision, MD5-checked, when missing and ``download``)."""
    _check_split(split)
    base = data_root(root) / "FashionMNIST"
    prefix = "train" if split == "train" else "t10k"
    names = (f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz")
    # the files named are the ones read: checked even when a cache exists
    key = check_fashion_mnist_source(source, names) if source else None

    def build() -> tuple[torch.Tensor, torch.Tensor]:
        folder = Path(source) if source else base / "raw"
        if not all((folder / n).is_file() for n in names):
            if not download:
                raise DataError(
                    f"Fashion-MNIST: {folder} lacks {' or '.join(names)}; put the official gz "
                    "files there or pass their folder with --source DIR"
                )
            from torchvision.datasets import FashionMNIST

            try:
                FashionMNIST(str(base.parent), train=split == "train", download=True)
            except (RuntimeError, OSError) as exc:
                why = " ".join(str(exc).split())
                raise DataError(
                    f"Fashion-MNIST under {base}: {why}. Offline, pass the official gz "
                    "files' folder with --source DIR"
                ) from None
        images, labels = read_idx(folder / names[0]), read_idx(folder / names[1])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"Fashion-MNIST in {folder}: {names[0]} holds {tuple(images.shape)} and "
                f"{names[1]} {tuple(labels.shape)}; expected (N, 28, 28) images and N labels"
            )
        if len(labels) and int(labels.max()) > 9:
            raise DataError(f"{folder / names[1]}: label {int(labels.max())} is not in 0..9")
        return images, labels.long()

    return _cached(base / f"mlenv-{split}.pt", build, key)


def check_fashion_mnist_source(source: str | Path, names: tuple[str, ...]) -> str:
    """The gz files ``names`` in ``source`` must be the official ones (their MD5s): MNIST's
    files, which have the same names, are refused in one line. Returns their MD5s (the cache
    key)."""
    src = Path(source)
    if not src.is_dir():
        raise DataError(f"Fashion-MNIST source {src}: no such folder")
    digests = []
    for name in names:
        if not (src / name).is_file():
            raise DataError(f"Fashion-MNIST source {src}: {name} is missing")
        digest = file_md5(src / name)
        if digest != FASHION_MNIST_MD5[name]:
            raise DataError(
                f"Fashion-MNIST source {src}: {name} is not the official Fashion-MNIST file "
                "(MD5 differs; MNIST's files have the same names)"
            )
        digests.append(digest)
    return " ".join(digests)


def read_cifar10_binary(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch file of CIFAR-10's binary version as (images (N, 3, 32, 32) uint8, labels (N,)
    int64). Each record is a label byte (0..9), then 1024 red, 1024 green and 1024 blue bytes,
    each plane 32 rows of 32 pixels."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: unreadable ({exc.strerror})") from None
    if not data or len(data) % CIFAR10_RECORD:
        raise DataError(
            f"{path}: {len(data)} bytes is not a whole number of {CIFAR10_RECORD}-byte records "
            "(1 label byte + 3072 pixel bytes): truncated, or not CIFAR-10's binary version"
        )
    records = torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(-1, CIFAR10_RECORD)
    labels = records[:, 0].long()
    if int(labels.max()) > 9:
        bad = int(torch.nonzero(labels > 9)[0])
        raise DataError(
            f"{path}: record {bad} has label {int(labels[bad])}, not 0..9: not CIFAR-10's "
            "binary version (CIFAR-100's has two label bytes)"
        )
    return records[:, 1:].reshape(-1, 3, 32, 32).clone(), labels


def check_cifar10_source(source: str | Path) -> str:
    """``source`` must be the official cifar-10-binary.tar.gz (its published MD5, returned as
    the cache key). A folder is refused: the MD5s of the extracted files are not published."""
    src = Path(source)
    if not src.exists():
        raise DataError(f"CIFAR-10 source {src}: no such file or folder")
    if src.is_dir():
        raise DataError(
            f"CIFAR-10 source {src}: a folder cannot be checked (an MD5 is published for the "
            "archive only); pass cifar-10-binary.tar.gz"
        )
    digest = file_md5(src)
    if digest != CIFAR10_MD5:
        raise DataError(
            f"CIFAR-10 source {src}: not the official cifar-10-binary.tar.gz (MD5 differs)"
        )
    return digest


def _cifar10_folder(base: Path, source: str | Path | None, download: bool) -> Path:
    """The folder holding the .bin batch files: extracted from ``source`` (the archive, checked
    by ``check_cifar10_source``), else ``ROOT/cifar-10-batches-bin`` (downloaded and MD5-checked
    when missing)."""
    wanted = (*CIFAR10_FILES["train"], *CIFAR10_FILES["test"])
    folder = base / CIFAR10_FOLDER
    if source:
        base.mkdir(parents=True, exist_ok=True)
        try:  # the "data" filter refuses links and paths that leave ``base``
            with tarfile.open(source) as tar:
                tar.extractall(base, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise DataError(f"CIFAR-10 source {source}: cannot extract it ({exc})") from None
        if not all((folder / n).is_file() for n in wanted):
            raise DataError(
                f"CIFAR-10 source {source}: holds no {CIFAR10_FOLDER}/ with {', '.join(wanted)}"
                " (the binary version, cifar-10-binary.tar.gz)"
            )
        return folder
    if not all((folder / n).is_file() for n in wanted):
        if not download:
            raise DataError(f"CIFAR-10: {folder} lacks the batch files and download is off")
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(CIFAR10_URL, str(base), md5=CIFAR10_MD5)
        except (RuntimeError, OSError) as exc:
            why = " ".join(str(exc).split())
            raise DataError(
                f"CIFAR-10 under {base}: {why}. Offline, pass cifar-10-binary.tar.gz with "
                "--source PATH"
            ) from None
    return folder


def load_cifar10_uint8(
    root: str | Path | None = None,
    split: Literal["train", "test"] = "train",
    source: str | Path | None = None,
    download: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10's ``split`` as (images (N, 3, 32, 32) uint8, labels (N,) int64)."""
    _check_split(split)
    base = data_root(root) / "CIFAR10"
    # the archive named is the one read: checked even when a cache exists
    key = check_cifar10_source(source) if source else None

    def build() -> tuple[torch.Tensor, torch.Tensor]:
        folder = _cifar10_folder(base, source, download)
        parts = [read_cifar10_binary(folder / n) for n in CIFAR10_FILES[split]]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    return _cached(base / f"mlenv-{split}.pt", build, key)


def image_bundle(
    name: str,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    val_size: float,
    limit: int | None,
    seed: int,
    info: dict[str, object],
) -> DataBundle:
    """uint8 images (N, C, H, W) in a bundle: ``limit`` keeps the first N training images (and
    N // 6 test images), ``val_size`` carves a validation fraction from the training images."""
    check_fraction("val_size", val_size, 1.0, zero=True)
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit: accepts a positive number of images, got {limit}")
    (train_x, train_y), (test_x, test_y) = train, test
    if limit is not None:
        train_x, train_y = train_x[:limit], train_y[:limit]
        test_x, test_y = test_x[: max(limit // 6, 1)], test_y[: max(limit // 6, 1)]
    val = None
    if val_size > 0:
        order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))
        n_val = max(1, round(val_size * len(train_x)))
        val = (train_x[order[:n_val]], train_y[order[:n_val]])
        train_x, train_y = train_x[order[n_val:]], train_y[order[n_val:]]
    channels, size = train_x.shape[1], train_x.shape[2]
    return DataBundle(
        train=(train_x, train_y),
        val=val,
        test=(test_x, test_y),
        model_kwargs={
            "in_features": channels * size * size,
            "in_channels": channels,
            "image_size": size,
            "out_features": 10,
        },
        info={
            "name": name,
            "sizes": [len(train_x), len(val[0]) if val is not None else 0, len(test_x)],
            "classes": 10,
            **info,
        },
    )


PROVIDES = ("in_features", "in_channels", "image_size", "out_features")


@register_dataset("fashion-mnist", provides=PROVIDES)
def fashion_mnist(
    root: str | None = None,
    source: str | None = None,
    val_size: float = 0.0,
    limit: int | None = None,
    seed: int = 0,
    download: bool = True,
) -> DataBundle:
    """Fashion-MNIST: 60,000 training and 10,000 test clothing images, 1x28x28 uint8 (the task
    scales them on the device). ``val_size`` carves a validation fraction from the training
    images; ``limit`` keeps the first N training images (a debug subset)."""
    train = load_fashion_mnist_uint8(root, "train", source, download)
    test = load_fashion_mnist_uint8(root, "test", source, download)
    return image_bundle(
        "fashion-mnist",
        (train[0].unsqueeze(1), train[1]),
        (test[0].unsqueeze(1), test[1]),
        val_size,
        limit,
        seed,
        {},
    )


@register_dataset("cifar10", provides=PROVIDES)
def cifar10(
    root: str | None = None,
    source: str | None = None,
    val_size: float = 0.0,
    limit: int | None = None,
    seed: int = 0,
    download: bool = True,
) -> DataBundle:
    """CIFAR-10: 50,000 training and 10,000 test colour images, 3x32x32 uint8, from the binary
    version (``source``: cifar-10-binary.tar.gz or its folder). The task normalises them with
    the per-channel ``image_mean``/``image_std`` the recipes give (``CIFAR10_MEAN``/``_STD``)."""
    return image_bundle(
        "cifar10",
        load_cifar10_uint8(root, "train", source, download),
        load_cifar10_uint8(root, "test", source, download),
        val_size,
        limit,
        seed,
        {"class_names": list(CIFAR10_CLASSES)},
    )
