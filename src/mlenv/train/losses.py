"""Single, multiple and named losses: every term is logged under its name; the weighted sum is
what is optimised.

``get_criterion()`` may return a loss, a tuple/list of losses, or a dict ``{name: loss}`` or
``{name: (loss, weight)}``. ``forward_pass`` returns a tensor, a tuple/list or a dict of terms in the
same shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch


def _term_name(fn: Any, index: int, taken: set[str]) -> str:
    name = type(fn).__name__.lower()
    if name in ("function", "builtin_function_or_method"):
        name = getattr(fn, "__name__", "loss")
    if name.endswith("loss") and len(name) > 4:
        name = name[:-4]
    return name if name not in taken else f"{name}{index}"


def criterion_weights(criterion: Any) -> dict[str, float] | list[float] | None:
    """Term names and weights of a criterion: ``None`` for a single loss."""
    if isinstance(criterion, Mapping):
        weights: dict[str, float] = {}
        for name, value in criterion.items():
            weights[name] = float(value[1]) if isinstance(value, tuple) else 1.0
        return weights
    if isinstance(criterion, Sequence) and not isinstance(criterion, str):
        return [1.0] * len(criterion)
    return None


def criterion_functions(criterion: Any) -> Any:
    """The same shape as ``criterion`` with the weights stripped: what ``forward_pass`` calls."""
    if isinstance(criterion, Mapping):
        return {n: (v[0] if isinstance(v, tuple) else v) for n, v in criterion.items()}
    return criterion


def term_names(criterion: Any) -> list[str]:
    if isinstance(criterion, Mapping):
        return list(criterion)
    if isinstance(criterion, Sequence) and not isinstance(criterion, str):
        taken: set[str] = set()
        names = []
        for i, fn in enumerate(criterion):
            names.append(_term_name(fn, i, taken))
            taken.add(names[-1])
        return names
    return []


def apply_criterion(functions: Any, output: Any, target: Any) -> Any:
    """Call every loss function on ``(output, target)``, keeping the criterion's shape."""
    if isinstance(functions, Mapping):
        return {name: fn(output, target) for name, fn in functions.items()}
    if isinstance(functions, Sequence) and not isinstance(functions, str):
        return [fn(output, target) for fn in functions]
    fn: Callable[..., torch.Tensor] = functions
    return fn(output, target)


def combine_terms(
    loss: Any, weights: dict[str, float] | list[float] | None, names: list[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The total to optimise and the named terms (unweighted) to log."""
    if isinstance(loss, torch.Tensor):
        return loss, {}
    if isinstance(loss, Mapping):
        w = weights if isinstance(weights, Mapping) else {}
        named = dict(loss)
    elif isinstance(loss, Sequence):
        labels = names if len(names) == len(loss) else [f"loss{i}" for i in range(len(loss))]
        named = dict(zip(labels, loss, strict=True))
        w = dict(zip(labels, weights, strict=True)) if isinstance(weights, list) else {}
    else:
        raise TypeError(
            f"forward_pass must return a tensor, a list or a dict of losses, got {loss!r}"
        )
    total = None
    for name, term in named.items():
        weight = w.get(name, 1.0)
        weighted = term if weight == 1.0 else weight * term  # no op per step for weight 1
        total = weighted if total is None else total + weighted
    return total, named
