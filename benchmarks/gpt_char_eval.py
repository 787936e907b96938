"""gpt-char's validation loss under both protocols, from one training run.

mlenv's default measures every evaluation on the same 240 validation blocks (``--val-blocks``);
nanoGPT's ``estimate_loss`` takes ``eval_iters`` (20) new random batches of 12 blocks at every
evaluation (``--eval-iters 20``). The run trains the gpt-char recipe with nanoGPT's protocol
as its validation (so ``val_nll`` in the history is nanoGPT's number) and, at the same steps,
evaluates the same weights on the fixed blocks too (``fixed_nll``). Validation draws from its
own generators and the recipe has no dropout, so the training is the one a run of either
protocol trains. At the end nanoGPT's estimate is drawn for 10 more evaluation seeds of the
final weights, to show how much one estimate scatters.

    nice -n 10 python benchmarks/gpt_char_eval.py --epochs 3 --eval-interval 100   # 300 steps
    python benchmarks/gpt_char_eval.py            # the recipe: 2000 steps, evaluated every 250

Writes ``benchmarks/results/gpt_char_eval.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from mlenv.config import load_recipe, resolve
from mlenv.data.batching import make_batches
from mlenv.data.text import NANOGPT_VAL_STREAM, FixedBlocks, RandomBlocks
from mlenv.train.run import build
from mlenv.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "text" / "tinyshakespeare.txt"
RESULTS = ROOT / "benchmarks" / "results"


class BothProtocols(Trainer):
    """Validates on nanoGPT's batches (``val_*``) and on the fixed blocks (``fixed_*``)."""

    fixed: FixedBlocks | None = None

    def validate_epoch(self, batches, prefix: str = "val"):
        metrics = super().validate_epoch(batches, prefix)
        if prefix == "val" and self.fixed is not None:
            metrics.update(super().validate_epoch(self.fixed, "fixed"))
        return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--eval-interval", type=int, default=250)
    parser.add_argument("--eval-iters", type=int, default=20)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "gpt_char_eval.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    argv = ["--path", str(DATA), "--epochs", str(args.epochs), "--seed", str(args.seed)]
    argv += ["--eval-interval", str(args.eval_interval), "--eval-iters", str(args.eval_iters)]
    argv += ["--warmup-steps", str(args.warmup_steps)]
    cfg = resolve(load_recipe("gpt-char"), [*argv, "--threads", "1", "--progress", "false"])
    bundle, model, task = build(cfg)
    trainer = BothProtocols(cfg.train, model, task=task)
    fixed = FixedBlocks(bundle.val.ids, bundle.val.block_size, 240, seed=args.seed)
    trainer.fixed = make_batches(fixed, cfg.train.batch_size, False, args.seed)
    start = time.perf_counter()
    trainer.fit(bundle.train, bundle.val)
    seconds = time.perf_counter() - start

    rows = [
        {
            "step": int(row["epoch"]) * args.eval_interval,
            "nanogpt_val_nll": row["val_nll"],
            "fixed_240_val_nll": row["fixed_nll"],
            "train_loss": row["train_loss"],
        }
        for row in trainer.history
    ]
    estimates = []
    for extra in range(10):  # more of nanoGPT's draws at the final weights: its scatter
        draw = RandomBlocks(
            bundle.val.ids,
            bundle.val.block_size,
            args.eval_iters,
            seed=args.seed,
            stream=NANOGPT_VAL_STREAM,
        )
        draw.set_epoch(1000 + extra)
        estimates.append(trainer.evaluate(draw, prefix="val")["val_nll"])
    result = {
        "recipe": "gpt-char",
        "argv": argv,
        "evaluations": rows,
        "final_nanogpt_estimates_10_more_draws": {
            "mean": statistics.mean(estimates),
            "sd": statistics.stdev(estimates),
            "min": min(estimates),
            "max": max(estimates),
        },
        "train_seconds": seconds,
        "torch": torch.__version__,
        "machine": platform.platform(),
        "threads": 1,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
