"""A tiny Vision Transformer (Dosovitskiy et al. 2020) for small images such as MNIST.

Top to bottom: the image is cut into non-overlapping ``patch_size`` x ``patch_size`` patches,
each projected linearly to ``n_embd`` (one strided convolution does both); a learned class token
is put in front, learned position vectors are added, ``n_layer`` non-causal pre-LN transformer
blocks (the shared ones of ``mlenv.models.transformer``) mix the tokens, and a LayerNorm and a
Linear read the class token's final state as the class logits.

A 28x28 digit with ``patch_size`` 7 becomes 16 patches + 1 class token = 17 tokens; with the
defaults (n_embd 64, 4 layers, 4 heads) the model has about 0.2 M parameters. ViT-Ti proper is
``--n-embd 192 --n-layer 12 --n-head 3`` on 224x224 images with 16x16 patches.
"""

from __future__ import annotations

import torch
from torch import nn

from mlenv.errors import ConfigError
from mlenv.models import register_model
from mlenv.models.mlp import check_dropout, check_widths
from mlenv.models.transformer import Block, check_heads, init_gpt_weights
from mlenv.train.base import BaseModel


class PatchEmbedding(nn.Module):
    """(B, C, H, W) -> (B, N, n_embd) with N = (H / p) * (W / p): a Linear on each flattened
    patch, written as a convolution whose kernel and stride are the patch size."""

    def __init__(self, in_channels: int, patch_size: int, n_embd: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, n_embd, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, C_embd, H / p, W / p)
        return x.flatten(2).transpose(1, 2)  # (B, N, C_embd), patches in row-major order


class ViT(BaseModel):
    """Images (B, in_channels, image_size, image_size) -> class logits (B, out_features)."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        out_features: int = 10,
        patch_size: int = 7,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 64,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_widths(
            in_channels=in_channels,
            image_size=image_size,
            out_features=out_features,
            patch_size=patch_size,
            n_layer=n_layer,
            mlp_ratio=mlp_ratio,
        )
        check_heads(n_embd, n_head)
        check_dropout(dropout)
        if image_size % patch_size:
            raise ConfigError(
                f"--patch-size: must divide the image size ({image_size}), got {patch_size}"
            )
        self.n_patches = (image_size // patch_size) ** 2
        self.n_layer = n_layer
        self.out_features = out_features
        self.patch_embedding = PatchEmbedding(in_channels, patch_size, n_embd)
        self.class_token = nn.Parameter(torch.zeros(1, 1, n_embd))
        self.positions = nn.Parameter(torch.zeros(1, 1 + self.n_patches, n_embd))
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(
                n_embd,
                n_head,
                causal=False,
                norm_first=True,
                activation="gelu",
                dropout=dropout,
                mlp_hidden=mlp_ratio * n_embd,
            )
            for _ in range(n_layer)
        )
        self.final_ln = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, out_features)

    @property
    def dim(self) -> int:
        return self.out_features

    def init_weights(self) -> None:
        init_gpt_weights(self, self.n_layer)
        nn.init.normal_(self.class_token, std=0.02)
        nn.init.normal_(self.positions, std=0.02)
        # the patch projection is a Linear on the flattened patch: same init as the Linears
        nn.init.normal_(self.patch_embedding.proj.weight, std=0.02)
        nn.init.zeros_(self.patch_embedding.proj.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        x = self.patch_embedding(images)  # (B, N, C)
        cls = self.class_token.expand(len(x), -1, -1)  # (B, 1, C)
        x = torch.cat([cls, x], dim=1) + self.positions  # (B, 1 + N, C)
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x)  # (B, 1 + N, C)
        return self.head(self.final_ln(x[:, 0]))  # the class token -> (B, classes)


@register_model("vit")
def vit(
    in_channels: int = 1,
    image_size: int = 28,
    out_features: int = 10,
    patch_size: int = 7,
    n_layer: int = 4,
    n_head: int = 4,
    n_embd: int = 64,
    mlp_ratio: int = 4,
    dropout: float = 0.0,
) -> ViT:
    """Tiny Vision Transformer: patch embedding, class token, learned positions, pre-LN blocks."""
    return ViT(
        in_channels,
        image_size,
        out_features,
        patch_size,
        n_layer,
        n_head,
        n_embd,
        mlp_ratio,
        dropout,
    )
