"""A BERT-style encoder (Devlin et al. 2018) for masked-language modelling.

Top to bottom: token embeddings with one extra row for ``[MASK]`` (id ``vocab_size``), learned
positions, a LayerNorm on their sum, ``n_layer`` non-causal transformer blocks (every position
attends to every other one, before and after it; post-LN and GELU as in BERT, pre-LN with
``norm_first``), and the masked-LM head: Linear -> GELU -> LayerNorm, then logits over the real
tokens through the token embedding matrix (tied weights) plus a bias. The blocks are the shared
ones of ``mlenv.models.transformer``, the same the GPT and the ViT use.

Train it with the ``masked-lm`` task (recipe ``char-bert``), which corrupts each
batch the BERT way and takes the loss at the chosen positions only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mlenv.errors import ConfigError
from mlenv.models import register_model
from mlenv.models.mlp import check_dropout, check_widths
from mlenv.models.transformer import Block, LearnedPositions, check_heads, init_gpt_weights
from mlenv.train.base import BaseModel


class MaskedLMHead(nn.Module):
    """BERT's prediction head: a GELU layer and LayerNorm, then logits against the (tied)
    token embeddings of the ``vocab_size`` real tokens."""

    def __init__(self, n_embd: int, vocab_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(n_embd, n_embd)
        self.act = nn.GELU()
        self.ln = nn.LayerNorm(n_embd)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, h: torch.Tensor, token_weight: torch.Tensor) -> torch.Tensor:
        h = self.ln(self.act(self.dense(h)))  # (B, T, C)
        return F.linear(h, token_weight, self.bias)  # (B, T, V)


class BERT(BaseModel):
    """Bidirectional encoder: token ids (B, T) with T <= block_size -> logits (B, T, V).
    ``block_size`` is the number of learned positions (BERT's max_position_embeddings); the
    ``text-lm`` data set gives it.

    ``mask_id`` (= ``vocab_size``) is the id of ``[MASK]``: an input id, never a prediction.
    """

    def __init__(
        self,
        vocab_size: int,
        block_size: int = 64,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.0,
        norm_first: bool = False,
    ) -> None:
        super().__init__()
        check_widths(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer)
        check_heads(n_embd, n_head)
        check_dropout(dropout)
        self.vocab_size = vocab_size
        self.mask_id = vocab_size
        self.block_size = block_size
        self.n_layer = n_layer
        self.token_embedding = nn.Embedding(vocab_size + 1, n_embd)  # + [MASK]
        self.positions = LearnedPositions(block_size, n_embd)
        self.embedding_ln = nn.LayerNorm(n_embd)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(n_embd, n_head, causal=False, norm_first=norm_first, dropout=dropout)
            for _ in range(n_layer)
        )
        # pre-LN leaves the residual stream unnormalised after the last block
        self.final_ln = nn.LayerNorm(n_embd) if norm_first else nn.Identity()
        self.head = MaskedLMHead(n_embd, vocab_size)

    @property
    def dim(self) -> int:
        return self.vocab_size

    def init_weights(self) -> None:
        init_gpt_weights(self, self.n_layer)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        T = tokens.shape[1]
        if self.block_size < T:
            raise ConfigError(
                f"bert: a window of {T} tokens is longer than its {self.block_size} positions "
                "(--block-size)"
            )
        positions = torch.arange(T, device=tokens.device)  # (T,)
        x = self.token_embedding(tokens) + self.positions(positions)  # (B, T, C)
        x = self.dropout(self.embedding_ln(x))
        for block in self.blocks:
            x = block(x)  # (B, T, C), every position sees the whole window
        x = self.final_ln(x)
        return self.head(x, self.token_embedding.weight[: self.vocab_size])  # (B, T, V)


@register_model("bert")
def bert(
    vocab_size: int,
    block_size: int = 64,
    n_layer: int = 4,
    n_head: int = 4,
    n_embd: int = 128,
    dropout: float = 0.0,
    norm_first: bool = False,
) -> BERT:
    """BERT-style bidirectional encoder for masked-LM (task masked-lm): logits at every position."""
    return BERT(vocab_size, block_size, n_layer, n_head, n_embd, dropout, norm_first)
