"""Transformer building blocks shared by the GPT, BERT and ViT families.

Top to bottom: positions (sinusoidal or learned), the key/value cache used in generation,
multi-head self-attention (causal or not, through ``F.scaled_dot_product_attention``), the MLP,
and the ``Block`` that joins them with a pre-LN or post-LN residual layout.

    >>> block = Block(n_embd=32, n_head=4, causal=True, norm_first=True, activation="gelu")
    >>> block(torch.randn(2, 5, 32)).shape
    torch.Size([2, 5, 32])
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mlenv.errors import ConfigError

Activation = Literal["relu", "gelu"]
PositionKind = Literal["sinusoidal", "learned"]


def check_heads(n_embd: int, n_head: int) -> None:
    """``n_embd`` must split evenly into ``n_head`` heads."""
    if n_head < 1 or n_embd < 1:
        raise ConfigError(f"--n-head/--n-embd: accept integers >= 1, got {n_head}/{n_embd}")
    if n_embd % n_head:
        raise ConfigError(f"--n-embd: must be a multiple of --n-head ({n_head}), got {n_embd}")


def activation_fn(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "gelu":
        return nn.GELU()
    raise ConfigError(f"--activation: accepts relu or gelu, got {name!r}")


# ---------------------------------------------------------------- positions


class SinusoidalPositions(nn.Module):
    """Fixed sin/cos position codes (Vaswani et al. 2017): no parameters."""

    def __init__(self, max_len: int, n_embd: int) -> None:
        super().__init__()
        pos = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)  # (L, 1)
        freq = torch.exp(
            torch.arange(0, n_embd, 2, dtype=torch.float32) * (-math.log(10000.0) / n_embd)
        )  # (ceil(C/2),)
        table = torch.zeros(max_len, n_embd)
        table[:, 0::2] = torch.sin(pos * freq)
        table[:, 1::2] = torch.cos(pos * freq[: n_embd // 2])
        # not saved: it is a function of (max_len, n_embd) alone
        self.register_buffer("table", table, persistent=False)
        self.max_len = max_len

    def forward(self, positions: torch.Tensor) -> torch.Tensor:  # (T,) -> (T, C)
        return self.table[positions]


class LearnedPositions(nn.Module):
    """One learned vector per position (GPT-1/2, BERT)."""

    def __init__(self, max_len: int, n_embd: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(max_len, n_embd)
        self.max_len = max_len

    def forward(self, positions: torch.Tensor) -> torch.Tensor:  # (T,) -> (T, C)
        return self.embedding(positions)


def make_positions(kind: str, max_len: int, n_embd: int) -> nn.Module:
    if kind == "sinusoidal":
        return SinusoidalPositions(max_len, n_embd)
    if kind == "learned":
        return LearnedPositions(max_len, n_embd)
    raise ConfigError(f"--positions: accepts sinusoidal or learned, got {kind!r}")


# ---------------------------------------------------------------- key/value cache


class LayerCache:
    """Keys and values of the positions one attention layer has seen: (B, n_head, T, head_dim)."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new positions' keys/values; return all of them (past then new)."""
        if self.keys is None:
            self.keys, self.values = k, v
        else:
            self.keys = torch.cat([self.keys, k], dim=2)
            self.values = torch.cat([self.values, v], dim=2)
        return self.keys, self.values

    def crop(self, length: int) -> None:
        """Keep the last ``length`` positions (a sliding window past the block size)."""
        if self.keys is not None and self.keys.shape[2] > length:
            self.keys = self.keys[:, :, -length:]
            self.values = self.values[:, :, -length:]


class KVCache:
    """One ``LayerCache`` per block; ``len(cache)`` is the number of positions seen."""

    def __init__(self, n_layer: int) -> None:
        self.layers = [LayerCache() for _ in range(n_layer)]

    def __len__(self) -> int:
        return len(self.layers[0])


# ---------------------------------------------------------------- attention, MLP, block


class SelfAttention(nn.Module):
    """Multi-head self-attention. ``causal``: position t sees positions <= t only.

    ``forward(x, cache=None, mask=None)``: with a ``LayerCache`` the new positions attend to the
    cached ones as well (and are added to it); ``mask`` (bool, broadcastable to (B, 1, T, T),
    True = may attend) is for padding in non-causal models.
    """

    def __init__(
        self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True, causal: bool = True
    ) -> None:
        super().__init__()
        check_heads(n_embd, n_head)
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=bias)  # queries, keys, values in one matmul
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)  # a residual projection
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head = n_head
        self.dropout = dropout
        self.causal = causal

    def forward(
        self,
        x: torch.Tensor,
        cache: LayerCache | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # (B, T, C) each
        # (B, T, C) -> (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        past = 0
        if cache is not None:
            past = len(cache)
            k, v = cache.append(k, v)  # (B, nh, past + T, hs)
        is_causal = self.causal and past == 0 and T > 1 and mask is None
        if self.causal and T > 1 and not is_causal:
            # new query i sits at position past + i: it sees keys 0 .. past + i
            allowed = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past)
            mask = allowed if mask is None else mask & allowed
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: C -> hidden -> C."""

    def __init__(
        self,
        n_embd: int,
        hidden: int | None = None,
        activation: str = "gelu",
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        hidden = hidden or 4 * n_embd
        self.fc = nn.Linear(n_embd, hidden, bias=bias)
        self.act = activation_fn(activation)
        self.proj = nn.Linear(hidden, n_embd, bias=bias)  # a residual projection
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        return self.dropout(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    """Attention then MLP, each in a residual branch.

    pre-LN (``norm_first=True``, GPT-2 on):   x = x + attn(ln1(x));  x = x + mlp(ln2(x))
    post-LN (``norm_first=False``, 2017):     x = ln1(x + attn(x));  x = ln2(x + mlp(x))
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        causal: bool = True,
        norm_first: bool = True,
        activation: str = "gelu",
        dropout: float = 0.0,
        bias: bool = True,
        mlp_hidden: int | None = None,
    ) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = SelfAttention(n_embd, n_head, dropout, bias, causal)
        self.ln2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, mlp_hidden, activation, dropout, bias)
        self.norm_first = norm_first

    def forward(
        self,
        x: torch.Tensor,
        cache: LayerCache | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        if self.norm_first:
            x = x + self.attn(self.ln1(x), cache, mask)
            return x + self.mlp(self.ln2(x))
        x = self.ln1(x + self.attn(x, cache, mask))
        return self.ln2(x + self.mlp(x))


def init_gpt_weights(model: nn.Module, n_layer: int, std: float = 0.02) -> None:
    """GPT-2's initialisation: N(0, 0.02) for linear and embedding weights, zero biases, the
    residual projections (``*.proj``) scaled by 1/sqrt(2 * n_layer) so the residual stream's
    variance does not grow with depth; LayerNorms at (1, 0)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            scale = 1 / math.sqrt(2 * n_layer) if name.endswith(".proj") else 1.0
            nn.init.normal_(module.weight, mean=0.0, std=std * scale)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            module.reset_parameters()


__all__ = [
    "MLP",
    "Block",
    "KVCache",
    "LayerCache",
    "LearnedPositions",
    "SelfAttention",
    "SinusoidalPositions",
    "check_heads",
    "init_gpt_weights",
    "make_positions",
]
