"""Multi-layer perceptron: Linear -> activation (-> dropout) for each hidden width, then Linear."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from mlenv.errors import ConfigError
from mlenv.models import register_model
from mlenv.train.base import BaseModel

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
}


def check_widths(**widths: int) -> None:
    """A ``ConfigError`` naming the flag (``--embed`` for ``embed``) of a width below 1."""
    for name, value in widths.items():
        if value < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: accepts an integer >= 1, got {value}")


def check_dropout(dropout: float) -> None:
    if not 0 <= dropout < 1:
        raise ConfigError(f"--dropout: accepts a probability in [0, 1), got {dropout}")


class MLP(BaseModel):
    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (64, 32),
        out_features: int = 1,
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        check_widths(in_features=in_features, out_features=out_features)
        if any(h <= 0 for h in hidden):
            raise ConfigError(
                f"--hidden: accepts widths >= 1 (e.g. 64,32), got {','.join(map(str, hidden))}"
            )
        check_dropout(dropout)
        if activation not in ACTIVATIONS:
            raise ConfigError(f"--activation: accepts {', '.join(ACTIVATIONS)}, got {activation!r}")
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)
        self.out_features = out_features

    @property
    def dim(self) -> int:
        return self.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in) -> (B, out)
        return self.net(x)


@register_model("mlp")
def mlp(
    in_features: int,
    hidden: list[int] = [64, 32],  # noqa: B006 - never mutated; a list reads well in YAML
    out_features: int = 1,
    dropout: float = 0.0,
    activation: str = "relu",
) -> MLP:
    """Multi-layer perceptron (20 -> 64 -> 32 -> 1 by default for 20 features)."""
    return MLP(in_features, tuple(hidden), out_features, dropout, activation)


class BinaryMLP(MLP):
    """An MLP with one of three output heads for binary classification:

    - ``logits``: one logit (B,), trained with BCEWithLogits (the stable default);
    - ``sigmoid``: one probability (B,) through a final Sigmoid, trained with BCE clamped like
      PyTorch's (each log term >= -100), for parity with an original that did this;
    - ``two-class``: two logits (B, 2), trained with cross-entropy.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], dropout: float, output: str):
        if output not in ("logits", "sigmoid", "two-class"):
            raise ConfigError(f"--output: accepts logits, sigmoid or two-class, got {output!r}")
        super().__init__(in_features, hidden, 2 if output == "two-class" else 1, dropout)
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)  # (B, 1) or (B, 2)
        if self.output == "two-class":
            return out
        out = out.squeeze(1)  # (B,)
        return torch.sigmoid(out) if self.output == "sigmoid" else out


@register_model("binary-mlp")
def binary_mlp(
    in_features: int,
    hidden: list[int] = [64, 32],  # noqa: B006 - never mutated
    dropout: float = 0.0,
    output: Literal["logits", "sigmoid", "two-class"] = "logits",
) -> BinaryMLP:
    """MLP for binary classification (20 -> 64 -> 32 -> 1), output logits|sigmoid|two-class."""
    return BinaryMLP(in_features, tuple(hidden), dropout, output)
