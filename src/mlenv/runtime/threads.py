"""Intra-op thread count chosen for the size of the work and the load on the machine.

On a small model every op is a few microseconds of math; splitting it over threads costs more in
synchronisation than it saves, and a thread that waits for a core another process holds makes every
op wait. ``benchmarks/threads.py`` measured (2 cores, docs/performance.md): below ~10-100 MFLOPs per
forward a second thread gains nothing; above it, it gains up to 1.8x on an idle machine, but with
the other core busy it loses 1.2-1.7x. So: one thread for small steps; otherwise one per core
that the load average leaves free.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import nn

# Forward FLOPs of one batch below which one thread wins (measured on a 2-core machine: see
# benchmarks/threads.py). Above it, the matmuls are big enough for threads to pay.
SINGLE_THREAD_MAX_FLOPS = 50e6


def estimate_flops(model: nn.Module, example_batch: Any) -> float | None:
    """Forward FLOPs of ``model`` on one batch, from the shapes its layers see (linear,
    convolution, recurrent and attention layers: the ones whose cost grows with size). Hooks, not
    torch's FlopCounterMode, whose import alone costs a second. ``None`` if the forward fails."""
    total = 0.0

    def count(module: nn.Module, inputs: tuple, output: Any) -> None:
        nonlocal total
        out = output[0] if isinstance(output, tuple) else output
        if not isinstance(out, torch.Tensor):
            return
        if isinstance(module, nn.Linear):
            total += 2.0 * module.in_features * out.numel()
        elif isinstance(module, nn.modules.conv._ConvNd):
            per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
            total += 2.0 * per_output * out.numel()
        elif isinstance(module, nn.RNNBase):
            gates = {"LSTM": 4, "GRU": 3}.get(module.mode, 1)
            steps = out.numel() / module.hidden_size
            total += (
                2.0
                * gates
                * (module.input_size + module.hidden_size)
                * module.hidden_size
                * (steps * module.num_layers)
            )
        elif isinstance(module, nn.MultiheadAttention):
            total += 8.0 * module.embed_dim * out.numel()

    handles = [m.register_forward_hook(count) for m in model.modules()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_batch)
    except Exception:  # a model that cannot run on this batch: no estimate
        return None
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total


def choose_threads(flops_per_step: float | None, requested: int | None = None) -> int:
    """Thread count for a run: ``requested`` when given, else by the work in one step.

    >>> choose_threads(1e5)
    1
    """
    if requested is not None:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = max(1, cores or 1)
    if flops_per_step is not None and flops_per_step < SINGLE_THREAD_MAX_FLOPS:
        return 1
    return max(1, min(cores, round(cores - _load_average())))


def _load_average() -> float:
    """Runnable processes over the last minute (0 where the OS does not say)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def apply_threads(n: int) -> None:
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
