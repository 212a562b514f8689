"""Metrics of DeepSC-COVID (section V): whole-volume segmentation and 3-class diagnosis.

Segmentation, per scan on the whole volume in physical spacing (mm):

- DSC, voxel sensitivity (recall of lesion voxels) and specificity (of background voxels);
- normalised surface Dice at a tolerance in mm (MONAI ``compute_surface_dice``; Nikolov
  et al. 2018);
- RMS symmetric surface distance in mm: the root mean square of the distances from each
  surface voxel of one mask to the nearest surface voxel of the other, over both surfaces
  (MONAI ``get_mask_edges`` / ``get_surface_distance`` with the spacing).

Empty masks: with both masks empty DSC and NSD are 1 and the distance 0; with exactly one
empty, DSC and NSD are 0 and the distance undefined (NaN).

Diagnosis (Table II): accuracy, macro sensitivity (= macro recall), macro specificity,
macro F1 and macro one-vs-rest AUC, from the shared prediction layout; the precision,
recall, F1, accuracy and per-class AUC come from :mod:`covidmtl.classical.metrics`.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import confusion_matrix, roc_curve

from covidmtl.classical.metrics import multiclass_metrics

from covidmtl.deepsc.data import CLASSES


def _one_hot(mask: np.ndarray) -> torch.Tensor:
    m = torch.as_tensor(np.asarray(mask, dtype=bool))
    return torch.stack([~m, m])[None].float()


def surface_distances(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) pred-surface -> truth-surface and truth-surface -> pred-surface."""
    from monai.metrics.utils import get_mask_edges, get_surface_distance

    edges_pred, edges_truth = get_mask_edges(np.asarray(pred, bool), np.asarray(truth, bool), crop=True)
    sp = [float(s) for s in spacing]
    d_pt = np.asarray(get_surface_distance(edges_pred, edges_truth, distance_metric="euclidean", spacing=sp))
    d_tp = np.asarray(get_surface_distance(edges_truth, edges_pred, distance_metric="euclidean", spacing=sp))
    return d_pt, d_tp


def rms_surface_distance(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float:
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return float("nan")
    d_pt, d_tp = surface_distances(pred, truth, spacing)
    d = np.concatenate([d_pt, d_tp]).astype(np.float64)
    return float(np.sqrt(np.mean(d ** 2)))


def normalised_surface_dice(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float], tolerance_mm: float) -> float:
    from monai.metrics import compute_surface_dice

    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if not pred.any() and not truth.any():
        return 1.0
    if not pred.any() or not truth.any():
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = compute_surface_dice(_one_hot(pred), _one_hot(truth), class_thresholds=[float(tolerance_mm)],
                                     include_background=False, spacing=[float(s) for s in spacing])
    return float(value.reshape(-1)[0])


def overlap_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    tp = float(np.count_nonzero(pred & truth))
    fp = float(np.count_nonzero(pred & ~truth))
    fn = float(np.count_nonzero(~pred & truth))
    tn = float(pred.size) - tp - fp - fn
    return {"dsc": 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn),
            "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
            "specificity": tn / (tn + fp) if tn + fp else float("nan")}


def segmentation_metrics(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float],
                         tolerance_mm: float) -> dict[str, float]:
    """All segmentation metrics of one scan (masks on the same grid, spacing (z, y, x) mm)."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out = overlap_metrics(pred, truth)
    out["nsd"] = normalised_surface_dice(pred, truth, spacing, tolerance_mm)
    out["rms_ssd_mm"] = rms_surface_distance(pred, truth, spacing)
    out["pred_volume_ml"] = float(np.count_nonzero(pred)) * voxel_ml
    out["true_volume_ml"] = float(np.count_nonzero(truth)) * voxel_ml
    return out


SEG_SUMMARY = ["dsc", "sensitivity", "specificity", "nsd", "rms_ssd_mm"]


def summarise_segmentation(per_scan: pd.DataFrame) -> dict[str, float]:
    """Means (and sds) over the infected test scans (non-empty reference), plus the false-positive
    volume on lesion-free scans."""
    out: dict[str, float] = {}
    if per_scan.empty:
        return out
    infected = per_scan[per_scan["true_volume_ml"] > 0]
    for m in SEG_SUMMARY:
        values = pd.to_numeric(infected[m], errors="coerce").dropna()
        out[m] = float(values.mean()) if len(values) else float("nan")
        out[f"{m}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    out["n_infected"] = int(len(infected))
    out["n_empty_prediction"] = int((infected["pred_volume_ml"] == 0).sum())
    clean = per_scan[per_scan["true_volume_ml"] == 0]
    out["n_lesion_free"] = int(len(clean))
    out["false_positive_ml_lesion_free"] = float(clean["pred_volume_ml"].mean()) if len(clean) else float("nan")
    return out


def classification_metrics(y_true: Sequence[int], prob: np.ndarray) -> dict[str, float]:
    """Table II diagnosis metrics (macro over the three classes) and per-class values."""
    y = np.asarray(y_true).astype(int)
    prob = np.asarray(prob, dtype=float)
    k = prob.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = multiclass_metrics(y, prob, list(range(k)))
    pred = prob.argmax(axis=1)
    cm = confusion_matrix(y, pred, labels=list(range(k)))
    out = {"accuracy": base["accuracy"], "f1": base["f1"], "precision": base["precision"], "auc": base["auc"],
           "n": int(len(y))}
    sens, spec = [], []
    for c in range(k):
        tp = cm[c, c]
        fn = cm[c].sum() - tp
        fp = cm[:, c].sum() - tp
        tn = cm.sum() - tp - fn - fp
        s = tp / (tp + fn) if tp + fn else float("nan")
        sp = tn / (tn + fp) if tn + fp else float("nan")
        name = CLASSES[c] if c < len(CLASSES) else str(c)
        out[f"sensitivity_{name}"], out[f"specificity_{name}"] = float(s), float(sp)
        out[f"auc_{name}"] = base.get(f"auc_class_{c}", float("nan"))
        sens.append(s)
        spec.append(sp)
    out["sensitivity"] = float(np.nanmean(sens)) if not all(math.isnan(s) for s in sens) else float("nan")
    out["specificity"] = float(np.nanmean(spec)) if not all(math.isnan(s) for s in spec) else float("nan")
    return out


def roc_curves(y_true: Sequence[int], prob: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One-vs-rest ROC curve (fpr, tpr) per class (Figure 7); classes absent from y are skipped."""
    y = np.asarray(y_true).astype(int)
    out = {}
    for c, name in enumerate(CLASSES[: prob.shape[1]]):
        positives = (y == c).sum()
        if 0 < positives < len(y):
            fpr, tpr, _ = roc_curve((y == c).astype(int), np.asarray(prob)[:, c])
            out[name] = (fpr, tpr)
    return out
