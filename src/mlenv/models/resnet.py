"""ResNet-18 and ResNet-50 (He et al., 2015), with a stem for small images.

The ImageNet stem (7x7 convolution with stride 2, then 3x3 max pooling) shrinks a 224-pixel image
4x before the first stage; on a 32-pixel CIFAR image it would leave 8x8 maps before any residual
block. The CIFAR stem is one 3x3 convolution with stride 1 and no pooling, so the four stages see
32, 16, 8 and 4 pixels. Stages: ``BasicBlock`` (two 3x3 convolutions, ResNet-18: 2-2-2-2) or
``Bottleneck`` (1x1 down, 3x3, 1x1 up by 4, ResNet-50: 3-4-6-3), widths 64-128-256-512; a shortcut
is a 1x1 convolution with BatchNorm where the shape changes. ResNet-18 for 10 classes with the
CIFAR stem has 11,173,962 parameters; ResNet-50 23,520,842.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from mlenv.errors import ConfigError
from mlenv.models import register_model
from mlenv.models.mlp import check_widths
from mlenv.train.base import BaseModel


def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Convolution (no bias: the BatchNorm shifts) and BatchNorm."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    """x + (conv3x3 -> BN -> ReLU -> conv3x3 -> BN)(x), then ReLU: (B, C_in, H, W) ->
    (B, C, H / stride, W / stride)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            conv_bn(in_channels, channels, 3, stride),
            nn.ReLU(inplace=True),
            conv_bn(channels, channels, 3),
        )
        changes = stride != 1 or in_channels != channels
        self.shortcut = conv_bn(in_channels, channels, 1, stride) if changes else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.branch(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """x + (conv1x1 -> conv3x3 (stride) -> conv1x1 to 4 * channels)(x), BN after each, ReLU
    between: (B, C_in, H, W) -> (B, 4C, H / stride, W / stride)."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        out = channels * self.expansion
        self.branch = nn.Sequential(
            conv_bn(in_channels, channels, 1),
            nn.ReLU(inplace=True),
            conv_bn(channels, channels, 3, stride),
            nn.ReLU(inplace=True),
            conv_bn(channels, out, 1),
        )
        changes = stride != 1 or in_channels != out
        self.shortcut = conv_bn(in_channels, out, 1, stride) if changes else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.branch(x) + self.shortcut(x))


class ResNet(BaseModel):
    """Stem, four stages of ``blocks`` residual blocks (the first block of stages 2-4 halves
    the side), global average pooling, a linear classifier."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks: tuple[int, int, int, int],
        in_channels: int = 3,
        out_features: int = 10,
        stem: Literal["cifar", "imagenet"] = "cifar",
        width: int = 64,
    ) -> None:
        super().__init__()
        check_widths(in_channels=in_channels, out_features=out_features, width=width)
        if stem == "cifar":  # (B, C, H, W) -> (B, width, H, W)
            self.stem = nn.Sequential(conv_bn(in_channels, width, 3), nn.ReLU(inplace=True))
        elif stem == "imagenet":  # (B, C, H, W) -> (B, width, H / 4, W / 4)
            self.stem = nn.Sequential(
                conv_bn(in_channels, width, 7, 2),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, padding=1),
            )
        else:
            raise ConfigError(f"--stem: accepts cifar or imagenet, got {stem!r}")
        stages = []
        channels = width
        for i, count in enumerate(blocks):
            planes = width * 2**i
            layers = []
            for j in range(count):
                layers.append(block(channels, planes, 2 if i > 0 and j == 0 else 1))
                channels = planes * block.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, out_features)
        self.in_channels = in_channels
        self.out_features = out_features

    @property
    def dim(self) -> int:
        return self.out_features

    def init_weights(self) -> None:
        """He (fan-out) initialisation for convolutions, BatchNorm at identity, PyTorch's
        default for the classifier."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.fc.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ConfigError(
                f"resnet: expects images (B, {self.in_channels}, H, W), got a tensor of shape "
                f"{tuple(x.shape)}"
            )
        features = self.stages(self.stem(x))  # (B, 512 * expansion, H / 8, W / 8) (cifar)
        return self.fc(self.pool(features).flatten(1))


@register_model("resnet18")
def resnet18(
    in_channels: int = 3,
    out_features: int = 10,
    stem: Literal["cifar", "imagenet"] = "cifar",
    width: int = 64,
) -> ResNet:
    """ResNet-18: basic blocks 2-2-2-2 (11.17 M parameters for 10 classes, CIFAR stem).

    >>> resnet18()(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """
    return ResNet(BasicBlock, (2, 2, 2, 2), in_channels, out_features, stem, width)


@register_model("resnet50")
def resnet50(
    in_channels: int = 3,
    out_features: int = 10,
    stem: Literal["cifar", "imagenet"] = "cifar",
    width: int = 64,
) -> ResNet:
    """ResNet-50: bottleneck blocks 3-4-6-3 (23.52 M parameters for 10 classes, CIFAR stem).

    >>> resnet50()(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """
    return ResNet(Bottleneck, (3, 4, 6, 3), in_channels, out_features, stem, width)
