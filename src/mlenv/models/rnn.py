"""Recurrent language models over token ids (characters or BPE tokens): LSTM or GRU."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from mlenv.errors import ConfigError
from mlenv.models import register_model
from mlenv.models.mlp import check_dropout, check_widths
from mlenv.train.base import BaseModel


class RecurrentLM(BaseModel):
    def __init__(
        self,
        vocab_size: int,
        embed: int = 64,
        hidden: int = 128,
        layers: int = 1,
        cell: Literal["lstm", "gru"] = "lstm",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_widths(vocab_size=vocab_size, embed=embed, hidden=hidden, layers=layers)
        check_dropout(dropout)
        if cell not in ("lstm", "gru"):
            raise ConfigError(f"--cell: accepts lstm or gru, got {cell!r}")
        self.embedding = nn.Embedding(vocab_size, embed)
        rnn_cls = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn_cls(
            embed, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )
        self.head = nn.Linear(hidden, vocab_size)
        self.vocab_size = vocab_size

    @property
    def dim(self) -> int:
        return self.vocab_size

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        h, _ = self.rnn(self.embedding(tokens))  # (B, T, hidden)
        return self.head(h)


@register_model("rnn-lm")
def rnn_lm(
    vocab_size: int,
    embed: int = 64,
    hidden: int = 128,
    layers: int = 1,
    cell: Literal["lstm", "gru"] = "lstm",
    dropout: float = 0.0,
) -> RecurrentLM:
    """LSTM/GRU language model: next-token logits at every position."""
    return RecurrentLM(vocab_size, embed, hidden, layers, cell, dropout)
