"""SqueezeNet3D: 3D Fire modules in the SqueezeNet v1.1 layout of Koepueklue et al.,
"Resource efficient 3D convolutional neural networks" (ICCVW 2019), as used by COVID-MTL.

Layout (channel counts at width 1.0): a 3x3x3 stem convolution to 64 maps, then four
stages separated by 3x3x3 max-pooling with stride 2, each with two Fire modules (the
second with a bypass/residual connection): 64 -> 128 -> 256 -> 384 -> 512 feature maps,
8 Fire modules in all. Squeeze widths are squeeze_base x (1, 2, 3, 4); the authors'
COVID-MTL code uses 32 (Koepueklue: 16) and a stride-2 stem on CT volumes. Batch norm
follows every convolution; He (Kaiming) initialisation.

The classifier is SqueezeNet's: dropout, 1x1x1 convolution to the classes, ReLU, global
average pooling (adaptive here, so any input size works). ``shift3d`` inserts a Shift3D
layer after the stem (ShiftNet3D, :mod:`covidmtl.deep.shiftnet3d`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from covidmtl.deep.shift3d import Shift3D


def scaled(channels: int, width: float) -> int:
    """Channel count at a width multiplier (at least 1)."""
    return max(1, int(round(channels * width)))


class Fire3D(nn.Module):
    """Fire module: 1x1x1 squeeze, then parallel 1x1x1 and 3x3x3 expands, concatenated."""

    def __init__(self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int,
                 bypass: bool = False, bn_eps: float = 1e-3, bn_momentum: float = 0.01) -> None:
        super().__init__()
        if bypass and in_channels != expand1x1 + expand3x3:
            raise ValueError("a bypass Fire module needs in_channels == expand1x1 + expand3x3")
        self.bypass = bypass
        self.squeeze = nn.Conv3d(in_channels, squeeze, kernel_size=1)
        self.squeeze_bn = nn.BatchNorm3d(squeeze, eps=bn_eps, momentum=bn_momentum)
        self.expand1x1 = nn.Conv3d(squeeze, expand1x1, kernel_size=1)
        self.expand1x1_bn = nn.BatchNorm3d(expand1x1, eps=bn_eps, momentum=bn_momentum)
        self.expand3x3 = nn.Conv3d(squeeze, expand3x3, kernel_size=3, padding=1)
        self.expand3x3_bn = nn.BatchNorm3d(expand3x3, eps=bn_eps, momentum=bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.out_channels = expand1x1 + expand3x3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.relu(self.squeeze_bn(self.squeeze(x)))
        out = torch.cat([self.expand1x1_bn(self.expand1x1(s)), self.expand3x3_bn(self.expand3x3(s))], 1)
        if self.bypass:
            out = out + x
        return self.relu(out)


def kaiming_init(module: nn.Module) -> None:
    """He initialisation of convolutions (fan_out, as Koepueklue et al. and the authors' code)."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)


class SqueezeNet3DTrunk(nn.Module):
    """Stem + (optional Shift3D) + 8 Fire modules; output (N, out_channels, d, h, w)."""

    def __init__(self, in_channels: int = 1, width: float = 1.0, squeeze_base: int = 32,
                 stem_stride: Sequence[int] | int = (2, 2, 2), shift3d: Shift3D | None = None,
                 bn_momentum: float = 0.01, bn_eps: float = 1e-3) -> None:
        super().__init__()
        c = [scaled(n, width) for n in (64, 128, 256, 384, 512)]
        e = [scaled(n, width) for n in (64, 128, 192, 256)]
        sq = [scaled(squeeze_base * k, width) for k in (1, 2, 3, 4)]
        bn = {"bn_eps": bn_eps, "bn_momentum": bn_momentum}
        stride = tuple(stem_stride) if not isinstance(stem_stride, int) else (stem_stride,) * 3
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, c[0], kernel_size=3, stride=stride, padding=1),
            nn.BatchNorm3d(c[0], eps=bn_eps, momentum=bn_momentum),
            # Not in-place: Shift3D reads these low-level maps.
            nn.ReLU(inplace=False),
        )
        self.shift3d = shift3d if shift3d is not None else nn.Identity()
        pool = lambda: nn.MaxPool3d(kernel_size=3, stride=2, padding=1)  # noqa: E731
        self.features = nn.Sequential(
            pool(),
            Fire3D(c[0], sq[0], e[0], e[0], **bn),
            Fire3D(2 * e[0], sq[0], e[0], e[0], bypass=True, **bn),
            pool(),
            Fire3D(2 * e[0], sq[1], e[1], e[1], **bn),
            Fire3D(2 * e[1], sq[1], e[1], e[1], bypass=True, **bn),
            pool(),
            Fire3D(2 * e[1], sq[2], e[2], e[2], **bn),
            Fire3D(2 * e[2], sq[2], e[2], e[2], bypass=True, **bn),
            pool(),
            Fire3D(2 * e[2], sq[3], e[3], e[3], **bn),
            Fire3D(2 * e[3], sq[3], e[3], e[3], bypass=True, **bn),
        )
        self.out_channels = 2 * e[3]
        kaiming_init(self)

    @property
    def has_shift3d(self) -> bool:
        return isinstance(self.shift3d, Shift3D)

    @property
    def cam_layer(self) -> nn.Module:
        """Last convolutional block (target layer of Grad-CAM)."""
        return self.features[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.shift3d(self.stem(x)))


class SqueezeNet3D(nn.Module):
    """Single-task SqueezeNet3D classifier; returns ``{task: logits}``."""

    def __init__(self, task: str, num_classes: int, in_channels: int = 1, width: float = 1.0,
                 squeeze_base: int = 32, stem_stride: Sequence[int] | int = (2, 2, 2), dropout: float = 0.3,
                 shift3d: Shift3D | None = None, bn_momentum: float = 0.01) -> None:
        super().__init__()
        self.task = task
        self.tasks = {task: num_classes}
        self.trunk = SqueezeNet3DTrunk(in_channels, width, squeeze_base, stem_stride, shift3d, bn_momentum)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Conv3d(self.trunk.out_channels, num_classes, kernel_size=1),
            nn.ReLU(inplace=False),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(1),
        )
        kaiming_init(self.classifier)

    @property
    def cam_layer(self) -> nn.Module:
        return self.trunk.cam_layer

    def forward(self, image: torch.Tensor, features: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {self.task: self.classifier(self.trunk(image))}
