"""The book's small UNet for 28x28 digits (step09), and its label-conditioned variant (step10).

It predicts the noise ``eps`` in a noisy image ``x_t`` at diffusion step ``t``. Two halvings and two
doublings of the resolution, each stage a ``ConvBlock`` (Conv3x3 -> BatchNorm -> ReLU, twice); the
step ``t`` enters every block as a sinusoidal embedding (100 numbers) that the block's own two-layer
MLP maps to one shift per input channel. With the book's widths (64, 128, 256) the model has
2,167,784 parameters, exactly as the book's; the conditional one adds an embedding of 11 labels
(the ten digits and a learned "no label", index 10) that is added to the time embedding.

    x (B, 1, 28, 28) -> down1 (B, 64, 28, 28) -> pool -> down2 (B, 128, 14, 14) -> pool
      -> bottom (B, 256, 7, 7) -> up -> cat down2 -> up2 (B, 128, 14, 14)
      -> up -> cat down1 -> up1 (B, 64, 28, 28) -> 1x1 conv -> eps (B, 1, 28, 28)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mlenv.errors import ConfigError
from mlenv.models import register_model
from mlenv.train.base import BaseModel


def sinusoidal_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """The book's position encoding of integer steps, for a whole batch at once: (B,) -> (B, dim).

    Column ``i`` holds ``sin(t / 10000 ** (i / dim))`` for even ``i`` and ``cos`` of the same
    angle for odd ``i`` (each column keeps its own frequency, as the book writes it).

    >>> sinusoidal_embedding(torch.tensor([0, 5]), 4).shape
    torch.Size([2, 4])
    """
    i = torch.arange(dim, device=timesteps.device)
    inv_freq = torch.exp(i * (-math.log(10000.0) / dim))  # (dim,): 10000 ** (-i / dim)
    angles = timesteps.float()[:, None] * inv_freq[None, :]  # (B, dim)
    return torch.where(i % 2 == 0, angles.sin(), angles.cos())


class ConvBlock(nn.Module):
    """(B, C_in, H, W) and a step embedding (B, time_dim) -> (B, C_out, H, W): the embedding,
    through a two-layer MLP, shifts each input channel; then two Conv3x3-BatchNorm-ReLU."""

    def __init__(self, in_channels: int, out_channels: int, time_dim: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.time_mlp = nn.Sequential(
            nn.Linear(time_dim, in_channels),
            nn.ReLU(inplace=True),
            nn.Linear(in_channels, in_channels),
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        shift = self.time_mlp(emb)[:, :, None, None]  # (B, C_in, 1, 1)
        return self.convs(x + shift)


class UNet(BaseModel):
    """Noise predictor ``model(x_t, t)`` -> eps, both (B, C, H, W); ``num_labels`` adds a label
    embedding (``model(x_t, t, labels)``, label ``num_labels`` meaning "no label")."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        channels: Sequence[int] = (64, 128, 256),
        time_dim: int = 100,
        num_labels: int | None = None,
    ) -> None:
        super().__init__()
        if len(channels) != 3 or any(int(c) < 1 for c in channels):
            raise ConfigError(
                "--channels: accepts three channel counts >= 1 (the book's: 64,128,256), got "
                f"{','.join(map(str, channels)) or 'none'}"
            )
        if in_channels < 1:
            raise ConfigError(f"--in-channels: accepts an integer >= 1, got {in_channels}")
        if image_size < 4 or image_size % 4:
            raise ConfigError(
                f"--image-size: the UNet halves the image twice; accepts a multiple of 4, "
                f"got {image_size}"
            )
        if time_dim < 2:
            raise ConfigError(f"--time-dim: accepts an integer >= 2, got {time_dim}")
        if num_labels is not None and num_labels < 1:
            raise ConfigError(f"--num-labels: accepts an integer >= 1, got {num_labels}")
        c1, c2, c3 = (int(c) for c in channels)
        self.in_channels = in_channels
        self.time_dim = time_dim
        self.num_labels = num_labels
        self.down1 = ConvBlock(in_channels, c1, time_dim)
        self.down2 = ConvBlock(c1, c2, time_dim)
        self.bottom = ConvBlock(c2, c3, time_dim)
        self.up2 = ConvBlock(c3 + c2, c2, time_dim)
        self.up1 = ConvBlock(c2 + c1, c1, time_dim)
        self.out = nn.Conv2d(c1, in_channels, 1)
        # labels 0 .. num_labels - 1, and num_labels: "no label" (classifier-free guidance)
        self.label_emb = nn.Embedding(num_labels + 1, time_dim) if num_labels else None

    @property
    def dim(self) -> int:
        return self.in_channels

    @property
    def null_label(self) -> int | None:
        """The label index that means "no label" (``None`` for an unconditional model)."""
        return self.num_labels

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = sinusoidal_embedding(t, self.time_dim)  # (B, time_dim)
        if self.label_emb is not None:
            if labels is None:  # unconditional prediction: the learned "no label"
                labels = torch.full_like(t, self.num_labels, dtype=torch.long)
            emb = emb + self.label_emb(labels)
        elif labels is not None:
            raise ConfigError("this UNet has no label embedding; build it with num_labels")
        x1 = self.down1(x, emb)  # (B, c1, H, W)
        x2 = self.down2(F.max_pool2d(x1, 2), emb)  # (B, c2, H/2, W/2)
        h = self.bottom(F.max_pool2d(x2, 2), emb)  # (B, c3, H/4, W/4)
        h = self.up2(torch.cat([upsample(h), x2], dim=1), emb)  # (B, c2, H/2, W/2)
        h = self.up1(torch.cat([upsample(h), x1], dim=1), emb)  # (B, c1, H, W)
        return self.out(h)  # (B, in_channels, H, W)


def upsample(x: torch.Tensor) -> torch.Tensor:
    """Twice the resolution, bilinear (the book's ``nn.Upsample(scale_factor=2)``)."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


@register_model("unet")
def unet(
    in_channels: int = 1,
    image_size: int = 28,
    channels: tuple[int, int, int] = (64, 128, 256),
    time_dim: int = 100,
) -> UNet:
    """The book's DDPM noise predictor (step09): ``model(x_t, t)`` -> eps."""
    return UNet(in_channels, image_size, channels, time_dim)


@register_model("unet-conditional")
def unet_conditional(
    in_channels: int = 1,
    image_size: int = 28,
    channels: tuple[int, int, int] = (64, 128, 256),
    time_dim: int = 100,
    num_labels: int = 10,
) -> UNet:
    """The book's UNet with a label embedding (step10): ``model(x_t, t, labels)`` -> eps; label
    ``num_labels`` (or ``labels=None``) is the learned "no label" of classifier-free guidance."""
    return UNet(in_channels, image_size, channels, time_dim, num_labels)
