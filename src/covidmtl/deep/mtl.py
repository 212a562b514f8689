"""COVID-MTL: hard parameter sharing multitask network (COVID-MTL framework).

- Shared trunk: ShiftNet3D (stem -> Shift3D -> 8 Fire modules), or SqueezeNet3D when
  trained without Shift3D.
- Per task a task-specific layer (dropout, 1x1x1 convolution to ``task_channels`` maps,
  ReLU, global average pooling) and a classifier (linear layer to the task's classes).
- Optional auxiliary feed-forward network (FNN) on the radiomics features, hidden layers
  256-128-64-32; its 32-d output is concatenated with each task-specific layer before the
  classifier (ReLU, then linear), as in the authors' code.

Transfer learning (COVID-MTL sections 5.4, 7): :meth:`CovidMTL.replace_tasks` swaps the task layers and
classifiers for new tasks, :meth:`CovidMTL.freeze_trunk` freezes the convolutional trunk.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from covidmtl.deep.squeezenet3d import SqueezeNet3DTrunk, kaiming_init


class RadiomicsFNN(nn.Module):
    """Feed-forward network on the radiomics features: Linear+ReLU layers, the last one linear."""

    def __init__(self, n_features: int, hidden: Sequence[int] = (256, 128, 64, 32)) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("the radiomics FNN needs at least one layer")
        layers: list[nn.Module] = []
        sizes = [n_features, *hidden]
        for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(hidden) - 1:
                layers.append(nn.ReLU(inplace=True))
        self.net = nn.Sequential(*layers)
        self.out_features = sizes[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TaskHead(nn.Module):
    """Task-specific layer + classifier of one task."""

    def __init__(self, in_channels: int, num_classes: int, task_channels: int = 32, aux_features: int = 0,
                 dropout: float = 0.3) -> None:
        super().__init__()
        self.task_layer = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Conv3d(in_channels, task_channels, kernel_size=1),
            nn.ReLU(inplace=False),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(1),
        )
        if aux_features:
            self.classifier = nn.Sequential(nn.ReLU(inplace=False), nn.Linear(task_channels + aux_features, num_classes))
        else:
            self.classifier = nn.Linear(task_channels, num_classes)
        self.aux_features = aux_features
        kaiming_init(self)

    def forward(self, shared: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor:
        z = self.task_layer(shared)
        if self.aux_features:
            z = torch.cat([z, aux.to(z.dtype)], dim=1)
        return self.classifier(z)


class CovidMTL(nn.Module):
    """Shared trunk, one head per task, optional radiomics FNN; returns ``{task: logits}``."""

    def __init__(self, tasks: dict[str, int], trunk: SqueezeNet3DTrunk, n_features: int = 0,
                 task_channels: int = 32, fnn_hidden: Sequence[int] = (256, 128, 64, 32),
                 dropout: float = 0.3) -> None:
        super().__init__()
        self._frozen_trunk = False
        self._freeze_bn = False
        self.trunk = trunk
        self.task_channels = task_channels
        self.dropout = dropout
        self.n_features = n_features
        self.fnn = RadiomicsFNN(n_features, fnn_hidden) if n_features else None
        self.heads = nn.ModuleDict()
        self.tasks: dict[str, int] = {}
        self.replace_tasks(tasks)

    @property
    def cam_layer(self) -> nn.Module:
        return self.trunk.cam_layer

    def replace_tasks(self, tasks: dict[str, int]) -> None:
        """New task-specific layers and classifiers (transfer learning, COVID-MTL section 5.4)."""
        aux = self.fnn.out_features if self.fnn is not None else 0
        self.heads = nn.ModuleDict({
            task: TaskHead(self.trunk.out_channels, n, self.task_channels, aux, self.dropout)
            for task, n in tasks.items()
        })
        self.tasks = dict(tasks)

    def freeze_trunk(self, freeze_batchnorm: bool = True) -> None:
        """Freeze the convolutional trunk (its batch-norm statistics too when asked)."""
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        self._frozen_trunk = True
        self._freeze_bn = freeze_batchnorm
        self.train(self.training)

    def train(self, mode: bool = True) -> "CovidMTL":
        super().train(mode)
        if mode and self._frozen_trunk and self._freeze_bn:
            # Frozen trunk: batch norm keeps its trained statistics; Shift3D stays active.
            for m in self.trunk.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, image: torch.Tensor, features: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        shared = self.trunk(image)
        aux = None
        if self.fnn is not None:
            if features is None:
                raise ValueError("this COVID-MTL model uses radiomics features; pass `features`")
            aux = self.fnn(features.float())
        return {task: head(shared, aux) for task, head in self.heads.items()}
