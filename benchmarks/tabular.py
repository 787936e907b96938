"""The tabular-binary default recipe against (a) the original style of loop (a DataLoader over a
TensorDataset) and (b) PyTorch Lightning's Trainer: same data (magic04, same split and scaling),
model (MLP 10 -> 64 -> 32 -> 1), optimizer, clipping, seed and thread count.

    .venv/bin/pip install -e '.[bench]'       # lightning, only for this benchmark
    .venv/bin/python benchmarks/tabular.py    # writes results/tabular.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_result
from mlenv.config import TrainConfig
from mlenv.data import DATASETS
from mlenv.models import create_model
from mlenv.train.tasks import BinaryTask
from mlenv.train.trainer import Trainer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tabular" / "magic04.data"
EPOCHS, BATCH, LR, SEED = 20, 32, 1e-4, 0


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float(((torch.sigmoid(model(x)) > 0.5).float() == y).float().mean())


def run_mlenv(bundle) -> dict:
    model = create_model("binary-mlp", seed=0, in_features=bundle.model_kwargs["in_features"])
    config = TrainConfig(
        epochs=EPOCHS, lr=LR, batch_size=BATCH, grad_clip=1.0, seed=SEED, threads=1, progress=False
    )
    trainer = Trainer(config, model, task=BinaryTask())
    start = time.perf_counter()
    trainer.fit(bundle.train, bundle.val)
    seconds = time.perf_counter() - start
    return {"epoch_s": seconds / EPOCHS, "test_acc": trainer.evaluate(bundle.test)["test_acc"]}


def run_dataloader_loop(bundle) -> dict:
    (x, y), (xt, yt) = bundle.train, bundle.test
    torch.manual_seed(SEED)
    model = create_model("binary-mlp", seed=0, in_features=x.shape[1])
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True)
    val_loader = DataLoader(TensorDataset(xt, yt), batch_size=BATCH)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    criterion = nn.BCEWithLogitsLoss()
    start = time.perf_counter()
    for _ in range(EPOCHS):
        model.train()
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = criterion(model(xb), yb)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val_loss = sum(criterion(model(xb), yb).item() * len(xb) for xb, yb in val_loader)
        assert val_loss > 0
    seconds = time.perf_counter() - start
    return {"epoch_s": seconds / EPOCHS, "test_acc": accuracy(model, xt, yt)}


def run_lightning(bundle) -> dict:
    import lightning as L

    (x, y), (xt, yt) = bundle.train, bundle.test

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = create_model("binary-mlp", seed=0, in_features=x.shape[1])
            self.criterion = nn.BCEWithLogitsLoss()

        def training_step(self, batch, _):
            xb, yb = batch
            return self.criterion(self.model(xb), yb)

        def validation_step(self, batch, _):
            xb, yb = batch
            self.log("val_loss", self.criterion(self.model(xb), yb))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=LR)

    L.seed_everything(SEED, verbose=False)
    module = Module()
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1,
        gradient_clip_val=1.0,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
    )
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True)
    val_loader = DataLoader(TensorDataset(xt, yt), batch_size=BATCH)
    start = time.perf_counter()
    trainer.fit(module, loader, val_loader)
    seconds = time.perf_counter() - start
    torch.set_num_threads(1)  # Lightning may change it; keep the comparison fair
    return {"epoch_s": seconds / EPOCHS, "test_acc": accuracy(module.model, xt, yt)}


def main() -> None:
    torch.set_num_threads(1)
    bundle = DATASETS.create("tabular-csv", seed=SEED, data=str(DATA), no_header=True)
    results = {
        "mlenv": run_mlenv(bundle),
        "dataloader_loop": run_dataloader_loop(bundle),
        "lightning": run_lightning(bundle),
    }
    mlenv = results["mlenv"]
    write_result(
        "tabular",
        {
            "data": f"magic04: {len(bundle.train[0])} train / {len(bundle.test[0])} test rows",
            "epochs": EPOCHS,
            "threads": 1,
            "results": results,
            "speedup_vs_lightning": results["lightning"]["epoch_s"] / mlenv["epoch_s"],
            "speedup_vs_dataloader_loop": results["dataloader_loop"]["epoch_s"] / mlenv["epoch_s"],
            "accuracy_points_vs_lightning": 100
            * (mlenv["test_acc"] - results["lightning"]["test_acc"]),
            "accuracy_points_vs_dataloader_loop": 100
            * (mlenv["test_acc"] - results["dataloader_loop"]["test_acc"]),
            "targets": {
                "speedup_vs_lightning": ">= 2",
                "speedup_vs_dataloader_loop": ">= 1",
                "accuracy_points": "within 0.5",
            },
        },
    )


if __name__ == "__main__":
    main()
