"""The cost of a model, measured the same way every time: parameters, FLOPs per sample, forward
latency percentiles, training and inference throughput, peak memory, threads, device, versions."""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

WARMUP = 5
MIN_ITERS, MAX_ITERS, BUDGET_S = 10, 200, 1.0


def _timed(fn: Callable[[], Any], device: torch.device) -> list[float]:
    """Seconds per call after a warm-up, until the time budget or the iteration cap."""
    for _ in range(WARMUP):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < MIN_ITERS or (
        len(times) < MAX_ITERS and time.perf_counter() - start < BUDGET_S
    ):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


def flops_per_sample(model: nn.Module, example: torch.Tensor) -> float:
    """Forward FLOPs of one sample, as torch's FlopCounterMode counts them (matrix products and
    convolutions; a multiply-add is 2 FLOPs; element-wise ops, norms and pooling are not
    counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example[:1])
    return float(counter.get_total_flops())


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"


def benchmark_model(
    name: str,
    model: nn.Module,
    make_batch: Callable[[int], Any],
    loss_of: Callable[[Any], torch.Tensor],
    batch_sizes: list[int],
    device: torch.device,
    prepare: Callable[[Any], Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per batch size. ``make_batch(n)`` gives a batch on ``device``; ``loss_of(batch)``
    a scalar loss (forward included) for the training step; ``prepare(inputs)`` turns a batch's
    inputs into what the model takes at inference (uint8 images -> normalised floats), outside
    the timed forward."""
    import platform

    model.to(device)
    params = sum(p.numel() for p in model.parameters())
    prepare = prepare or (lambda x: x)
    first = make_batch(1)
    flops = flops_per_sample(model, prepare(first[0] if isinstance(first, tuple | list) else first))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    rows = []
    for bs in batch_sizes:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        batch = make_batch(bs)
        inputs = prepare(batch[0] if isinstance(batch, tuple | list) else batch)
        model.eval()
        with torch.no_grad():
            latency = np.array(_timed(lambda inputs=inputs: model(inputs), device))

        def train_step(batch=batch) -> None:
            optimizer.zero_grad(set_to_none=True)
            loss_of(batch).backward()
            optimizer.step()

        model.train()
        train = np.array(_timed(train_step, device))
        memory, memory_kind = peak_memory_mb(device)
        rows.append(
            {
                "model": name,
                "batch_size": bs,
                "parameters": params,
                "flops_per_sample": flops,
                "latency_ms_p50": float(np.percentile(latency, 50) * 1e3),
                "latency_ms_p90": float(np.percentile(latency, 90) * 1e3),
                "latency_ms_p99": float(np.percentile(latency, 99) * 1e3),
                "inference_samples_per_s": bs / float(np.median(latency)),
                "train_samples_per_s": bs / float(np.median(train)),
                "peak_memory_mb": memory,
                "memory_kind": memory_kind,
                "threads": torch.get_num_threads(),
                "device": str(device),
                "torch": torch.__version__,
                "python": platform.python_version(),
                "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
        )
    return rows


def _check_sizes(flag: str, values: list[int]) -> None:
    from mlenv.errors import ConfigError

    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ConfigError(f"{flag}: accepts integers >= 1 like 1,32,256, got {values!r}")


def check_results_file(path: str | Path) -> Path:
    """A results file that rows may be appended to: missing, empty, or JSON lines already (so a
    benchmark never appends to a file of another kind)."""
    from mlenv.errors import ConfigError

    path = Path(path)
    if path.is_file() and path.stat().st_size:
        with path.open("rb") as f:
            first = f.readline(1 << 20)
        try:
            ok = isinstance(json.loads(first), dict)
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(
                f"--out: {path} is not a JSON-lines results file; rows are appended to one, "
                "so give a new .jsonl path"
            )
    return path


def append_results(rows: list[dict[str, Any]], path: str | Path) -> Path:
    path = check_results_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def format_rows(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'batch':>6s} {'params':>9s} {'MFLOP/sample':>12s} {'p50 ms':>8s} {'p90 ms':>8s} "
        f"{'p99 ms':>8s} {'infer/s':>10s} {'train/s':>10s} {'peak MB':>8s}"
    )
    first = rows[0]
    lines = [
        f"model {first['model']} on {first['device']}, {first['threads']} threads: "
        f"{first['parameters']:,} parameters, {first['flops_per_sample'] / 1e6:,.1f} MFLOPs per "
        "sample (forward; a multiply-add is 2)",
        head,
    ]
    for r in rows:
        lines.append(
            f"{r['batch_size']:6d} {r['parameters']:9d} {r['flops_per_sample'] / 1e6:12.3f} "
            f"{r['latency_ms_p50']:8.3f} {r['latency_ms_p90']:8.3f} "
            f"{r['latency_ms_p99']:8.3f} {r['inference_samples_per_s']:10.0f} "
            f"{r['train_samples_per_s']:10.0f} {r['peak_memory_mb']:8.1f}"
        )
    return "\n".join(lines)


