"""Image preparation on the device, a batch at a time: uint8 -> float, augmentation, normalisation.

Image data sets stay uint8 (4x smaller than float32) on the device; each batch is converted
there. Every random draw uses torch's global generators (the CPU one for mixing coefficients, the
batch's device for the rest), which checkpoints save, so a resumed run augments as the
uninterrupted one. The classification task calls ``prepare_images`` with ``training=True`` only in
its training forward pass: nothing is augmented at evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

Augment = Literal["none", "flip", "crop", "crop-flip"]
AUGMENTS = ("none", "flip", "crop", "crop-flip")


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] -> float32 in [0, 1]; float images are returned as they are."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel: images (B, C, H, W), one mean and std per channel."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


def random_flip(images: torch.Tensor) -> torch.Tensor:
    """Each image mirrored left-right with probability 1/2: (B, C, H, W) -> same shape."""
    flip = torch.rand(len(images), device=images.device) < 0.5  # (B,)
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)


def random_crop(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Each image padded by ``padding`` zero pixels on every side, then an H x W window at a
    random offset kept (a shift by up to ``padding`` pixels): (B, C, H, W) -> same shape."""
    if padding == 0:
        return images
    b, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))  # (B, C, H + 2p, W + 2p)
    dy = torch.randint(0, 2 * padding + 1, (b,), device=images.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), device=images.device)
    rows = dy.view(b, 1, 1, 1) + torch.arange(h, device=images.device).view(1, 1, h, 1)
    cols = dx.view(b, 1, 1, 1) + torch.arange(w, device=images.device).view(1, 1, 1, w)
    batch = torch.arange(b, device=images.device).view(b, 1, 1, 1)
    channel = torch.arange(c, device=images.device).view(1, c, 1, 1)
    return padded[batch, channel, rows, cols]  # (B, C, H, W)


def mix_batch(
    images: torch.Tensor, mixup: float, cutmix: float
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup (``mixup`` > 0: a Beta(a, a) weight ``lam``, images ``lam * x + (1 - lam) *
    x[perm]``) or CutMix (``cutmix`` > 0: a box of the partner image ``x[perm]`` pasted in, ``lam``
    the area kept); with both, one of the two per batch at random. Returns (images, perm, lam);
    ``mixed_targets`` mixes the labels by the same ``lam``."""
    use_cutmix = cutmix > 0 and (mixup == 0 or bool(torch.rand(()) < 0.5))
    alpha = cutmix if use_cutmix else mixup
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(len(images), device=images.device)
    if use_cutmix:
        h, w = images.shape[2:]
        half_h, half_w = round(h * (1.0 - lam) ** 0.5 / 2), round(w * (1.0 - lam) ** 0.5 / 2)
        cy, cx = int(torch.randint(0, h, ())), int(torch.randint(0, w, ()))
        y0, y1 = max(cy - half_h, 0), min(cy + half_h, h)
        x0, x1 = max(cx - half_w, 0), min(cx + half_w, w)
        images = images.clone()
        images[:, :, y0:y1, x0:x1] = images[perm, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually kept
    else:
        images = lam * images + (1.0 - lam) * images[perm]
    return images, perm, lam


def mixed_targets(
    labels: torch.Tensor, perm: torch.Tensor, lam: float, classes: int
) -> torch.Tensor:
    """Class probabilities ``lam * onehot(y) + (1 - lam) * onehot(y[perm])``: (B, classes)."""
    one_hot = F.one_hot(labels, classes).float()  # (B, classes)
    return lam * one_hot + (1.0 - lam) * one_hot[perm]


def augment_images(images: torch.Tensor, augment: str, padding: int) -> torch.Tensor:
    """Random crop (with ``padding``) and/or horizontal flip, as ``augment`` names."""
    if augment in ("crop", "crop-flip"):
        images = random_crop(images, padding)
    if augment in ("flip", "crop-flip"):
        images = random_flip(images)
    return images
