"""One intra-op thread against all cores, per model size, on an idle machine and with the other
core busy (a shared machine). The crossover sets runtime/threads.py's SINGLE_THREAD_MAX_FLOPS.

    .venv/bin/python benchmarks/threads.py               # writes results/threads.json
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _common import median, write_result
from mlenv.models import create_model
from mlenv.runtime.threads import estimate_flops

CASES = [  # (in_features, hidden, batch)
    (20, [64, 32], 32),
    (64, [256, 256], 64),
    (256, [512, 512], 128),
    (512, [1024, 1024], 256),
    (784, [2048, 2048], 512),
]


def spin(stop) -> None:
    while not stop.is_set():
        pass


def step_time(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threads: int) -> float:
    torch.set_num_threads(threads)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    criterion = nn.BCEWithLogitsLoss()
    times = []
    for i in range(60):
        start = time.perf_counter()
        loss = criterion(model(x).squeeze(1), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= 10:  # warm-up
            times.append(time.perf_counter() - start)
    return median(times)


def main() -> None:
    rows = []
    for loaded in (False, True):
        stop = mp.Event()
        busy = mp.Process(target=spin, args=(stop,)) if loaded else None
        if busy:
            busy.start()
        for features, hidden, batch in CASES:
            model = create_model("mlp", in_features=features, hidden=hidden)
            x, y = torch.randn(batch, features), torch.randint(0, 2, (batch,)).float()
            one = step_time(model, x, y, 1)
            two = step_time(model, x, y, 2)
            rows.append(
                {
                    "other_core_busy": loaded,
                    "in_features": features,
                    "hidden": hidden,
                    "batch": batch,
                    "forward_flops": estimate_flops(model, x),
                    "step_ms_1_thread": one * 1e3,
                    "step_ms_2_threads": two * 1e3,
                    "ratio_2_over_1": two / one,
                }
            )
            print(rows[-1])
        if busy:
            stop.set()
            busy.join()
    write_result("threads", {"cases": rows})


if __name__ == "__main__":
    main()
