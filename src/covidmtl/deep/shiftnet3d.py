"""ShiftNet3D: SqueezeNet3D with a Shift3D layer on its low-level feature maps (COVID-MTL):
stem convolution -> Shift3D -> 8 Fire modules (64 to 512 feature maps).

It is the SqueezeNet3D of :mod:`covidmtl.deep.squeezenet3d` with Shift3D switched on, so
that a SqueezeNet3D-vs-ShiftNet3D comparison differs in Shift3D alone (as in the paper's
ablation); the same trunk is shared by all tasks of COVID-MTL (:mod:`covidmtl.deep.mtl`).
"""

from __future__ import annotations

from typing import Sequence

from covidmtl.deep.shift3d import Shift3D
from covidmtl.deep.squeezenet3d import SqueezeNet3D, SqueezeNet3DTrunk


def shiftnet3d_trunk(in_channels: int = 1, width: float = 1.0, squeeze_base: int = 32,
                     stem_stride: Sequence[int] | int = (2, 2, 2), shift3d: Shift3D | None = None,
                     bn_momentum: float = 0.01) -> SqueezeNet3DTrunk:
    """The shared ShiftNet3D trunk (Shift3D with paper defaults unless one is given)."""
    return SqueezeNet3DTrunk(in_channels, width, squeeze_base, stem_stride, shift3d or Shift3D(), bn_momentum)


class ShiftNet3D(SqueezeNet3D):
    """Single-task ShiftNet3D classifier; returns ``{task: logits}``."""

    def __init__(self, task: str, num_classes: int, in_channels: int = 1, width: float = 1.0,
                 squeeze_base: int = 32, stem_stride: Sequence[int] | int = (2, 2, 2), dropout: float = 0.3,
                 shift3d: Shift3D | None = None, bn_momentum: float = 0.01) -> None:
        super().__init__(task, num_classes, in_channels, width, squeeze_base, stem_stride, dropout,
                         shift3d or Shift3D(), bn_momentum)
