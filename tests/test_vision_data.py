"""MNIST by name: read through torchvision from the official gz files (no network), cached."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import torch

from mlenv.data import DATASETS
from mlenv.data.vision import MNIST_FILES, load_mnist_uint8
from mlenv.errors import ConfigError, DataError


def test_mnist_splits_shapes_scales_and_the_official_first_labels(mnist_root: Path) -> None:
    b = DATASETS.create("mnist", root=str(mnist_root), scale="signed", val_size=0.1, seed=3)
    x, _ = b.train
    assert x.shape == (54000, 1, 28, 28) and x.dtype == torch.float32
    assert b.val[0].shape == (6000, 1, 28, 28) and b.test[0].shape == (10000, 1, 28, 28)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    # the official files: the training split starts 5 0 4 1 9, the test split 7 2 1 0 4
    images, labels = load_mnist_uint8(mnist_root, "train")
    assert labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert load_mnist_uint8(mnist_root, "test")[1][:5].tolist() == [7, 2, 1, 0, 4]
    assert int(images[0].sum()) == 27525  # the first digit's pixel sum
    assert b.model_kwargs == {
        "in_features": 784,
        "in_channels": 1,
        "image_size": 28,
        "out_features": 10,
    }


def test_validation_digits_come_from_training_digits_only(mnist_root: Path) -> None:
    flat = DATASETS.create("mnist", root=str(mnist_root), layout="flat", val_size=0.05, seed=0)
    train_x, val_x, test_x = flat.train[0], flat.val[0], flat.test[0]
    assert train_x.shape[1] == 784 and float(train_x.max()) == 1.0
    assert len(train_x) + len(val_x) == 60000 and len(test_x) == 10000
    # every validation digit is a training-split digit: none is a test digit
    all_train = load_mnist_uint8(mnist_root, "train")[0].reshape(60000, -1).float() / 255
    val_hashes = {hash(r.numpy().tobytes()) for r in val_x}
    train_hashes = {hash(r.numpy().tobytes()) for r in train_x}
    source_hashes = {hash(r.numpy().tobytes()) for r in all_train}
    assert val_hashes <= source_hashes
    assert len(val_hashes & train_hashes) < 60  # MNIST holds a few exact duplicates, no more
    other = DATASETS.create("mnist", root=str(mnist_root), layout="flat", val_size=0.05, seed=1)
    assert not torch.equal(other.val[0], val_x)  # the carve depends on the seed


def test_limit_keeps_the_first_digits(mnist_root: Path) -> None:
    b = DATASETS.create("mnist", root=str(mnist_root), limit=600)
    assert len(b.train[0]) == 600 and len(b.test[0]) == 100
    assert b.train[1][:5].tolist() == [5, 0, 4, 1, 9]


def test_offline_read_from_the_gz_files_and_a_damaged_cache_is_rebuilt(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "gz"
    source.mkdir()
    for name in MNIST_FILES:
        shutil.copyfile(shared_data / "mnist" / name, source / name)
    images, _ = load_mnist_uint8(tmp_path / "root", "test", source=source)
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
    cache = tmp_path / "root" / "MNIST" / "mlenv-test.pt"
    assert cache.is_file() and cache.stat().st_mode & 0o044  # readable by others (umask)
    cache.write_bytes(b"not a tensor file")
    again, _ = load_mnist_uint8(tmp_path / "root", "test")
    assert torch.equal(again, images)
    assert "unreadable" in capsys.readouterr().out


def test_a_corrupt_download_is_refused(tmp_path: Path, shared_data: Path) -> None:
    source = tmp_path / "gz"
    source.mkdir()
    for name in MNIST_FILES:
        shutil.copyfile(shared_data / "mnist" / name, source / name)
    with gzip.open(source / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + b"\x00" * 20)  # wrong content: MD5 differs
    with pytest.raises(DataError, match="not the official MNIST file") as caught:
        load_mnist_uint8(tmp_path / "root", "test", source=source)
    assert "t10k-labels-idx1-ubyte.gz" in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "root" / "MNIST" / "mlenv-test.pt").exists()


def test_a_source_is_checked_even_when_a_cache_exists(tmp_path, mnist_root):
    """--data naming other files (Fashion-MNIST's have the same names) must not quietly train
    on the MNIST cached earlier (review finding)."""
    source = tmp_path / "other"
    source.mkdir()
    for name in MNIST_FILES:
        with gzip.open(source / name, "wb") as f:
            f.write(b"garbage")
    with pytest.raises(DataError, match="not the official MNIST file"):
        load_mnist_uint8(mnist_root, "train", source=source)


def test_torchvision_checks_what_lies_in_raw(tmp_path, shared_data):
    """Without a source, torchvision checks the MD5 of the files in ROOT/MNIST/raw, finds a bad
    one and tries the network, which is closed here: one line, no cache."""
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copyfile(shared_data / "mnist" / name, raw / name)
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + b"\x00" * 20)
    with pytest.raises(DataError, match="MNIST under") as caught:
        load_mnist_uint8(tmp_path / "root", "test")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "root" / "MNIST" / "mlenv-test.pt").exists()


def test_bad_arguments_name_the_flag(tmp_path: Path, mnist_root: Path) -> None:
    with pytest.raises(DataError, match="no such folder"):
        load_mnist_uint8(tmp_path / "r", "test", source=tmp_path / "missing")
    with pytest.raises(ConfigError, match="--layout"):
        DATASETS.create("mnist", root=str(mnist_root), layout="grid")
    with pytest.raises(ConfigError, match="--val-size"):
        DATASETS.create("mnist", root=str(mnist_root), val_size=1.0)
    with pytest.raises(ConfigError, match="--limit"):
        DATASETS.create("mnist", root=str(mnist_root), limit=0)
    with pytest.raises(ConfigError, match="--scale"):
        DATASETS.create("mnist", root=str(mnist_root), scale="bytes", limit=10)
