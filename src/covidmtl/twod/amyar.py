"""Amyar et al.'s multitask network and their 8-layer CNN baseline.

:class:`AmyarNet` (Amyar architecture): a common U-Net-style encoder of 3x3 convolutions
(two conv-BN-ReLU per level) in which stride-2 convolutions replace pooling, filters 64 ->
1024 over five levels; from its output

- a reconstruction decoder without skip connections (sigmoid output, MSE to the input),
- a segmentation decoder with skip connections (sigmoid lesion probability, Dice loss),
- a classification head: a 3x3 convolution, global average pooling and fully connected
  layers (2 or 3 classes).

Any subset of the three tasks can be switched on (the ablations of Amyar Tables 2 and 3).
Outputs are ``{"label": logits, "seg": logits, "recon": image in [0, 1]}`` for the active tasks.

:class:`CNN8` (Amyar Experiment 3): six 3x3 conv-BN-ReLU layers (max-pooling after every
second) and two fully connected layers.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from covidmtl.twod.config import scaled

TASKS = ("cls", "seg", "rec")


def conv_bn_relu(cin: int, cout: int, stride: int = 1, bn_momentum: float = 0.1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(cout, momentum=bn_momentum), nn.ReLU())


def double_conv(cin: int, cout: int, bn_momentum: float = 0.1) -> nn.Sequential:
    return nn.Sequential(conv_bn_relu(cin, cout, 1, bn_momentum), conv_bn_relu(cout, cout, 1, bn_momentum))


class Encoder(nn.Module):
    """Level 0 at full resolution; level k downsampled by a stride-2 convolution then two convolutions."""

    def __init__(self, in_channels: int, filters: Sequence[int], bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.levels = nn.ModuleList([double_conv(in_channels, filters[0], bn_momentum)])
        for cin, cout in zip(filters[:-1], filters[1:]):
            self.levels.append(nn.Sequential(conv_bn_relu(cin, cout, 2, bn_momentum),
                                             double_conv(cout, cout, bn_momentum)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        return feats


class Decoder(nn.Module):
    """Transposed-convolution upsampling to full resolution; with ``skips`` the encoder
    features of each level are concatenated (U-Net)."""

    def __init__(self, filters: Sequence[int], skips: bool, out_channels: int = 1, bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.skips = skips
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for cdeep, cshallow in zip(filters[::-1][:-1], filters[::-1][1:]):
            self.ups.append(nn.ConvTranspose2d(cdeep, cshallow, 2, stride=2))
            self.blocks.append(double_conv(cshallow * (2 if skips else 1), cshallow, bn_momentum))
        self.head = nn.Conv2d(filters[0], out_channels, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for up, block, skip in zip(self.ups, self.blocks, feats[::-1][1:]):
            x = up(x)
            if x.shape[-2:] != skip.shape[-2:]:  # odd sizes: match the encoder level
                x = nn.functional.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = block(torch.cat([x, skip], dim=1) if self.skips else x)
        return self.head(x)


class ClassificationHead(nn.Module):
    def __init__(self, channels: int, n_classes: int, hidden: Sequence[int], dropout: float,
                 bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.conv = conv_bn_relu(channels, channels, 1, bn_momentum)
        self.pool = nn.AdaptiveAvgPool2d(1)
        layers: list[nn.Module] = []
        cin = channels
        for h in hidden:
            layers += [nn.Linear(cin, h), nn.ReLU(), nn.Dropout(dropout)]
            cin = h
        layers.append(nn.Linear(cin, n_classes))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.flatten(self.pool(self.conv(x)), 1))


class AmyarNet(nn.Module):
    def __init__(self, tasks: Sequence[str] = TASKS, n_classes: int = 2, in_channels: int = 1,
                 filters: Sequence[int] = (64, 128, 256, 512, 1024), width: float = 1.0,
                 cls_hidden: Sequence[int] = (128, 64), cls_dropout: float = 0.5, bn_momentum: float = 0.1) -> None:
        super().__init__()
        unknown = set(tasks) - set(TASKS)
        if unknown or not tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {tasks}")
        self.tasks = tuple(t for t in TASKS if t in tasks)
        f = [scaled(c, width, 2) for c in filters]
        self.encoder = Encoder(in_channels, f, bn_momentum)
        self.classifier = ClassificationHead(f[-1], n_classes, [scaled(h, width, 2) for h in cls_hidden],
                                             cls_dropout, bn_momentum) if "cls" in self.tasks else None
        self.seg_decoder = Decoder(f, skips=True, bn_momentum=bn_momentum) if "seg" in self.tasks else None
        self.rec_decoder = Decoder(f, skips=False, out_channels=in_channels,
                                   bn_momentum=bn_momentum) if "rec" in self.tasks else None

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.encoder(image)
        out: dict[str, torch.Tensor] = {}
        if self.classifier is not None:
            out["label"] = self.classifier(feats[-1])
        if self.seg_decoder is not None:
            out["seg"] = self.seg_decoder(feats)
        if self.rec_decoder is not None:
            out["recon"] = torch.sigmoid(self.rec_decoder(feats))
        return out


class CNN8(nn.Module):
    """Six convolutions and two fully connected layers (Amyar Experiment 3 baseline)."""

    def __init__(self, n_classes: int = 2, in_channels: int = 1, filters: Sequence[int] = (32, 32, 64, 64, 128, 128),
                 hidden: int = 64, dropout: float = 0.5, width: float = 1.0, bn_momentum: float = 0.1) -> None:
        super().__init__()
        if len(filters) != 6:
            raise ValueError("CNN8 needs six convolution widths")
        f = [scaled(c, width, 2) for c in filters]
        layers: list[nn.Module] = []
        cin = in_channels
        for i, c in enumerate(f):
            layers.append(conv_bn_relu(cin, c, 1, bn_momentum))
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
            cin = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        h = scaled(hidden, width, 2)
        self.fc = nn.Sequential(nn.Linear(cin, h), nn.ReLU(), nn.Dropout(dropout), nn.Linear(h, n_classes))

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"label": self.fc(torch.flatten(self.pool(self.features(image)), 1))}
