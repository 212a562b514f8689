"""Overlap metrics of a predicted lung mask against ground truth (COVID-MTL section 4.1).

Dice = 2TP / (2TP + FP + FN), Jaccard = TP / (TP + FP + FN),
MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)), precision = TP / (TP + FP),
counted over all voxels of the image (TN included).  Where a denominator is zero the value
is undefined and returned as NaN, except Dice and Jaccard of two empty masks (perfect
agreement, 1.0).
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

METRIC_NAMES = ("dice", "jaccard", "mcc", "precision")


def _as_bool_array(mask: sitk.Image | np.ndarray) -> np.ndarray:
    if isinstance(mask, sitk.Image):
        return sitk.GetArrayViewFromImage(mask) > 0
    return np.asarray(mask) > 0


def check_same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> None:
    """ValueError unless both images have the same size, spacing, origin and direction."""
    problems = []
    if a.GetSize() != b.GetSize():
        problems.append(f"size {a.GetSize()} vs {b.GetSize()}")
    for name in ("GetSpacing", "GetOrigin", "GetDirection"):
        va, vb = np.asarray(getattr(a, name)()), np.asarray(getattr(b, name)())
        if va.shape != vb.shape or not np.allclose(va, vb, atol=tol, rtol=0):
            problems.append(f"{name[3:].lower()} {tuple(np.round(va, 4))} vs {tuple(np.round(vb, 4))}")
    if problems:
        raise ValueError("images are not on the same grid: " + "; ".join(problems))


def confusion_counts(pred: sitk.Image | np.ndarray, gt: sitk.Image | np.ndarray) -> dict[str, int]:
    """Voxel counts TP, FP, FN, TN (masks: anything > 0 is foreground)."""
    if isinstance(pred, sitk.Image) and isinstance(gt, sitk.Image):
        check_same_grid(pred, gt)
    p, g = _as_bool_array(pred), _as_bool_array(gt)
    if p.shape != g.shape:
        raise ValueError(f"prediction {p.shape} and ground truth {g.shape} differ in shape")
    tp = int(np.count_nonzero(p & g))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(g)) - tp
    tn = int(p.size) - tp - fp - fn
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def metrics_from_counts(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """Dice, Jaccard, MCC and precision from confusion counts (Python ints: no overflow)."""
    nan = float("nan")
    union = tp + fp + fn
    dice = 2 * tp / (2 * tp + fp + fn) if union else 1.0
    jaccard = tp / union if union else 1.0
    denom = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    mcc = (tp * tn - fp * fn) / math.sqrt(denom) if denom else nan
    precision = tp / (tp + fp) if (tp + fp) else nan
    return {"dice": dice, "jaccard": jaccard, "mcc": mcc, "precision": precision}


def segmentation_metrics(pred: sitk.Image | np.ndarray, gt: sitk.Image | np.ndarray) -> dict[str, float]:
    """Dice, Jaccard, MCC and precision of ``pred`` against ``gt`` plus the counts."""
    counts = confusion_counts(pred, gt)
    return {**metrics_from_counts(**counts), **counts}
