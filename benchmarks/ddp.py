"""`mlenv train --devices 2` against one process, from the command line as a user runs it: the
largest weight difference after training (same global batch and data order), and wall time.

Runs alternate (1 process, 2 processes, 1, 2, ...) so a load change on a shared machine hits both
sides; every process uses one thread. Wall time is the whole command (start-up, torchrun, data,
training, test, files); "fit" is the training loop alone (the sum of the epochs' seconds).

    .venv/bin/python benchmarks/ddp.py digits-mlp        # writes results/ddp-digits-mlp.json
    .venv/bin/python benchmarks/ddp.py digits-mlp-wide   # hidden 1024,1024: compute dominates
    .venv/bin/python benchmarks/ddp.py tabular-binary    # spambase, 3 epochs: equality only
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import median, write_result

SPAMBASE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tabular" / "spambase.data"
CONFIGS = {
    "digits-mlp": (["digits-mlp", "--epochs", "5"], 3),
    "digits-mlp-wide": (["digits-mlp", "--epochs", "3", "--hidden", "1024,1024"], 3),
    "tabular-binary": (
        ["tabular-binary", "--data", str(SPAMBASE), "--no-header", "--epochs", "3"],
        0,
    ),
}


def train(runs: Path, argv: list[str], *extra: str) -> dict:
    start = time.perf_counter()
    command = [sys.executable, "-m", "mlenv", "train", *argv, *extra]
    command += ["--runs-dir", str(runs), "--threads", "1", "--progress", "false"]
    subprocess.run(command, check=True, capture_output=True)
    wall = time.perf_counter() - start
    (run,) = [p for p in (runs / argv[0]).iterdir() if p.is_dir()]
    summary = json.loads((run / "summary.json").read_text())
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    fit = sum(row["seconds"] for row in last["state"]["history"])
    return {"wall": wall, "fit": fit, "model": last["model"], "summary": summary, "run": run}


def max_difference(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def main(name: str) -> None:
    argv, repeats = CONFIGS[name]
    times: dict[str, dict[str, list[float]]] = {
        "1": {"wall": [], "fit": []},
        "2": {"wall": [], "fit": []},
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        one = train(root / "one", argv)
        ddp = train(root / "ddp", argv, "--devices", "2")
        fsdp = train(root / "fsdp", argv, "--devices", "2", "--strategy", "fsdp")
        equality = {
            "ddp_max_abs_weight_difference": max_difference(one["model"], ddp["model"]),
            "fsdp_max_abs_weight_difference": max_difference(one["model"], fsdp["model"]),
            "optimizer_steps": one["summary"]["steps_run"],
            "rows_per_process": ddp["summary"]["rows_per_process"],
            "test_metric_1": {k: v for k, v in one["summary"].items() if k.startswith("test_")},
            "test_metric_2": {k: v for k, v in ddp["summary"].items() if k.startswith("test_")},
        }
        for i in range(repeats):
            for processes in ("1", "2"):
                extra = ("--devices", "2") if processes == "2" else ()
                result = train(root / f"t{i}-{processes}", argv, *extra)
                times[processes]["wall"].append(round(result["wall"], 2))
                times[processes]["fit"].append(round(result["fit"], 3))
    timing = {}
    if repeats:
        timing = {
            "runs": times,
            "median_wall_s": {k: median(v["wall"]) for k, v in times.items()},
            "median_fit_s": {k: median(v["fit"]) for k, v in times.items()},
            "wall_ratio_2_over_1": median(times["2"]["wall"]) / median(times["1"]["wall"]),
            "fit_ratio_2_over_1": median(times["2"]["fit"]) / median(times["1"]["fit"]),
        }
    write_result(f"ddp-{name}", {"command": ["mlenv", "train", *argv], **equality, **timing})


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "digits-mlp")
