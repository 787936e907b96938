"""GPT: a decoder-only transformer language model in three historical forms.

``variant`` sets the architecture as it was at the time (the training side of each, optimizer
and schedule, lives in the recipes ``gpt-char-2017``, ``gpt-char-2019``, ``gpt-char``):

- ``2017`` (Vaswani et al.): post-LN blocks, ReLU, fixed sinusoidal positions, separate output
  head;
- ``2019`` (GPT-2 era training): as 2017 with learned positions;
- ``2020`` (GPT-2/3, nanoGPT): pre-LN blocks with a final LayerNorm, GELU, learned positions,
  the output head tied to the token embedding.

The variants differ in parameters (positions, the tied head); with ``match_params`` the MLP
width of 2017/2019 is set so that every variant has the 2020 model's parameter count (to a few
hundred parameters), so a comparison is at equal size.

    >>> model = gpt(vocab_size=65, block_size=64, variant="2020")
    >>> model(torch.zeros(2, 10, dtype=torch.long)).shape  # (B, T) -> (B, T, V)
    torch.Size([2, 10, 65])
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mlenv.errors import ConfigError
from mlenv.models import register_model
from mlenv.models.transformer import Block, KVCache, check_heads, init_gpt_weights, make_positions
from mlenv.train.base import BaseModel

Variant = Literal["2017", "2019", "2020"]


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    mlp_hidden: int = 512  # 4 * n_embd in 2020; set by match_params in 2017/2019
    dropout: float = 0.0
    bias: bool = False
    norm_first: bool = True  # pre-LN
    activation: str = "gelu"
    positions: str = "learned"
    tie_weights: bool = True

    @classmethod
    def from_variant(cls, variant: str, match_params: bool = True, **sizes: int | float | bool):
        """The architecture of ``variant``; ``sizes`` are vocab_size, block_size, n_layer, ..."""
        switches = {
            "2017": dict(
                norm_first=False, activation="relu", positions="sinusoidal", tie_weights=False
            ),
            "2019": dict(
                norm_first=False, activation="relu", positions="learned", tie_weights=False
            ),
            "2020": dict(norm_first=True, activation="gelu", positions="learned", tie_weights=True),
        }
        if variant not in switches:
            raise ConfigError(f"--variant: accepts 2017, 2019 or 2020, got {variant!r}")
        config = cls(**sizes, **switches[variant])  # type: ignore[arg-type]
        config.mlp_hidden = 4 * config.n_embd
        if match_params and variant != "2020":
            reference = cls(**sizes, **switches["2020"])  # type: ignore[arg-type]
            reference.mlp_hidden = 4 * reference.n_embd
            per_unit = config.n_layer * (2 * config.n_embd + int(config.bias))
            gap = count_parameters(config) - count_parameters(reference)
            config.mlp_hidden = max(1, 4 * config.n_embd - round(gap / per_unit))
        return config


def count_parameters(c: GPTConfig) -> int:
    """The parameter count of ``GPT(c)`` in closed form (what ``match_params`` balances)."""
    C, b = c.n_embd, int(c.bias)
    layer_norm = C * (1 + b)
    attention = 4 * C * C + 4 * C * b
    mlp = 2 * C * c.mlp_hidden + (c.mlp_hidden + C) * b
    per_block = attention + mlp + 2 * layer_norm
    embeddings = c.vocab_size * C + (c.block_size * C if c.positions == "learned" else 0)
    head = 0 if c.tie_weights else c.vocab_size * C
    final_norm = layer_norm if c.norm_first else 0
    return embeddings + c.n_layer * per_block + final_norm + head


class GPT(BaseModel):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        check_heads(config.n_embd, config.n_head)
        self.config = c = config
        self.token_embedding = nn.Embedding(c.vocab_size, c.n_embd)
        self.positions = make_positions(c.positions, c.block_size, c.n_embd)
        # the paper scales embeddings by sqrt(C) so fixed unit-amplitude positions do not drown them
        self.embed_scale = math.sqrt(c.n_embd) if c.positions == "sinusoidal" else 1.0
        self.dropout = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            Block(
                c.n_embd,
                c.n_head,
                causal=True,
                norm_first=c.norm_first,
                activation=c.activation,
                dropout=c.dropout,
                bias=c.bias,
                mlp_hidden=c.mlp_hidden,
            )
            for _ in range(c.n_layer)
        )
        # post-LN blocks end in a LayerNorm already; pre-LN needs one before the head
        self.final_norm = nn.LayerNorm(c.n_embd, bias=c.bias) if c.norm_first else nn.Identity()
        # tied: the head is the token embedding (F.linear in forward), so no second tensor
        self.head = None if c.tie_weights else nn.Linear(c.n_embd, c.vocab_size, bias=False)

    @property
    def dim(self) -> int:
        return self.config.vocab_size

    def init_weights(self) -> None:
        init_gpt_weights(self, self.config.n_layer)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        T = idx.shape[1]  # idx: (B, T)
        past = len(cache) if cache is not None else 0
        if past + T > self.config.block_size:
            raise ConfigError(
                f"gpt: {past + T} positions exceed --block-size {self.config.block_size}"
            )
        pos = torch.arange(past, past + T, device=idx.device)  # (T,)
        x = self.token_embedding(idx) * self.embed_scale + self.positions(pos)  # (B, T, C)
        x = self.dropout(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cache.layers[i] if cache is not None else None)  # (B, T, C)
        x = self.final_norm(x)
        if self.head is None:
            return F.linear(x, self.token_embedding.weight)  # (B, T, V)
        return self.head(x)  # (B, T, V)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield ``max_new_tokens`` next tokens (B,) one at a time, sampled after ``idx`` (B, T).

        Without the cache every step recomputes the last ``block_size`` tokens (nanoGPT). With
        it each step runs one token through the blocks; when the context would pass
        ``block_size`` the cache restarts from the last half block (absolute positions make the
        old keys invalid), so up to ``block_size`` tokens both give the same tokens."""
        block = self.config.block_size
        cache = KVCache(self.config.n_layer) if use_cache else None
        context = idx
        fresh = True
        for _ in range(max_new_tokens):
            if cache is None:
                logits = self(context[:, -block:])[:, -1]  # (B, V)
            else:
                if fresh or len(cache) + 1 > block:
                    keep = context[:, -block:] if fresh else context[:, -(block // 2) :]
                    cache = KVCache(self.config.n_layer)
                    logits = self(keep, cache)[:, -1]
                    fresh = False
                else:
                    logits = self(context[:, -1:], cache)[:, -1]
            token = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
            context = torch.cat([context, token[:, None]], dim=1)
            yield token


def next_token_probs(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """The distribution ``sample_next`` draws from, (B, V) for ``logits`` (B, V) and a
    temperature > 0: the softmax of logits / temperature, restricted to the ``top_k``
    likeliest tokens and to the smallest set whose probability reaches ``top_p``, renormalised.
    The temperature comes first, so top-p's set is chosen on the tempered distribution.

    >>> next_token_probs(torch.tensor([[2.0, 1.0, 0.0, -1.0]]), top_k=2)  # 1 / (1 + e^-1)
    tensor([[0.7311, 0.2689, 0.0000, 0.0000]])
    """
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p  # mass before it already >= p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits.softmax(dim=-1)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row of ``logits`` (B, V): greedy at temperature 0, else drawn from
    ``next_token_probs`` with ``generator``."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = next_token_probs(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@register_model("gpt")
def gpt(
    vocab_size: int,
    block_size: int = 64,
    variant: Variant = "2020",
    n_layer: int = 4,
    n_head: int = 4,
    n_embd: int = 128,
    dropout: float = 0.0,
    bias: bool = False,
    match_params: bool = True,
) -> GPT:
    """A GPT language model: next-token logits (B, T, V) for token ids (B, T)."""
    for flag, value in (
        ("--vocab-size", vocab_size),
        ("--block-size", block_size),
        ("--n-layer", n_layer),
    ):
        if value < 1:
            raise ConfigError(f"{flag}: accepts an integer >= 1, got {value}")
    if not 0 <= dropout < 1:
        raise ConfigError(f"--dropout: accepts a number in [0, 1), got {dropout}")
    config = GPTConfig.from_variant(
        variant,
        match_params,
        vocab_size=vocab_size,
        block_size=block_size,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        dropout=dropout,
        bias=bias,
    )
    return GPT(config)
