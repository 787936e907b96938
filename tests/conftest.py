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


# a brief judge of generated digits: 2,000 training digits, narrow layers, 2 epochs (a few
# seconds on one thread; the real judge is held to 0.99, this one to what it reaches)
BRIEF_JUDGE = {
    "epochs": 2,
    "limit": 2000,
    "widths": [8, 16],
    "hidden": 32,
    "dropout": 0.0,
    "head_dropout": 0.0,
    "batch_size": 64,
    "lr": 0.01,
}


@pytest.fixture(scope="session")
def brief_judge(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> tuple[Path, dict]:
    """(weights path, record) of a judge trained once for the session with ``train_judge``."""
    import torch

    from mlenv.book._common import BookOptions
    from mlenv.book.judge import train_judge

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("judge")
    options = BookOptions(
        device="cpu", data_dir=str(mnist_root), runs_dir=str(folder / "runs"), threads=1
    )
    path = folder / "mnist-cnn.safetensors"
    return path, train_judge(options, path, **BRIEF_JUDGE)


class StopAfterBatch:
    """A Trainer mixin for resume tests: records the global step of every optimizer step
    (``steps_taken``) and stops, as SIGTERM would, after the batch ``stop_at = (epoch,
    batch_in_epoch)`` was trained. ``class Recording(StopAfterBatch, Trainer)``."""

    stop_at: tuple[int, int] | None = None

    def after_optimizer_step(self) -> None:
        self.steps_taken = [*getattr(self, "steps_taken", []), self.global_step]
        super().after_optimizer_step()

    def batch_metrics(self, predictions, batch):
        if self.stop_at == (self.epoch, self.batch_in_epoch + 1):
            self._stop.signal_name = "SIGTERM"
        return super().batch_metrics(predictions, batch)
