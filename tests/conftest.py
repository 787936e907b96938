"""Shared fixtures. Tests use the real data in ../shared/data (CI always has it)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), (
        f"the shared data sets are expected at {SHARED_DATA} (see ../shared/data/MANIFEST.md)"
    )
    return SHARED_DATA


@pytest.fixture()
def runs_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs"


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A data root holding MNIST, read through torchvision from the official gz files in
    ../shared/data/mnist (no network), decoded once for the whole session."""
    from mlenv.data.vision import load_mnist_uint8

    root = tmp_path_factory.mktemp("data-root")
    for split in ("train", "test"):
        load_mnist_uint8(root, split, source=shared_data / "mnist")
    return root