def benchmark_target(
    target: str,
    overrides: list[str],
    batch_sizes: list[int],
    input_shape: list[int] | None,
    threads: int | None,
    device_name: str = "auto",
) -> list[dict[str, Any]]:
    """Benchmark a recipe (its model, data and loss) or a registered model (random inputs of
    ``input_shape`` and a squared-output loss)."""
    from mlenv.config import load_recipe, recipe_names, resolve
    from mlenv.errors import ConfigError
    from mlenv.runtime.device import choose_device
    from mlenv.runtime.threads import apply_threads

    _check_sizes("--batch-sizes", batch_sizes)
    if input_shape is not None:
        _check_sizes("--input-shape", input_shape)
    if threads is not None and (isinstance(threads, bool) or threads < 1):
        raise ConfigError(f"--threads: accepts an integer >= 1, got {threads!r}")
    device = choose_device(device_name)
    if target in recipe_names() or target.endswith(".yaml"):
        from mlenv.train.run import build

        cfg = resolve(load_recipe(target), [*overrides, "--progress", "false"], prog="mlenv bench")
        from mlenv.train.trainer import Trainer

        bundle, model, task = build(cfg)
        trainer = Trainer(cfg.train, model, task=task)
        tensors = [t.to(device) for t in bundle.train]
        trainer.setup(tensors[0][:1], 1)  # the Trainer's own thread choice, unless --threads
        apply_threads(threads or trainer.threads or 1)
        model = trainer.model

        def make_batch(n: int) -> tuple:
            rows = torch.arange(n) % len(tensors[0])
            return tuple(t[rows] for t in tensors)

        def loss_of(batch: tuple) -> torch.Tensor:
            return trainer.compute_loss(batch)[0]

        prepare = trainer.task.model_inputs
    else:
        from mlenv.models import MODELS

        if overrides:
            raise ConfigError(
                f"bench {target}: {' '.join(overrides)}: a model name takes only --input-shape "
                "(the model's defaults otherwise); give a recipe to set other fields"
            )
        if not input_shape:
            raise ConfigError(
                f"bench {target}: a model name needs --input-shape (e.g. 20), or give a recipe"
            )
        model = MODELS.create(target, **_shape_arguments(target, input_shape))
        if hasattr(model, "init_weights"):
            model.init_weights()
        prepare = None
        if threads:
            apply_threads(threads)

        def make_batch(n: int) -> tuple:
            return (torch.randn(n, *input_shape, device=device),)

        def loss_of(batch: tuple) -> torch.Tensor:
            out = model(batch[0])
            return (out[0] if isinstance(out, tuple) else out).float().pow(2).mean()

    return benchmark_model(target, model, make_batch, loss_of, batch_sizes, device, prepare)


def _shape_arguments(target: str, input_shape: list[int]) -> dict[str, int]:
    """The builder arguments an input shape determines: ``in_features`` of a vector (20), or
    ``in_channels`` and ``image_size`` of an image (3,32,32), where the builder takes them."""
    import inspect

    from mlenv.errors import ConfigError
    from mlenv.models import MODELS

    params = inspect.signature(MODELS.get(target)).parameters
    if len(input_shape) == 1:
        return {"in_features": input_shape[0]} if "in_features" in params else {}
    if len(input_shape) == 3:
        channels, height, width = input_shape
        if height != width and "image_size" in params:
            raise ConfigError(
                f"--input-shape: {target} takes square images (C,H,H), got {input_shape}"
            )
        values = {"in_channels": channels, "image_size": height}
        return {k: v for k, v in values.items() if k in params}
    return {}
