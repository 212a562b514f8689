"""Losses of the 2D models. Each criterion is called as ``criterion(outputs, targets)`` and
returns ``(total, {component: loss})`` (the contract of the shared training loop).

- :class:`AmyarLoss`: the sum of reconstruction MSE, segmentation Dice loss and
  classification cross-entropy over the active tasks (Amyar: total loss = sum of the three).
  The Dice term covers the samples that have a lesion mask (Amyar trains the tasks on
  different data: slices without a mask add no segmentation loss).
- :class:`SegmentationLoss`: Dice (or Dice + BCE) of the segmenters.
- :class:`ClassificationLoss`: cross-entropy.
- :class:`MGALoss`: cross-entropy and the MSE between a CBAM spatial attention map and the
  lesion mask (area-averaged to the map's size), combined by :class:`UncertaintyWeighting`
  (MGA eq. 6, Kendall, Gal and Cipolla 2018).

Losses are computed in float32 even under autocast.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn


def masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of per-sample ``values`` over ``valid`` samples; 0 (still in the graph) when none is."""
    valid = valid.to(values.dtype)
    return (values * valid).sum() / valid.sum().clamp(min=1.0)


class MaskedDiceLoss(nn.Module):
    """Soft Dice loss of sigmoid(logits) over all pixels of the valid samples of the batch
    (MONAI DiceLoss with ``batch=True``, as a Keras-style Dice over the batch tensor): slices
    whose mask is empty then add to the denominator instead of giving a constant loss of 1.
    0 (still in the graph) when no sample of the batch has a mask."""

    def __init__(self, with_bce: bool = False) -> None:
        super().__init__()
        self.dice = DiceLoss(sigmoid=True, batch=True)
        self.with_bce = with_bce

    def forward(self, logits: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        logits, mask = logits.float(), mask.float()
        if valid is not None:
            keep = valid > 0.5
            if not bool(keep.any()):
                return logits.sum() * 0.0
            logits, mask = logits[keep], mask[keep]
        loss = self.dice(logits, mask)
        if self.with_bce:
            loss = loss + F.binary_cross_entropy_with_logits(logits, mask)
        return loss


class UncertaintyWeighting(nn.Module):
    """Homoscedastic-uncertainty weighting (Kendall et al. 2018; MGA eq. 6).

    With learnable s_k = log sigma_k^2: regression terms (MSE) get
    0.5 * exp(-s_k) * L_k, classification terms (cross-entropy) exp(-s_k) * L_k, and every
    task adds 0.5 * s_k (= log sigma_k). Minimising over s_k gives weights ~ 1 / L_k, so the
    less noisy task (smaller loss at the optimum) gets the larger weight."""

    def __init__(self, kinds: Sequence[str]) -> None:
        super().__init__()
        if not set(kinds) <= {"classification", "regression"}:
            raise ValueError("kinds must be 'classification' or 'regression'")
        self.kinds = tuple(kinds)
        self.log_vars = nn.Parameter(torch.zeros(len(self.kinds)))
        self.register_buffer("factors", torch.tensor([0.5 if k == "regression" else 1.0 for k in self.kinds]))

    def weights(self) -> torch.Tensor:
        """Current effective weights of the task losses."""
        return (self.factors * torch.exp(-self.log_vars)).detach()

    def forward(self, losses: Sequence[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack([torch.as_tensor(l, dtype=torch.float32).reshape(()) for l in losses])
        s = self.log_vars.float()
        return (self.factors * torch.exp(-s) * stacked + 0.5 * s).sum()


class ClassificationLoss(nn.Module):
    def forward(self, outputs: dict, targets: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ce = F.cross_entropy(outputs["label"].float(), targets["label"])
        return ce, {"cls": ce}


class SegmentationLoss(nn.Module):
    def __init__(self, with_bce: bool = False) -> None:
        super().__init__()
        self.dice = MaskedDiceLoss(with_bce)

    def forward(self, outputs: dict, targets: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        seg = self.dice(outputs["seg"], targets["mask"], targets["has_mask"])
        return seg, {"seg": seg}


class AmyarLoss(nn.Module):
    def __init__(self, tasks: Sequence[str], with_bce: bool = False) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.dice = MaskedDiceLoss(with_bce)

    def forward(self, outputs: dict, targets: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``targets["image"]`` is the input image (the reconstruction target)."""
        parts: dict[str, torch.Tensor] = {}
        if "rec" in self.tasks:
            parts["rec"] = F.mse_loss(outputs["recon"].float(), targets["image"].float())
        if "seg" in self.tasks:
            parts["seg"] = self.dice(outputs["seg"], targets["mask"], targets["has_mask"])
        if "cls" in self.tasks:
            parts["cls"] = F.cross_entropy(outputs["label"].float(), targets["label"])
        return torch.stack(list(parts.values())).sum(), parts


def guide_at(attention: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    """Lesion mask area-averaged to the attention map's size."""
    if guide.shape[-2:] == attention.shape[-2:]:
        return guide.float()
    return F.adaptive_avg_pool2d(guide.float(), attention.shape[-2:])


class MGALoss(nn.Module):
    """Cross-entropy + mask-guided attention MSE, uncertainty-weighted (MGA eq. 6)."""

    components = ("cls", "mga")

    def __init__(self) -> None:
        super().__init__()
        self.weighting = UncertaintyWeighting(["classification", "regression"])

    @property
    def log_vars(self) -> nn.Parameter:
        return self.weighting.log_vars

    def forward(self, outputs: dict, targets: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ce = F.cross_entropy(outputs["label"].float(), targets["label"])
        attention = outputs["attention"].float()
        per_sample = (attention - guide_at(attention, targets["guide"])).pow(2).flatten(1).mean(1)
        mga = masked_mean(per_sample, targets["guide_valid"])
        return self.weighting([ce, mga]), {"cls": ce, "mga": mga}
