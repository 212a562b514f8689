"""Slice classifiers of MGA Table 4: ResNet18, ResNet18 + CBAM, ResNet50, DenseNet121 and the
mask-guided attention (MGA) classifier.

:class:`ResNet2D` is the ResNet of He et al. (7x7 stride-2 stem, max-pooling, four stages of
basic or bottleneck blocks, global average pooling, one fully connected layer) with an
optional CBAM (Woo et al. 2018) in every block of chosen stages: channel attention (a shared
MLP on the average- and max-pooled features, sigmoid of their sum) and then spatial
attention (a 7x7 convolution on the channel-wise mean and max, sigmoid), applied to the
residual branch before the addition. MGA puts CBAM in the first three stages and
supervises the spatial attention map of one stage (``guided_stage``: the last block's map)
with the lesion mask; the model then also returns ``"attention"`` (B, 1, h, w).

Written here rather than taken from MONAI so that every activation is its own module and no
module is called twice in a forward pass: Captum's DeepLIFT rules hook activation modules
and need exactly that (MGA Figure 10).

DenseNet121 is MONAI's (Huang et al.). All return ``{"label": logits}``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.nets import DenseNet121
from torch import nn

from covidmtl.twod.config import scaled


class ChannelAttention(nn.Module):
    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.max = nn.AdaptiveMaxPool2d(1)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(),
                                 nn.Conv2d(hidden, channels, 1, bias=False))
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        # the shared MLP runs once on both pooled descriptors (one call per module, see above)
        both = self.mlp(torch.cat([self.avg(x), self.max(x)], dim=0))
        return self.gate(both[:b] + both[b:])


class SpatialAttention(nn.Module):
    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attention map (B, 1, H, W) in [0, 1]."""
        stats = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return self.gate(self.bn(self.conv(stats)))


class CBAM(nn.Module):
    """Channel then spatial attention; keeps the last spatial map in ``spatial_map``."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)
        self.spatial_map: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel(x)
        self.spatial_map = self.spatial(x)
        return x * self.spatial_map


def _shortcut(cin: int, cout: int, stride: int, bn_momentum: float) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout, momentum=bn_momentum))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, cbam: dict | None = None, bn_momentum: float = 0.1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=bn_momentum)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, momentum=bn_momentum)
        self.cbam = CBAM(planes, **cbam) if cbam is not None else None
        self.shortcut = _shortcut(cin, planes, stride, bn_momentum)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        if self.cbam is not None:
            out = self.cbam(out)
        return self.relu2(out + (x if self.shortcut is None else self.shortcut(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, cbam: dict | None = None, bn_momentum: float = 0.1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=bn_momentum)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, momentum=bn_momentum)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout, momentum=bn_momentum)
        self.cbam = CBAM(cout, **cbam) if cbam is not None else None
        self.shortcut = _shortcut(cin, cout, stride, bn_momentum)
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.cbam is not None:
            out = self.cbam(out)
        return self.relu3(out + (x if self.shortcut is None else self.shortcut(x)))


RESNET_LAYOUTS = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet50": (Bottleneck, (3, 4, 6, 3))}


class ResNet2D(nn.Module):
    def __init__(self, depth: str = "resnet18", n_classes: int = 2, in_channels: int = 1,
                 widths: Sequence[int] = (64, 128, 256, 512), width: float = 1.0,
                 cbam_stages: Sequence[int] = (), cbam_reduction: int = 16, cbam_kernel: int = 7,
                 guided_stage: int | None = None, bn_momentum: float = 0.1) -> None:
        super().__init__()
        block, layers = RESNET_LAYOUTS[depth]
        if guided_stage is not None and guided_stage not in cbam_stages:
            raise ValueError(f"guided_stage {guided_stage} has no CBAM (cbam_stages {tuple(cbam_stages)})")
        w = [scaled(c, width, 2) for c in widths]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w[0], 7, stride=2, padding=3, bias=False),
                                  nn.BatchNorm2d(w[0], momentum=bn_momentum), nn.ReLU(),
                                  nn.MaxPool2d(3, stride=2, padding=1))
        cin = w[0]
        stages = []
        for k, (planes, n) in enumerate(zip(w, layers), start=1):
            cbam = {"reduction": cbam_reduction, "kernel_size": cbam_kernel} if k in cbam_stages else None
            blocks = []
            for i in range(n):
                blocks.append(block(cin, planes, stride=(1 if k == 1 or i > 0 else 2), cbam=cbam,
                                    bn_momentum=bn_momentum))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, n_classes)
        self.guided_stage = guided_stage
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def stage(self, k: int) -> nn.Sequential:
        return getattr(self, f"layer{k}")

    def guided_cbam(self) -> CBAM | None:
        return None if self.guided_stage is None else self.stage(self.guided_stage)[-1].cbam

    @property
    def cam_layer(self) -> nn.Module:
        return self.layer4

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(image)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        out = {"label": self.fc(torch.flatten(self.pool(x), 1))}
        cbam = self.guided_cbam()
        if cbam is not None:
            out["attention"] = cbam.spatial_map
        return out


class DenseNet121Classifier(nn.Module):
    def __init__(self, n_classes: int = 2, init_features: int = 64, growth_rate: int = 32, width: float = 1.0,
                 in_channels: int = 1) -> None:
        super().__init__()
        self.net = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=n_classes,
                               init_features=scaled(init_features, width, 2), growth_rate=scaled(growth_rate, width, 2))

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"label": self.net(image)}
