"""Lesion segmenters: MGA's hierarchical multi-scale attention network and the U-Net and
SegNet it is compared with (MGA Table 3; the U-Net also in Amyar Table 2).

:class:`HMSASegmenter` (MGA lesion segmenter, after Tao, Sapra and Catanzaro, "Hierarchical
multi-scale attention for semantic segmentation", 2020): one trunk runs on the input at several
scales; at each scale a segmentation head gives logits L_s and an attention head a map
alpha_s in [0, 1]. Scales are combined hierarchically (MGA eq. 1): going from the largest scale
down, ``pred = alpha_s * L_s + (1 - alpha_s) * pred`` (pred resized to scale s) for s >= 1,
and for s < 1 ``pred = U(alpha_s * L_s) + (1 - U(alpha_s)) * pred`` (U: upsampling to
pred's size). With the training scales (0.5, 1.0) this is eq. 1,
L = U(alpha_0.5 * L_0.5) + (1 - U(alpha_0.5)) * L_1.0; at inference the scales are
0.5, 1.0, 2.0. The paper's trunk is HRNet-OCR; here a MONAI BasicUNet (trains on a CPU at
the smoke size).

:class:`UNetSegmenter`: MONAI's BasicUNet (two 3x3 conv per level, max-pooling, transposed
convolutions; batch norm and ReLU as the original U-Net). :class:`SegNet` (Badrinarayanan et
al. 2017): VGG16-layout encoder whose max-pooling indices drive the decoder's unpooling.
Every segmenter returns ``{"seg": logits}`` (B, 1, H, W) at the input size.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet
from torch import nn

from covidmtl.twod.amyar import conv_bn_relu
from covidmtl.twod.config import scaled


def basic_unet(out_channels: int, features: Sequence[int], bn_momentum: float = 0.1) -> BasicUNet:
    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=out_channels, features=tuple(features),
                     act=("relu", {"inplace": False}), norm=("batch", {"momentum": bn_momentum}))


class UNetSegmenter(nn.Module):
    def __init__(self, features: Sequence[int] = (64, 128, 256, 512, 1024, 64), width: float = 1.0,
                 bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.net = basic_unet(1, [scaled(c, width, 2) for c in features], bn_momentum)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"seg": self.net(image)}


class SegNet(nn.Module):
    STAGE_CONVS = (2, 2, 3, 3, 3)  # VGG16

    def __init__(self, filters: Sequence[int] = (64, 128, 256, 512, 512), width: float = 1.0,
                 bn_momentum: float = 0.1) -> None:
        super().__init__()
        if len(filters) != len(self.STAGE_CONVS):
            raise ValueError("SegNet needs five stage widths")
        f = [scaled(c, width, 2) for c in filters]
        self.encoder = nn.ModuleList()
        cin = 1
        for n, c in zip(self.STAGE_CONVS, f):
            self.encoder.append(nn.Sequential(*[conv_bn_relu(cin if i == 0 else c, c, 1, bn_momentum)
                                                for i in range(n)]))
            cin = c
        self.decoder = nn.ModuleList()
        for k in reversed(range(len(f))):
            cout = f[k - 1] if k > 0 else f[0]
            n = self.STAGE_CONVS[k]
            self.decoder.append(nn.Sequential(*[conv_bn_relu(f[k], f[k] if i < n - 1 else cout, 1, bn_momentum)
                                                for i in range(n)]))
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.head = nn.Conv2d(f[0], 1, 3, padding=1)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = image
        stack = []
        for stage in self.encoder:
            x = stage(x)
            size = x.shape[-2:]
            x, idx = self.pool(x)
            stack.append((idx, size))
        for stage in self.decoder:
            idx, size = stack.pop()
            x = stage(self.unpool(x, idx, output_size=size))
        return {"seg": self.head(x)}


class HMSASegmenter(nn.Module):
    def __init__(self, trunk_features: Sequence[int] = (32, 32, 64, 128, 256, 32), attention_channels: int = 256,
                 train_scales: Sequence[float] = (0.5, 1.0), infer_scales: Sequence[float] = (0.5, 1.0, 2.0),
                 width: float = 1.0, bn_momentum: float = 0.1) -> None:
        super().__init__()
        f = [scaled(c, width, 2) for c in trunk_features]
        channels = f[-1]
        self.trunk = basic_unet(channels, f, bn_momentum)
        self.trunk_act = nn.Sequential(nn.BatchNorm2d(channels, momentum=bn_momentum), nn.ReLU())
        self.seg_head = nn.Conv2d(channels, 1, 1)
        a = scaled(attention_channels, width, 2)
        self.attn_head = nn.Sequential(conv_bn_relu(channels, a, 1, bn_momentum), conv_bn_relu(a, a, 1, bn_momentum),
                                       nn.Conv2d(a, 1, 1), nn.Sigmoid())
        self.train_scales = tuple(float(s) for s in train_scales)
        self.infer_scales = tuple(float(s) for s in infer_scales)

    def single_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.trunk_act(self.trunk(x))
        return self.seg_head(feats), self.attn_head(feats)

    def multi_scale(self, image: torch.Tensor, scales: Sequence[float]) -> torch.Tensor:
        pred = None
        for s in sorted(scales, reverse=True):
            x = image if s == 1.0 else F.interpolate(image, scale_factor=s, mode="bilinear", align_corners=False,
                                                     recompute_scale_factor=False)
            logits, attn = self.single_scale(x)
            if pred is None:
                pred = logits
            elif s >= 1.0:
                pred = F.interpolate(pred, size=logits.shape[-2:], mode="bilinear", align_corners=False)
                pred = attn * logits + (1 - attn) * pred
            else:
                weighted = F.interpolate(attn * logits, size=pred.shape[-2:], mode="bilinear", align_corners=False)
                attn = F.interpolate(attn, size=pred.shape[-2:], mode="bilinear", align_corners=False)
                pred = weighted + (1 - attn) * pred
        if pred.shape[-2:] != image.shape[-2:]:
            pred = F.interpolate(pred, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return pred

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"seg": self.multi_scale(image, self.train_scales if self.training else self.infer_scales)}
