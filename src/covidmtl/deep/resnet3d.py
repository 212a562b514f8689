"""ResNet3D-34 baseline (COVID-MTL single-task comparison, Table 3).

MONAI's maintained ``monai.networks.nets.ResNet`` with BasicBlocks [3, 4, 6, 3]
(64-128-256-512 maps at width 1.0), one input channel, He initialisation (MONAI's own:
kaiming_normal, fan_out). The first convolution follows the authors' code (5x5x5,
stride 2). ``width`` scales every stage for demo/smoke sizes.
"""

from __future__ import annotations

import torch
from monai.networks.nets import ResNet
from torch import nn

from covidmtl.deep.squeezenet3d import scaled

RESNET34_LAYERS = [3, 4, 6, 3]


class ResNet3D34(nn.Module):
    """Single-task ResNet3D-34; returns ``{task: logits}``."""

    def __init__(self, task: str, num_classes: int, in_channels: int = 1, width: float = 1.0,
                 conv1_kernel: int = 5, conv1_stride: int = 2, bn_momentum: float = 0.01) -> None:
        super().__init__()
        self.task = task
        self.tasks = {task: num_classes}
        self.net = ResNet(
            block="basic",
            layers=RESNET34_LAYERS,
            block_inplanes=[scaled(c, width) for c in (64, 128, 256, 512)],
            spatial_dims=3,
            n_input_channels=in_channels,
            conv1_t_size=conv1_kernel,
            conv1_t_stride=conv1_stride,
            shortcut_type="B",
            num_classes=num_classes,
            norm=("batch", {"momentum": bn_momentum}),
        )

    @property
    def cam_layer(self) -> nn.Module:
        """Last residual stage (target layer of Grad-CAM)."""
        return self.net.layer4

    def forward(self, image: torch.Tensor, features: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {self.task: self.net(image)}
