"""Intra-op thread count chosen for the size of the work.

On a small model, every op is a few microseconds of math; splitting it over threads costs more in
synchronisation than it saves, and on a shared machine a second thread that waits for a busy core can
make a step 10-40x slower. We estimate the FLOPs of one training step and use one thread below a
threshold measured in ``benchmarks/threads.py`` (figures in docs/performance.md), all cores above it.
"""

from __future__ import annotations

import os

import torch
from torch import nn

# Forward FLOPs of one batch below which one thread wins (measured on a 2-core machine: see
# benchmarks/threads.py). Above it, the matmuls are big enough for threads to pay.
SINGLE_THREAD_MAX_FLOPS = 20e6


def step_flops(model: nn.Module, example_batch: torch.Tensor) -> float:
    """Forward FLOPs of ``model`` on ``example_batch``, counted by torch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example_batch)
    finally:
        model.train(was_training)
    return float(counter.get_total_flops())


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
    return cores


def apply_threads(n: int) -> None:
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
