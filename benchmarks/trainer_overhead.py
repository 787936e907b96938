"""The Trainer against a hand-written loop: same MLP (20-64-32-1), batch 32, 14,690 training rows,
Adam, clipping at 1.0, same thread count, run alternately in one process. Also the start-up time of
`mlenv --help` against `python -c "import torch"`.

    .venv/bin/python benchmarks/trainer_overhead.py      # writes results/trainer_overhead.json
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import torch
from sklearn.datasets import make_classification
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _common import median, write_result
from mlenv.config import TrainConfig
from mlenv.data.batching import epoch_permutation
from mlenv.models import create_model
from mlenv.train.trainer import Trainer

ROWS, VAL_ROWS, FEATURES, BATCH, EPOCHS, REPEATS = 14_690, 3_673, 20, 32, 3, 5


class Binary(Trainer):
    def get_criterion(self):
        return {"bce": nn.BCEWithLogitsLoss()}

    def forward_pass(self, batch):
        x, y = batch
        logits = self.model(x).squeeze(1)
        return {"bce": self.criterion["bce"](logits, y)}, logits


def data():
    x, y = make_classification(ROWS + VAL_ROWS, FEATURES, n_informative=10, random_state=0)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    return (x[:ROWS], y[:ROWS]), (x[ROWS:], y[ROWS:])


def raw_epochs(train, val) -> list[float]:
    (x, y), (xv, yv) = train, val
    torch.manual_seed(0)
    model = create_model("mlp", in_features=FEATURES)
    model.init_weights()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)  # as the Trainer
    criterion = nn.BCEWithLogitsLoss()
    times = []
    for epoch in range(EPOCHS):
        start = time.perf_counter()
        order = epoch_permutation(len(x), 0, epoch)
        xs, ys = x[order], y[order]
        model.train()
        total = 0.0
        for i in range(0, len(xs), BATCH):
            xb, yb = xs[i : i + BATCH], ys[i : i + BATCH]
            loss = criterion(model(xb).squeeze(1), yb)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            total += loss.item() * len(xb)
        model.eval()
        with torch.no_grad():
            for i in range(0, len(xv), BATCH):
                total += criterion(model(xv[i : i + BATCH]).squeeze(1), yv[i : i + BATCH]).item()
        times.append(time.perf_counter() - start)
    return times


def trainer_epochs(train, val, threads: int) -> list[float]:
    config = TrainConfig(
        epochs=EPOCHS, lr=1e-4, batch_size=BATCH, grad_clip=1.0, threads=threads, progress=False
    )
    result = Binary(config, create_model("mlp", in_features=FEATURES)).fit(train, val)
    return [row["seconds"] for row in result.history]


def startup(command: list[str], repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return median(times)


def main() -> None:
    train, val = data()
    result = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        raw, ours = [], []
        for _ in range(REPEATS):  # alternate, so drifts in machine load hit both alike
            raw += raw_epochs(train, val)
            ours += trainer_epochs(train, val, threads)
        result[f"threads_{threads}"] = {
            "raw_epoch_s": median(raw),
            "trainer_epoch_s": median(ours),
            "ratio_trainer_over_raw": median(ours) / median(raw),
        }
    bindir = Path(sys.executable).parent
    torch_s = startup([sys.executable, "-c", "import torch"])
    help_s = startup([str(bindir / "mlenv"), "--help"])
    result["startup"] = {
        "import_torch_s": torch_s,
        "mlenv_help_s": help_s,
        "ratio_help_over_import_torch": help_s / torch_s,
    }
    result["targets"] = {
        "ratio_trainer_over_raw": "<= 1.10",
        "ratio_help_over_import_torch": "<= 1.3",
    }
    write_result("trainer_overhead", result)


if __name__ == "__main__":
    main()
