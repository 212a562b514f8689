"""Shift3D: real-time 3D augmentation of low-level feature maps (COVID-MTL Algorithm 2).

In training, every feature map (one channel of one sample) of a selected sample is rolled
(``torch.roll``) along one of its three spatial dimensions, chosen at random, in a random
direction, by a random number of positions between 0 and ``floor(p * size)`` of that
dimension (p = ``max_shift_fraction``, 0.2 in the paper). Elements pushed past the end
re-enter at the start; with ``pad=True`` they are overwritten by ``pad_value`` instead.
A sample is selected with probability ``probability`` (0.25 in the authors' code), so the
network also sees unshifted maps. In eval mode the layer is the identity.

All random numbers come from torch's default CPU generator: ``torch.manual_seed`` fixes
them, on CPU and CUDA alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ShiftPlan:
    """The random draws of one forward pass; index [n, c] is sample n, channel c."""

    selected: torch.Tensor  # (N,) bool: sample is shifted
    dims: torch.Tensor      # (N, C) long: spatial dimension 0..2 (D, H, W)
    shifts: torch.Tensor    # (N, C) long: signed number of positions

    def max_abs_shift(self) -> int:
        return int(self.shifts.abs().max()) if self.shifts.numel() else 0


def max_shifts(spatial: tuple[int, int, int], max_shift_fraction: float) -> torch.Tensor:
    """Largest allowed shift per spatial dimension: floor(p * size)."""
    return torch.tensor([int(max_shift_fraction * s) for s in spatial], dtype=torch.long)


class Shift3D(nn.Module):
    """Shift3D layer for (N, C, D, H, W) feature maps; identity in eval mode."""

    def __init__(self, max_shift_fraction: float = 0.2, probability: float = 0.25,
                 pad: bool = False, pad_value: float = 0.0) -> None:
        super().__init__()
        if not 0 <= max_shift_fraction < 1:
            raise ValueError("max_shift_fraction must be in [0, 1)")
        if not 0 <= probability <= 1:
            raise ValueError("probability must be in [0, 1]")
        self.max_shift_fraction = float(max_shift_fraction)
        self.probability = float(probability)
        self.pad = bool(pad)
        self.pad_value = float(pad_value)

    def extra_repr(self) -> str:
        return (f"max_shift_fraction={self.max_shift_fraction}, probability={self.probability}, "
                f"pad={self.pad}, pad_value={self.pad_value}")

    def sample_plan(self, shape: torch.Size | tuple[int, ...], generator: torch.Generator | None = None) -> ShiftPlan:
        """Draw selection, dimension, direction and amount for every (sample, channel)."""
        n, c = int(shape[0]), int(shape[1])
        spatial = tuple(int(s) for s in shape[2:])
        if len(spatial) != 3:
            raise ValueError(f"Shift3D expects (N, C, D, H, W) input, got shape {tuple(shape)}")
        selected = torch.rand(n, generator=generator) < self.probability
        dims = torch.randint(0, 3, (n, c), generator=generator)
        direction = torch.randint(0, 2, (n, c), generator=generator) * 2 - 1
        bound = max_shifts(spatial, self.max_shift_fraction)[dims]
        # Uniform integer in [0, bound] (inclusive, as random.randint in the authors' code).
        amount = torch.minimum((torch.rand(n, c, generator=generator) * (bound + 1)).long(), bound)
        return ShiftPlan(selected=selected, dims=dims, shifts=direction * amount)

    def apply_plan(self, x: torch.Tensor, plan: ShiftPlan) -> torch.Tensor:
        """Roll each selected (sample, channel) map as planned; returns a new tensor."""
        if not bool(plan.selected.any()):
            return x
        out = x.clone()
        for i in torch.nonzero(plan.selected).flatten().tolist():
            for ch in range(x.shape[1]):
                shift = int(plan.shifts[i, ch])
                if shift == 0:
                    continue
                dim = int(plan.dims[i, ch])
                rolled = torch.roll(x[i, ch], shifts=shift, dims=dim)
                if self.pad:
                    size = rolled.shape[dim]
                    start = 0 if shift > 0 else size + shift
                    rolled.narrow(dim, start, abs(shift)).fill_(self.pad_value)
                out[i, ch] = rolled
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.probability <= 0 or self.max_shift_fraction <= 0:
            return x
        return self.apply_plan(x, self.sample_plan(x.shape))
