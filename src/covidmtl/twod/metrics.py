"""Segmentation and classification metrics of the 2D models.

Segmentation (Amyar Table 2, MGA Table 3), on binary masks: Dice = 2|P∩T| / (|P| + |T|),
IoU = |P∩T| / |P∪T|, precision = |P∩T| / |P|, recall = |P∩T| / |T|. A ratio whose
denominator is 0 counts 1 when both masks are empty (perfect agreement) and 0 otherwise.
Tables report the mean over test slices whose ground-truth mask is non-empty (lesion
slices) and, beside it, the pooled Dice/IoU over all their pixels.

Classification (Amyar Table 3, MGA Tables 4-5): the shared functions of
:mod:`covidmtl.classical.metrics` (precision, recall, F1, accuracy, AUC; binary positive
class 1 = COVID-19; 3 classes: macro averages, one-vs-rest AUC mean), plus sensitivity
(= recall) and specificity (binary: TN / (TN + FP); 3 classes: macro mean over classes of
the one-vs-rest specificity).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import confusion_matrix

from covidmtl.classical.metrics import binary_metrics, multiclass_metrics


def _ratio(num: float, den: float, both_empty: bool) -> float:
    if den == 0:
        return 1.0 if both_empty else 0.0
    return float(num) / float(den)


def confusion_counts(pred: np.ndarray, true: np.ndarray) -> tuple[int, int, int]:
    """(TP, FP, FN) pixel counts of two binary masks."""
    p, t = np.asarray(pred, dtype=bool), np.asarray(true, dtype=bool)
    if p.shape != t.shape:
        raise ValueError(f"mask shapes differ: {p.shape} vs {t.shape}")
    tp = int(np.count_nonzero(p & t))
    return tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(t)) - tp


def dice_score(pred: np.ndarray, true: np.ndarray) -> float:
    tp, fp, fn = confusion_counts(pred, true)
    return _ratio(2 * tp, 2 * tp + fp + fn, tp + fp + fn == 0)


def iou_score(pred: np.ndarray, true: np.ndarray) -> float:
    tp, fp, fn = confusion_counts(pred, true)
    return _ratio(tp, tp + fp + fn, tp + fp + fn == 0)


def pixel_precision(pred: np.ndarray, true: np.ndarray) -> float:
    tp, fp, fn = confusion_counts(pred, true)
    return _ratio(tp, tp + fp, tp + fp + fn == 0)


def pixel_recall(pred: np.ndarray, true: np.ndarray) -> float:
    tp, fp, fn = confusion_counts(pred, true)
    return _ratio(tp, tp + fn, tp + fp + fn == 0)


def slice_scores(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    """Per-slice Dice, IoU, precision, recall from per-slice counts (vectorised _ratio)."""
    tp, fp, fn = (np.asarray(a, dtype=float) for a in (tp, fp, fn))
    empty = (tp + fp + fn) == 0

    def ratio(num, den):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1), np.where(empty, 1.0, 0.0))

    return {"dice": ratio(2 * tp, 2 * tp + fp + fn), "iou": ratio(tp, tp + fp + fn),
            "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn)}


def segmentation_summary(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, float]:
    """Mean per-slice scores over slices with a non-empty ground truth, and pooled Dice/IoU."""
    tp, fp, fn = (np.asarray(a, dtype=float) for a in (tp, fp, fn))
    lesion = (tp + fn) > 0
    out = {"n_slices": int(len(tp)), "n_lesion_slices": int(lesion.sum())}
    scores = slice_scores(tp[lesion], fp[lesion], fn[lesion])
    for name, values in scores.items():
        out[name] = float(values.mean()) if values.size else float("nan")
    TP, FP, FN = tp[lesion].sum(), fp[lesion].sum(), fn[lesion].sum()
    out["dice_pooled"] = _ratio(2 * TP, 2 * TP + FP + FN, False) if lesion.any() else float("nan")
    out["iou_pooled"] = _ratio(TP, TP + FP + FN, False) if lesion.any() else float("nan")
    # false-positive rate of slices without lesion: fraction of them with any predicted lesion
    empty = ~lesion
    out["empty_slices_with_prediction"] = float((fp[empty] > 0).mean()) if empty.any() else float("nan")
    return out


def specificity(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Binary: TN / (TN + FP) of class 1; multiclass: macro mean of one-vs-rest specificities."""
    cm = confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))
    specs = []
    classes = [1] if n_classes == 2 else range(n_classes)
    for k in classes:
        fp = cm[:, k].sum() - cm[k, k]
        tn = cm.sum() - cm[k, :].sum() - fp
        specs.append(tn / (tn + fp) if tn + fp > 0 else float("nan"))
    return float(np.nanmean(specs)) if specs else float("nan")


def classification_summary(y_true: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """Shared metrics + sensitivity and specificity, for 2 or 3 classes."""
    y = np.asarray(y_true).astype(int)
    prob = np.asarray(prob, dtype=float)
    n_classes = prob.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if n_classes == 2:
            m = binary_metrics(y, prob[:, 1])
            pred = (prob[:, 1] >= 0.5).astype(int)
        else:
            m = multiclass_metrics(y, prob)
            pred = prob.argmax(axis=1)
    m["sensitivity"] = m["recall"]
    m["specificity"] = specificity(y, pred, n_classes)
    return {k: (float(v) if not isinstance(v, int) else v) for k, v in m.items()}
