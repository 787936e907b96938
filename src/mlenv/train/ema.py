"""An exponential moving average of a model's weights (``--ema 0.999``).

After optimizer step ``t`` (1, 2, ...), every floating-point entry of the model's state (weights
and BatchNorm running statistics) is averaged into the copy:

    decay_t = min(decay, (1 + t) / (10 + t))
    ema     = decay_t * ema + (1 - decay_t) * weights

The warm-up of ``decay_t`` (as in TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``)
keeps the first steps from being dominated by the random initial weights. Integer entries (a
BatchNorm's ``num_batches_tracked``) are copied. The copy starts equal to the weights, lives on
their device, and depends only on the weights and the step, so a checkpoint needs nothing but the
averaged values to resume exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from mlenv.errors import CheckpointError
from mlenv.train.checkpoint import strip_compile_prefix


def ema_decay(decay: float, step: int) -> float:
    """The decay used at optimizer step ``step`` (1-based).

    >>> ema_decay(0.999, 1), ema_decay(0.999, 10_000)
    (0.18181818181818182, 0.999)
    """
    return min(decay, (1 + step) / (10 + step))


class WeightsEMA:
    """The averaged copy of ``model``'s state (``state``: name -> tensor)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in _state(model).items()}

    def update(self, model: nn.Module, step: int) -> None:
        """Average the model's current state in (after optimizer step ``step``)."""
        d = ema_decay(self.decay, step)
        current = _state(model)
        floats = [k for k, v in self.state.items() if v.is_floating_point()]
        if floats:
            torch._foreach_lerp_(
                [self.state[k] for k in floats], [current[k].detach() for k in floats], 1.0 - d
            )
        for key, value in self.state.items():
            if not value.is_floating_point():
                value.copy_(current[key])

    def load(self, state: dict[str, torch.Tensor], path: object = "the checkpoint") -> None:
        """Averaged values saved by a checkpoint (names and shapes checked, one-line error)."""
        state = strip_compile_prefix(state)
        wrong = sorted(set(state) ^ set(self.state))
        wrong += [k for k in self.state if k in state and state[k].shape != self.state[k].shape]
        if wrong:
            raise CheckpointError(
                f"{path}: the averaged (--ema) weights do not fit the model: {', '.join(wrong)}"
            )
        for key, value in self.state.items():
            value.copy_(state[key])

    def load_into(self, model: nn.Module) -> None:
        """Put the averaged weights in ``model`` (for good)."""
        getattr(model, "_orig_mod", model).load_state_dict(self.state)

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        """The averaged weights in ``model`` for the duration (validation), then its own."""
        own = {k: v.detach().clone() for k, v in _state(model).items()}
        target = getattr(model, "_orig_mod", model)
        target.load_state_dict(self.state)
        try:
            yield
        finally:
            target.load_state_dict(own)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return strip_compile_prefix(model.state_dict())
