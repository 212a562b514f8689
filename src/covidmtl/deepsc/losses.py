"""DeepSC-COVID losses (section IV-D, eqs. 6-11).

- Segmentation (eqs. 6-8): Dice + focal loss on the generator's lesion logits (MONAI
  ``DiceLoss`` with the Dice taken over all patches of the batch together, ``FocalLoss``
  averaged over voxels); samples without a lesion mask are left out.
- Classification (eq. 9): class-weighted cross-entropy.
- Task-aware loss (eq. 10): mean squared difference between the intermediate
  segmentations (sigmoid) and the lesion evidence masks V_l (eq. 5, normalised to [0, 1])
  of the sample's class, both on the patch's voxels: V_l lives on the classification
  input (the whole volume), so it is sampled at the patch's box (``grid_sample``). Pairs by
  resolution: V_1 (1/2) with S at 1/2, V_2 (1/4) with S at 1/4, V_3 (1/8) with S at 1/8
  ("multi"); "single" keeps the finest pair (Table III). Only COVID-19 and CAP samples
  count: a non-pneumonia scan has no lesion evidence to agree with.
- Total (eq. 11): lambda_seg L_seg + lambda_cls L_cls + lambda_ta L_ta over the parts that
  the training mode uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, FocalLoss
from torch import nn

from covidmtl.deepsc.config import DeepSCConfig
from covidmtl.deepsc.data import PNEUMONIA
from covidmtl.deepsc.networks import normalise_evidence

# (evidence layer, intermediate segmentation index): S is ordered coarse (1/8) to fine (1).
TA_PAIRS = {"multi": ((0, 2), (1, 1), (2, 0)), "single": ((0, 2),)}


def roi_grid(box: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Sampling grid (B, d, h, w, 3) of voxel centres of a (d, h, w) grid over each box
    (z_lo, z_hi, y_lo, y_hi, x_lo, x_hi) in normalised coordinates (grid_sample order x, y, z)."""
    b = box.shape[0]
    axes = []
    for k, n in enumerate(size):
        lo, hi = box[:, 2 * k], box[:, 2 * k + 1]
        t = (torch.arange(n, device=box.device, dtype=torch.float32) + 0.5) / n
        axes.append(lo[:, None] + (hi - lo)[:, None] * t[None])
    d, h, w = size
    gz = axes[0][:, :, None, None].expand(b, d, h, w)
    gy = axes[1][:, None, :, None].expand(b, d, h, w)
    gx = axes[2][:, None, None, :].expand(b, d, h, w)
    return torch.stack([gx, gy, gz], dim=-1)


def evidence_on_patch(evidence: torch.Tensor, box: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Normalised evidence mask sampled on a patch's (d, h, w) grid (zeros outside the volume)."""
    return F.grid_sample(normalise_evidence(evidence), roi_grid(box.float(), size), mode="bilinear",
                         padding_mode="zeros", align_corners=False)


def _masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    weights = weights.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


class DeepSCLoss(nn.Module):
    def __init__(self, cfg: DeepSCConfig, class_weights: torch.Tensor | None = None,
                 lambda_ta: float | None = None, task_aware_scales: str | None = None) -> None:
        super().__init__()
        lc = cfg.loss
        self.dice = DiceLoss(sigmoid=True, batch=True)
        self.focal = FocalLoss(gamma=lc.focal_gamma, alpha=lc.focal_alpha)
        self.dice_weight, self.focal_weight = float(lc.dice_weight), float(lc.focal_weight)
        self.lambda_seg, self.lambda_cls = float(lc.lambda_seg), float(lc.lambda_cls)
        self.lambda_ta = float(lc.lambda_ta if lambda_ta is None else lambda_ta)
        self.pairs = TA_PAIRS[task_aware_scales or lc.task_aware_scales]
        self.register_buffer("class_weights", torch.ones(3) if class_weights is None
                             else torch.as_tensor(class_weights, dtype=torch.float32))

    def segmentation(self, logits: torch.Tensor, target: torch.Tensor, has_mask: torch.Tensor) -> torch.Tensor:
        """Dice (over the batch's patches together, so that lesion-free patches do not make the
        soft Dice degenerate) + voxel-mean focal loss, over the samples that have a lesion mask."""
        keep = has_mask.to(torch.bool).view(-1)
        if not bool(keep.any()):
            return logits.float().sum() * 0.0  # keeps the graph; nothing to learn from this batch
        logits, target = logits[keep].float(), target[keep].float()
        return self.dice_weight * self.dice(logits, target) + self.focal_weight * self.focal(logits, target)

    def classification(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), label, weight=self.class_weights)

    def task_aware(self, out: dict, targets: dict, model: nn.Module) -> torch.Tensor:
        label = targets["label"]
        evidence = model.evidence_masks(out["cls_features"], label)
        use = torch.zeros_like(label, dtype=torch.bool)
        for k in PNEUMONIA:
            use |= label == k
        terms = []
        for layer, index in self.pairs:
            s = torch.sigmoid(out["seg_intermediate"][index].float())
            v = evidence_on_patch(evidence[layer], targets["box"], tuple(s.shape[2:]))
            terms.append(_masked_mean((s - v).pow(2).flatten(1).mean(1), use))
        return torch.stack(terms).mean()

    def forward(self, out: dict, targets: dict, mode: str, model: nn.Module) -> tuple[torch.Tensor, dict]:
        parts: dict[str, torch.Tensor] = {}
        total = None
        if "seg_logits" in out:
            parts["seg"] = self.segmentation(out["seg_logits"], targets["lesion"], targets["has_mask"])
            total = self.lambda_seg * parts["seg"]
        if "cls_logits" in out:
            parts["cls"] = self.classification(out["cls_logits"], targets["label"])
            term = self.lambda_cls * parts["cls"]
            total = term if total is None else total + term
        if mode == "joint" and "seg_intermediate" in out and "cls_features" in out and out["seg_intermediate"]:
            parts["ta"] = self.task_aware(out, targets, model)
            if self.lambda_ta > 0:
                total = total + self.lambda_ta * parts["ta"]
        if total is None:
            raise ValueError("the model produced neither a segmentation nor a classification output")
        return total, parts


def class_weights(counts, setting) -> torch.Tensor:
    """Weights of eq. 9: inverse class frequency of the train split (normalised to mean 1),
    'none' (all 1), or the configured list."""
    counts = torch.as_tensor(counts, dtype=torch.float32)
    if setting == "none":
        return torch.ones_like(counts)
    if setting == "inverse_frequency":
        w = torch.where(counts > 0, counts.sum() / (len(counts) * counts.clamp_min(1)), torch.zeros_like(counts))
        return w
    return torch.as_tensor([float(x) for x in setting], dtype=torch.float32)
