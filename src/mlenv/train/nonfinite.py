"""Where a NaN or infinity first appears: the first module (in execution order) whose output is not
finite, or the first parameter that already is not."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tensors(v)]
    return []


def first_nonfinite_layer(model: nn.Module, run_forward: Any) -> str:
    """Re-run ``run_forward()`` with hooks; name the first layer whose output is NaN or inf."""
    model = getattr(model, "_orig_mod", model)
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            return f"parameter {name} is already non-finite"
    found: list[str] = []
    handles = []

    def hook(module: nn.Module, _inputs: Any, output: Any, name: str = "") -> None:
        if not found and any(not torch.isfinite(t).all() for t in _tensors(output)):
            found.append(f"{name} ({type(module).__name__})")

    for name, module in model.named_modules():
        if name and not list(module.children()):
            handles.append(module.register_forward_hook(lambda m, i, o, n=name: hook(m, i, o, n)))
    try:
        with torch.no_grad():
            run_forward()
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else "no layer output is non-finite (the loss computation is)"
